"""How many times a real command load-checks a backend's libraries (a child interpreter each):
once per process image for an unchanged install, counted from the ``load check of`` debug
lines that ``--verbose`` shows.

One cache serves the module: a fake llama.cpp repaired from an empty cache, which leaves it warm
for the warm preflight and the rebuilds.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from bitnet_crossval.store.layout import CacheLayout
from tests.conftest import child_env
from tests.helpers import copy_fake_llama, run_invoke

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

LOAD_CHECK = re.compile(r"^load check of (?P<backend>\S+): (?P<lib_dir>.+) \(pid (?P<pid>\d+)\)$", re.MULTILINE)
EXEC_LINE = "[reexec] Attempting exec()..."


@dataclass(frozen=True)
class LoadCheck:
    backend: str
    lib_dir: Path
    pid: int


def load_checks(stderr: str) -> list[LoadCheck]:
    return [
        LoadCheck(backend=m["backend"], lib_dir=Path(m["lib_dir"]), pid=int(m["pid"]))
        for m in LOAD_CHECK.finditer(stderr)
    ]


def one_load_check(stderr: str) -> LoadCheck:
    checks = load_checks(stderr)
    assert len(checks) == 1, f"{len(checks)} load checks:\n{stderr}"
    return checks[0]


@dataclass(frozen=True)
class Repaired:
    cache: Path
    env: dict[str, str]
    stderr: str
    returncode: int

    @property
    def lib_dir(self) -> Path:
        return self.cache / "installs" / "llama" / "lib"


@pytest.fixture(scope="module")
def repaired(tmp_path_factory: pytest.TempPathFactory) -> Repaired:
    """`invoke preflight --backend llama --repair auto --verbose` from an empty cache."""
    tmp = tmp_path_factory.mktemp("load-checks")
    cache = tmp / "cache"
    cache.mkdir()
    source = copy_fake_llama(tmp / "fake-llama")
    env = {**child_env(cache), "LLAMA_CPP_SOURCE": str(source)}
    result = run_invoke(["preflight", "--backend", "llama", "--repair", "auto", "--verbose"], env=env)
    return Repaired(cache=cache, env=env, stderr=result.stderr, returncode=result.returncode)


@pytest.fixture
def warm(repaired: Repaired) -> Repaired:
    assert repaired.returncode == 0, repaired.stderr
    return repaired


def test_repair_checks_once_in_each_process_image(warm: Repaired) -> None:
    """The parent checks the new install once (its health check, whose verdict the rebuild and
    the rest of the process reuse); the re-executed image, the same pid, checks it once more."""
    before, exec_line, after = warm.stderr.partition(EXEC_LINE)
    assert exec_line, warm.stderr
    assert "Fallback" not in after
    assert "(auto-repaired)" in after

    parent = one_load_check(before)
    child = one_load_check(after)
    assert parent.backend == child.backend == "llama.cpp"
    assert child.pid == parent.pid  # exec keeps the pid: two images of one process
    assert child.lib_dir == warm.lib_dir
    # The parent checked the new install (in its staging directory, before the rename).
    assert parent.lib_dir.is_relative_to(warm.cache / "installs")


def test_warm_preflight_checks_once(warm: Repaired) -> None:
    result = run_invoke(["preflight", "--backend", "llama", "--verbose"], env=warm.env)

    assert result.returncode == 0, result.stderr
    assert "[reexec]" not in result.stderr and "repairing" not in result.stderr
    check = one_load_check(result.stderr)
    assert (check.backend, check.lib_dir) == ("llama.cpp", warm.lib_dir)


def test_rebuild_checks_each_backend_found_once(warm: Repaired, tmp_path: Path) -> None:
    """Only llama.cpp is installed: one check. With BITNET_CPP_DIR naming a build too (a copy of
    the llama.cpp install, which bitnet.cpp then rejects for its missing quantiser): one each."""
    assert run_invoke(["preflight", "--backend", "llama"], env=warm.env).returncode == 0
    answer = CacheLayout(warm.cache).preflight_answer("llama")
    assert answer.is_file()  # a clean preflight remembers its answer; a rebuild forgets it
    result = run_invoke(["rebuild", "--verbose"], env=warm.env)

    assert result.returncode == 0, result.stderr
    assert not answer.exists()
    check = one_load_check(result.stderr)
    assert (check.backend, check.lib_dir) == ("llama.cpp", warm.lib_dir)

    other = shutil.copytree(warm.lib_dir.parent, tmp_path / "other-build", symlinks=True)
    both = run_invoke(["rebuild", "--verbose"], env={**warm.env, "BITNET_CPP_DIR": str(other)})

    assert both.returncode == 0, both.stderr
    assert "bitnet.cpp: not available (the libraries load but do not export quantize_i2_s" in both.stderr
    checks = load_checks(both.stderr)
    assert sorted((c.backend, c.lib_dir) for c in checks) == [
        ("bitnet.cpp", other / "lib"),
        ("llama.cpp", warm.lib_dir),
    ]
    assert len({c.pid for c in checks}) == 1
