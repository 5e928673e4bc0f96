"""Helpers for tests that drive real processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA = REPO_ROOT / "tests" / "data"
FAKE_LLAMA = DATA / "fake_llama"

HANG_SECONDS = 300.0
"""How long a test waits for what it expects (a rendezvous file, a line of output, a process's
exit, a command's end) before calling it a hang. The tests wait for events, not for time: this
bound is reached only by something that will never happen, never by a slow or loaded machine
(the commands here take seconds; a build shared by many tests is not theirs to wait for, see
tests/shared_builds.py)."""


def wait_for(path: Path, timeout: float = HANG_SECONDS, *, proc: subprocess.Popen[Any] | None = None) -> None:
    """Block until a rendezvous file appears (a real process says it reached a point); fail at
    once if ``proc``, the process expected to create it, has already ended."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended with code {proc.returncode} before {path.name} appeared")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.02)


def run_invoke(
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path = REPO_ROOT,
    timeout: float = HANG_SECONDS,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m invoke <args>` from the repository root, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


LEGACY_API = DATA / "legacy_llama_api"


def copy_fake_llama(dest: Path) -> Path:
    """A copy of the fake llama.cpp whose libllama implements the 2024 C API stub, so the
    suite's shim builds and runs against it (see tests/data/fake_llama/CMakeLists.txt)."""
    shutil.copytree(FAKE_LLAMA, dest)
    for part in ("include", "src"):
        shutil.copytree(LEGACY_API / part, dest / "api" / part)
    return dest


def git(*args: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.invalid",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.invalid",
    )
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout.strip()


def fake_llama_git_repo(root: Path) -> tuple[str, str]:
    """A bare git repository holding the fake llama project; returns (file:// URL, commit)."""
    work = copy_fake_llama(root / "fake-llama-work")
    git("init", "-q", "-b", "main", cwd=work)
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "fake llama", cwd=work)
    commit = git("rev-parse", "HEAD", cwd=work)
    bare = root / "fake-llama.git"
    git("clone", "-q", "--bare", str(work), str(bare), cwd=root)
    # Let clients fetch a commit by its hash, as the big hosts allow.
    git("config", "uploadpack.allowReachableSHA1InWant", "true", cwd=bare)
    git("config", "uploadpack.allowAnySHA1InWant", "true", cwd=bare)
    return bare.as_uri(), commit


FAKE_BITNET = DATA / "fake_bitnet"


def make_fake_bitnet(dest: Path) -> Path:
    """A microsoft/BitNet-shaped tree: the top level plus its llama.cpp fork as 3rdparty/llama.cpp."""
    shutil.copytree(FAKE_BITNET, dest)
    fork = copy_fake_llama(dest / "3rdparty" / "llama.cpp")
    # bitnet.cpp's headers are copied from its fork's include/ (there is no install rule), so the
    # fork's public llama.h must be the API the stub implements, as a real fork's is.
    for header in (fork / "api" / "include").glob("*.h"):
        shutil.copy2(header, fork / "include" / header.name)
    return dest


def tool_only_path(tmp: Path, tools: Sequence[str]) -> str:
    """A PATH holding only the named tools (symlinked), to hide everything else."""
    bin_dir = tmp / "only-bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in tools:
        found = shutil.which(tool)
        if found and not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(found)
    return str(bin_dir)
