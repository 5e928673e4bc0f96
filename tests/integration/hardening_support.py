"""What the hardening tests share (tests/integration/*/test_hardening_*.py): a finished cache of
the fake llama.cpp, restored for each test at the path it was built at, and the check that a
failure is one sentence and a next step.

The finished cache (install, build tree, shim, constants file) costs one shim compile, about
ten seconds on two cores; it is a shared build (tests/shared_builds.py), built once per test
session before the first test, and copied back into place before each test that uses it.
Restoring it at the same path keeps every path recorded in it (the constants file,
CMakeCache.txt, the shim's build tree) valid, so a test pays only for what its damage makes the
suite rebuild.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bitnet_crossval.reference.client import Shim
from bitnet_crossval.store.constants import read_constants
from bitnet_crossval.store.marker import MARKER_NAME as INSTALL_MARKER
from tests.conftest import child_env
from tests.helpers import HANG_SECONDS, REPO_ROOT, fake_llama_git_repo
from tests.shared_builds import SharedBuildFailed, Workshop

# Set to a file path to collect every error sentence the tests observe (docs/reference/bad-inputs.md).
RECORD_ENV = "BITNET_TEST_RECORD_ERRORS"


@dataclass(frozen=True)
class FinishedCache:
    """A cache holding a finished fake llama.cpp install from a pinned git commit, its build
    tree, a shim built against it and a constants file listing both."""

    base: Path
    source: str
    """``file://.../fake-llama.git@<commit>``, the value of LLAMA_CPP_SOURCE."""
    commit: str

    @property
    def cache(self) -> Path:
        return self.base / "cache"

    @property
    def pristine(self) -> Path:
        return self.base / "pristine"

    @property
    def install(self) -> Path:
        return self.cache / "installs" / "llama"

    @property
    def constants(self) -> Path:
        return self.cache / "constants.json"

    @property
    def env(self) -> dict[str, str]:
        return {**child_env(self.cache), "LLAMA_CPP_SOURCE": self.source}

    def restore(self) -> None:
        """Put the pristine copy back at the cache's own path."""
        unfreeze(self.cache)
        if self.cache.exists():
            shutil.rmtree(self.cache)
        shutil.copytree(self.pristine, self.cache, symlinks=True)

    def copy_to(self, dest: Path) -> Path:
        """The pristine cache copied elsewhere (its recorded paths then name the original)."""
        shutil.copytree(self.pristine, dest, symlinks=True)
        return dest


def build_finished_cache(shop: Workshop) -> FinishedCache:
    """The finished cache, a shared build (tests/integration/conftest.py): `invoke preflight
    --repair auto` from an empty cache, with the fake llama.cpp served from a local git repository."""
    base = shop.mktemp("hardening-finished")
    url, commit = fake_llama_git_repo(base)
    made = FinishedCache(base=base, source=f"{url}@{commit}", commit=commit)
    result = shop.run_invoke(["preflight", "--backend", "llama", "--repair", "auto"], env=made.env)
    if result.returncode != 0:
        raise SharedBuildFailed(
            f"`invoke preflight --backend llama --repair auto` exited with code {result.returncode}"
        )
    status = read_constants(made.constants).status
    if status != "ok":
        raise SharedBuildFailed(f"the constants file says {status!r}, not 'ok'")
    shutil.copytree(made.cache, made.pristine, symlinks=True)
    return made


def fresh_finished_cache(made: FinishedCache) -> Iterator[FinishedCache]:
    """The body of a test module's ``finished`` fixture: the finished cache, restored for one
    test (tests damage it)."""
    made.restore()
    yield made
    unfreeze(made.cache)


# --------------------------------------------------------------------------- assertions


def assert_one_sentence(
    result: subprocess.CompletedProcess[str], code: int, *, says: Sequence[str] = (), next_says: Sequence[str] = ()
) -> str:
    """The run exited with ``code`` and printed exactly one ``error:`` line, a ``next:`` line and
    no traceback; ``says`` must be in the error line, ``next_says`` in the next step. Returns the
    error line."""
    err = result.stderr
    assert result.returncode == code, err
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, err
    nexts = [line.strip() for line in lines if line.strip().startswith("next:")]
    assert len(nexts) == 1, err
    assert lines.index(errors[0]) < next(i for i, line in enumerate(lines) if line.strip().startswith("next:"))
    assert "Traceback" not in err
    for text in says:
        assert text in errors[0], err
    for text in next_says:
        assert text in nexts[0], err
    _record(code, errors[0], nexts[0])
    return errors[0]


