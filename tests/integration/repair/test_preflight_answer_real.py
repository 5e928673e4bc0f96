"""`invoke preflight` serves a clean pass's remembered answer, with real processes on the real
llama.cpp, and stops serving it the moment anything it checked changes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bitnet_crossval.backends.specs import LLAMA
from bitnet_crossval.reference.client import Shim
from bitnet_crossval.store.layout import CacheLayout
from tests.helpers import run_invoke
from tests.shim_cache import cache_env_with_shim

pytestmark = pytest.mark.integration

MARK = "REMEMBERED ANSWER"


@pytest.fixture
def cache(tmp_path: Path, llama_install: Path, llama_shim: Shim) -> tuple[dict[str, str], Path, Path]:
    """A cache whose constants list a private copy of the real llama.cpp install with the
    session's shim; the copy may be damaged by the test."""
    install = tmp_path / "llama"
    shutil.copytree(llama_install, install, symlinks=True)
    root = tmp_path / "cache"
    env = cache_env_with_shim(root, LLAMA, install, llama_shim)
    return env, root, install


def _mark_remembered_summary(root: Path) -> None:
    """Change the remembered sentence (not what was checked), so a served answer shows itself."""
    target = CacheLayout(root).preflight_answer("llama")
    document = json.loads(target.read_text())
    for entry in document["answers"]:
        entry["summary"] = f"llama.cpp is available ({MARK})"
    target.write_text(json.dumps(document))


def test_a_clean_pass_is_served_again_until_the_install_changes(cache: tuple[dict[str, str], Path, Path]) -> None:
    env, root, install = cache
    command = ["preflight", "--backend", "llama", "--repair", "never", "--format", "json"]
    first = run_invoke(command, env=env)
    assert first.returncode == 0, first.stderr
    assert MARK not in first.stderr

    _mark_remembered_summary(root)
    served = run_invoke(command, env=env)
    assert served.returncode == 0, served.stderr
    assert MARK in served.stderr  # the answer was served, not recomputed
    assert json.loads(served.stdout) == json.loads(first.stdout)

    verbose = run_invoke([*command, "--verbose"], env=env)
    assert verbose.returncode == 0 and MARK not in verbose.stderr  # --verbose always checks in full

    _mark_remembered_summary(root)
    other_loader_path = run_invoke(command, env={**env, "LD_LIBRARY_PATH": str(install / "lib")})
    assert other_loader_path.returncode == 0 and MARK not in other_loader_path.stderr

    # The library overwritten in place with its size and modification time kept: the load check
    # must run again and fail, whatever was remembered.
    _mark_remembered_summary(root)
    library = (install / "lib" / "libllama.so").resolve()
    before = library.stat()
    library.write_bytes(b"\0" * before.st_size)
    os.utime(library, ns=(before.st_atime_ns, before.st_mtime_ns))
    broken = run_invoke(command, env=env)
    assert broken.returncode == 6, broken.stderr  # LLAMA_CPP_DIR names a broken build: bad input
    assert MARK not in broken.stderr
    assert "the libraries do not load" in broken.stderr
    assert json.loads(broken.stdout)["available"] is False
