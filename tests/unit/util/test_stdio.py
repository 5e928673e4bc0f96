"""Closed and broken standard streams: output that cannot be written is dropped, never a crash,
and a closed descriptor 0-2 is never handed to the next file the process opens."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from bitnet_crossval.util import stdio


class Broken(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stdio._State, "stdout_closed", False)


def test_writes_reach_open_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    assert stdio.write_stdout("doc\n") and stdio.write_stderr("note\n")
    assert (out.getvalue(), err.getvalue()) == ("doc\n", "note\n")
    assert not stdio.stdout_closed()


def unusable(stream: str | None) -> io.StringIO | None:
    """A stream that is missing (None), closed, or raises on every write."""
    if stream == "closed":
        target = io.StringIO()
        target.close()
        return target
    return Broken() if stream == "broken" else None


@pytest.mark.parametrize("stream", [None, "closed", "broken"])
def test_a_missing_closed_or_broken_stdout_is_reported_not_raised(
    monkeypatch: pytest.MonkeyPatch, stream: str | None
) -> None:
    monkeypatch.setattr(sys, "stdout", unusable(stream))
    assert stdio.write_stdout("doc\n") is False
    assert stdio.stdout_closed()
    assert stdio.write_stdout("more\n") is False


@pytest.mark.parametrize("stream", [None, "closed", "broken"])
def test_a_missing_closed_or_broken_stderr_swallows_the_text(
    monkeypatch: pytest.MonkeyPatch, stream: str | None
) -> None:
    monkeypatch.setattr(sys, "stderr", unusable(stream))
    assert stdio.write_stderr("note\n") is False
    safe = stdio.SafeStderr()
    assert safe.write("note\n") == 5
    safe.flush()
    assert safe.isatty() is False
    stdio.flush_standard_streams()


def test_text_a_strict_stream_cannot_encode_is_escaped(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = io.BytesIO()
    ascii_out = io.TextIOWrapper(raw, encoding="ascii", errors="strict")
    monkeypatch.setattr(sys, "stderr", ascii_out)
    assert stdio.write_stderr("caf\u00e9 \udcff\n")
    assert raw.getvalue() == b"caf\\xe9 \\udcff\n"


GUARD = """
import os, sys
from bitnet_crossval.util import stdio
stdio.guard_standard_fds()
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, b"the file")
os.write(2, b"text meant for a terminal")
os.write(1, b"text meant for a terminal")
print(fd, stdio.stdout_closed(), file=open(sys.argv[2], "w"))
"""


@pytest.mark.parametrize("closed", ["1", "2", "1 2"])
def test_a_closed_standard_descriptor_is_filled_so_no_file_takes_its_number(tmp_path: Path, closed: str) -> None:
    target, facts = tmp_path / "target", tmp_path / "facts"
    redirects = " ".join(f"{fd}>&-" for fd in closed.split())
    done = subprocess.run(
        ["sh", "-c", f'exec "$0" -c "$1" "$2" "$3" {redirects}', sys.executable, GUARD, str(target), str(facts)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    fd, closed_flag = facts.read_text().split()
    assert int(fd) > 2
    assert target.read_bytes() == b"the file"
    assert closed_flag == str("1" in closed.split())