def _record(code: int, error: str, next_step: str) -> None:
    target = os.environ.get(RECORD_ENV)
    if not target:
        return
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" (", 1)[0]
    with open(target, "a", encoding="utf-8") as out:
        out.write(json.dumps({"test": test, "code": code, "error": error, "next": next_step}) + "\n")


def snapshot(path: Path) -> dict[str, tuple[int, int, bytes | str]]:
    """Every entry under ``path`` by relative name: its type, size and content (or link target),
    so a test can prove a failed run changed nothing."""
    entries: dict[str, tuple[int, int, bytes | str]] = {}
    for entry in sorted(path.rglob("*")):
        st = entry.lstat()
        if stat.S_ISLNK(st.st_mode):
            content: bytes | str = os.readlink(entry)
        elif stat.S_ISREG(st.st_mode):
            content = entry.read_bytes()
        else:
            content = b""
        entries[str(entry.relative_to(path))] = (stat.S_IFMT(st.st_mode), st.st_size, content)
    return entries


def install_snapshot(install: Path) -> dict[str, tuple[int, int, bytes | str]]:
    assert (install / INSTALL_MARKER).is_file(), f"{install} has no install marker"
    return snapshot(install)


def shim_runs(constants: Path, env: dict[str, str]) -> Path:
    """The constants file is valid, lists llama.cpp with a shim, and that shim answers `info`."""
    record = read_constants(constants).record("llama")
    assert record is not None and record.available and record.shim is not None, constants.read_text()
    shim = Path(record.shim)
    info = Shim(shim, env=env).info()
    assert info["backend"] == "llama"
    return shim


# --------------------------------------------------------------------------- processes


FROZEN_DIRS = ("", "logs", "builds")
"""The directories of a cache the tests make immutable (relative to its root), besides the build
trees under builds/."""


def unfreeze(cache: Path) -> None:
    """Undo `chattr +i` on the directories tests freeze (a failed test must not leave them so)."""
    if shutil.which("chattr") is None:
        return
    for path in [*(cache / name for name in FROZEN_DIRS), *cache.glob("builds/*")]:
        if path.is_dir() and not path.is_symlink():
            subprocess.run(["chattr", "-i", str(path)], capture_output=True, check=False)


def processes_mentioning(text: str) -> list[int]:
    """Running (not zombie) processes whose command line contains ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def wait_until_gone(pids: Sequence[int], timeout: float = HANG_SECONDS) -> list[int]:
    """The pids of ``pids`` still running once all have ended or ``timeout`` seconds have passed
    (so an empty list as soon as they are gone)."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if _running(pid)]
        time.sleep(0.05)
    return alive


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_invoke(args: Sequence[str], *, env: dict[str, str], stderr_path: Path) -> subprocess.Popen[bytes]:
    """`python -m invoke <args>` in the background, in a session of its own, stderr to a file."""
    with stderr_path.open("w", encoding="utf-8") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "invoke", *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )


def wait_for_text(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = HANG_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(encoding="utf-8"):
        assert proc.poll() is None, f"ended with {proc.returncode} before saying {text!r}: {path.read_text()}"
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.02)


def dead_pid() -> int:
    """The id of a process that has exited (a leftover named after it belongs to nobody)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def can_chattr(directory: Path) -> str | None:
    """Why `chattr +i` cannot be used on ``directory`` here, or None when it can."""
    if shutil.which("chattr") is None:
        return "chattr is not installed"
    probe = directory / ".chattr-probe"
    probe.mkdir()
    try:
        done = subprocess.run(["chattr", "+i", str(probe)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return f"chattr +i was refused: {done.stderr.strip()}"
        subprocess.run(["chattr", "-i", str(probe)], capture_output=True, check=False)
        return None
    finally:
        probe.rmdir()
