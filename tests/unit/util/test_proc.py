"""The one subprocess wrapper, with real child processes (sh, sleep, python): bounded output,
time limits that hold whatever the child's own children do, process groups stopped on every way
out, programs that cannot start, SIGTERM turned into a cleanup, a child's stdout into a file of
its own, and a stop event that interrupts the child as Ctrl-C would."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from bitnet_crossval.errors import CommandTimedOut, ProgramCouldNotStart, ProgramNotFound, TerminationRequested
from bitnet_crossval.util import proc, signals


def running(marker: str) -> list[int]:
    """Pids of running (not zombie) processes whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def eventually_none_running(marker: str, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while running(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc to find the processes left")


# --- output ------------------------------------------------------------------------------------------


def test_only_the_end_of_a_long_output_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proc, "OUTPUT_LIMIT", 10_000)
    script = "import sys\nfor i in range(20000): print('line', i)\nprint('{\"document\": 1}')\n"
    result = proc.run([sys.executable, "-c", script])
    assert result.truncated and len(result.output) <= 10_000
    assert result.output.endswith('{"document": 1}\n')  # the last line, whole: what callers parse
    assert result.output.startswith("line ")  # the cut never leaves half a line first


def test_a_line_without_end_reaches_on_line_in_pieces_and_the_log_stops_at_its_limit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(proc, "LINE_LIMIT", 1000)
    lines: list[str] = []
    log = tmp_path / "child.log"
    proc.run(
        [sys.executable, "-c", "import sys; sys.stdout.write('x' * 5500)"],
        on_line=lines.append,
        log_path=log,
        log_limit=2000,
    )
    assert [len(line) for line in lines] == [1000] * 5 + [500]
    logged = log.read_text().splitlines()[1]  # after the command line
    assert logged == "x" * 2000
    assert "the log reached its size limit" in log.read_text()


def test_undecodable_bytes_are_replaced() -> None:
    result = proc.run([sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe end\\n')"])
    assert result.output == "ok \ufffd\ufffd end\n"


# --- time limits and process groups ------------------------------------------------------------------


def test_the_time_limit_stops_the_whole_group() -> None:
    marker = "61.125"
    started = time.monotonic()
    with pytest.raises(CommandTimedOut):
        proc.run(["sh", "-c", f"sleep {marker}; true"], timeout=1, own_group=True)
    assert time.monotonic() - started < 15
    assert eventually_none_running(f"sleep {marker}")


def test_a_child_that_closes_its_output_still_meets_its_time_limit() -> None:
    started = time.monotonic()
    with pytest.raises(CommandTimedOut):
        proc.run(["sh", "-c", "exec >&- 2>&-; sleep 61.25"], timeout=1, own_group=True)
    assert time.monotonic() - started < 15
    assert eventually_none_running("sleep 61.25")


def test_what_a_grouped_child_leaves_running_is_stopped_and_not_waited_for() -> None:
    marker = "61.375"
    started = time.monotonic()
    result = proc.run(["sh", "-c", f"(sleep {marker} &); echo done"], own_group=True)
    assert result.output == "done\n"
    assert time.monotonic() - started < proc.DRAIN_GRACE + 10
    assert eventually_none_running(f"sleep {marker}")


def test_without_a_group_a_leftover_holding_the_pipe_is_not_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proc, "DRAIN_GRACE", 0.3)
    started = time.monotonic()
    result = proc.run(["sh", "-c", "(sleep 4.5 &); echo done"])
    assert result.output == "done\n" and result.returncode == 0
    assert time.monotonic() - started < 4


def test_an_error_while_reading_stops_the_group() -> None:
    marker = "61.5"

    def explode(line: str) -> None:
        raise RuntimeError("a callback failed")

    with pytest.raises(RuntimeError, match="a callback failed"):
        proc.run(["sh", "-c", f"echo hello; sleep {marker}"], on_line=explode, own_group=True)
    assert eventually_none_running(f"sleep {marker}")


def test_sigterm_inside_stop_on_termination_stops_the_child_and_raises() -> None:
    marker = "61.625"
    previous = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
    with pytest.raises(TerminationRequested) as raised, signals.stop_on_termination():
        timer.start()
        proc.run(["sh", "-c", f"sleep {marker}"], own_group=True)
    timer.join()
    assert raised.value.signal_name == "SIGTERM" and raised.value.as_error().exit_code == 143
    assert eventually_none_running(f"sleep {marker}")
    assert signal.getsignal(signal.SIGTERM) is previous  # restored on the way out


def test_sighup_is_exit_129() -> None:
    assert TerminationRequested(signal.SIGHUP, "SIGHUP").as_error().exit_code == 129


# --- programs that cannot start -----------------------------------------------------------------------


def test_programs_that_cannot_start_are_named(tmp_path: Path) -> None:
    text = tmp_path / "text.txt"
    text.write_text("not a program\n")
    elf = tmp_path / "bad-elf"
    elf.write_bytes(b"\x7fELF" + bytes(60))
    elf.chmod(0o755)
    script = tmp_path / "no-shebang"
    script.write_text("echo hi\n")
    script.chmod(0o755)
    cases = {
        str(tmp_path): "it is a directory",
        str(text): "it is not executable (permission denied)",
        str(elf): "it is not a program this system can run",
        str(script): "it is not a program this system can run (not an executable, or a script without a #! line)",
    }
    for program, reason in cases.items():
        with pytest.raises(ProgramCouldNotStart) as raised:
            proc.run([program])
        assert raised.value.program == program and reason in raised.value.reason
        assert raised.value.message.startswith(f"`{program}` could not be started: ")
    with pytest.raises(ProgramNotFound):
        proc.run([str(tmp_path / "missing")])


# --- a child's stdout in a file of its own; a stop event ---------------------------------------------------

PRINT_BOTH = "import sys; print('{\"ok\": true}'); print('a table', file=sys.stderr); sys.exit(3)"
SLEEPER = (
    "import signal, sys, time\n"
    "print('started', file=sys.stderr, flush=True)\n"
    "try:\n"
    "    time.sleep(60)\n"
    "except KeyboardInterrupt:\n"
    "    print('interrupted', file=sys.stderr)\n"
    "    sys.exit(130)\n"
)


def test_stdout_goes_to_its_file_and_only_stderr_is_kept(tmp_path: Path) -> None:
    out, log = tmp_path / "out.json", tmp_path / "log.txt"
    seen: list[str] = []
    done = proc.run([sys.executable, "-c", PRINT_BOTH], check=False, stdout_path=out, log_path=log, on_line=seen.append)
    assert done.returncode == 3
    assert out.read_text() == '{"ok": true}\n'
    assert done.output == "a table\n" and seen == ["a table"]
    logged = log.read_text().splitlines()
    assert logged[1:] == ["a table", logged[-1]] and logged[-1].startswith("# finished in")


def test_a_stop_event_interrupts_the_child_as_ctrl_c_would() -> None:
    stop = threading.Event()
    started = threading.Event()

    def on_line(line: str) -> None:
        if line == "started":
            started.set()

    def stop_when_started() -> None:
        started.wait(60)
        stop.set()

    threading.Thread(target=stop_when_started, daemon=True).start()
    began = time.monotonic()
    done = proc.run([sys.executable, "-c", SLEEPER], check=False, stop=stop, on_line=on_line)
    assert done.returncode == 130 and "interrupted" in done.output
    assert time.monotonic() - began < 30


def test_a_child_that_ignores_the_interrupt_is_killed_after_the_grace() -> None:
    stop = threading.Event()
    script = (
        "import signal, sys, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
        "print('ignoring', file=sys.stderr, flush=True); time.sleep(60)"
    )

    def on_line(line: str) -> None:
        if line == "ignoring":
            stop.set()

    began = time.monotonic()
    done = proc.run([sys.executable, "-c", script], check=False, stop=stop, on_line=on_line)
    assert done.returncode == 128 + signal.SIGKILL
    assert time.monotonic() - began < 30


def test_without_a_stop_nothing_watches() -> None:
    done = proc.run([sys.executable, "-c", "print('hi')"], check=False)
    assert done.returncode == 0 and done.output == "hi\n"
