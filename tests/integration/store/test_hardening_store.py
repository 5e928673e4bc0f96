"""The cache and the constants file against bad places and values, with real processes: a device
node or a FIFO as the constants file, an immutable logs/ or builds/, bad environment values, a
cache path CMake cannot take. Each is refused with one sentence and a next step when the command
starts, and nothing is lost: the install, the constants file and the node are as they were.
See docs/reference/bad-inputs.md."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import run_invoke
from tests.integration.hardening_support import (
    FinishedCache,
    assert_one_sentence,
    can_chattr,
    fresh_finished_cache,
    install_snapshot,
    snapshot,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def finished(finished_cache: FinishedCache) -> Iterator[FinishedCache]:
    yield from fresh_finished_cache(finished_cache)


PREFLIGHT = ["preflight", "--backend", "llama"]
# Every command that reads or writes the constants file, each as a user types it.
CONSTANTS_COMMANDS = {
    "rebuild": ["rebuild"],
    "rebuild-check": ["rebuild", "--check"],
    "preflight-never": [*PREFLIGHT, "--repair", "never"],
    "preflight-auto": [*PREFLIGHT, "--repair", "auto"],
}


def _node_state(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return stat.S_IFMT(st.st_mode), st.st_rdev


# --------------------------------------------------------------------------- 3. a device node


@pytest.mark.parametrize("args", CONSTANTS_COMMANDS.values(), ids=CONSTANTS_COMMANDS.keys())
def test_a_character_device_as_constants_file_is_refused_and_left_alone(
    args: list[str], finished: FinishedCache, tmp_path: Path
) -> None:
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs root (CAP_MKNOD)")
    before = _node_state(node)
    install = install_snapshot(finished.install)
    constants = finished.constants.read_bytes()

    result = run_invoke(args, env={**finished.env, "BITNET_CONSTANTS_FILE": str(node)})

    assert_one_sentence(result, 6, says=[str(node), "is a character device"], next_says=["regular file"])
    assert _node_state(node) == before
    assert stat.S_ISCHR(node.lstat().st_mode)
    assert install_snapshot(finished.install) == install
    assert finished.constants.read_bytes() == constants


# --------------------------------------------------------------------------- 4. a FIFO


@pytest.mark.parametrize("args", CONSTANTS_COMMANDS.values(), ids=CONSTANTS_COMMANDS.keys())
def test_a_fifo_as_constants_file_never_hangs(args: list[str], finished: FinishedCache, tmp_path: Path) -> None:
    fifo = tmp_path / "constants.fifo"
    os.mkfifo(fifo)
    install = install_snapshot(finished.install)

    # Nothing ever opens the FIFO for writing, so a command that opened it to read would wait for
    # ever: that it ends at all (run_invoke's bound is for a hang) is the proof it never did.
    result = run_invoke(args, env={**finished.env, "BITNET_CONSTANTS_FILE": str(fifo)})

    assert_one_sentence(result, 6, says=[str(fifo), "is a FIFO (named pipe)"], next_says=["regular file"])
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert install_snapshot(finished.install) == install


def test_json_mode_prints_one_document_when_the_constants_file_is_refused(
    finished: FinishedCache, tmp_path: Path
) -> None:
    fifo = tmp_path / "constants.fifo"
    os.mkfifo(fifo)
    result = run_invoke(
        [*PREFLIGHT, "--repair", "never", "--json"], env={**finished.env, "BITNET_CONSTANTS_FILE": str(fifo)}
    )
    assert result.returncode == 6
    document = json.loads(result.stdout)
    assert document["error"]["exit_code"] == 6


# --------------------------------------------------------------------------- 8. permissions


FREEZE = {
    "logs-rebuild": ("logs", ["rebuild"]),
    "logs-repair": ("logs", [*PREFLIGHT, "--repair", "always"]),
    "builds-rebuild": ("builds", ["rebuild"]),
    "builds-repair": ("builds", [*PREFLIGHT, "--repair", "always"]),
    # The shim's own build tree under builds/: a permission problem, not a failed build.
    "shim-tree-rebuild": ("builds/shim-llama-*", ["rebuild"]),
    "shim-tree-repair": ("builds/shim-llama-*", [*PREFLIGHT, "--repair", "always"]),
}


@pytest.mark.parametrize(("pattern", "args"), FREEZE.values(), ids=FREEZE.keys())
def test_an_immutable_cache_directory_is_exit_4_naming_it(
    pattern: str, args: list[str], finished: FinishedCache
) -> None:
    [frozen] = finished.cache.glob(pattern)
    reason = can_chattr(finished.cache)
    if reason is not None:
        pytest.skip(f"cannot make a directory immutable here: {reason}")
    install = install_snapshot(finished.install)
    constants = finished.constants.read_bytes()
    contents = snapshot(frozen)
    subprocess.run(["chattr", "+i", str(frozen)], check=True)
    try:
        result = run_invoke(args, env=finished.env)
    finally:
        subprocess.run(["chattr", "-i", str(frozen)], check=True)

    assert_one_sentence(result, 4, says=[f"cannot write to {frozen}"], next_says=["writable"])
    assert finished.constants.read_bytes() == constants
    assert snapshot(frozen) == contents
    if "always" not in args:
        assert install_snapshot(finished.install) == install
    else:  # a repair may reinstall before it reaches the frozen directory; an install is always there
        install_snapshot(finished.install)


# --------------------------------------------------------------------------- 9. bad values at start


def test_a_lock_timeout_that_is_not_a_number_is_refused_before_any_lock(finished: FinishedCache) -> None:
    env = {**finished.env, "BITNET_LOCK_TIMEOUT": "nan"}
    logs = sorted((finished.cache / "logs").iterdir())
    for args in (["rebuild"], [*PREFLIGHT, "--repair", "always"], ["setup-cpp-auto", "--force"]):
        result = run_invoke(args, env=env)
        assert_one_sentence(result, 6, says=["BITNET_LOCK_TIMEOUT='nan'"], next_says=["BITNET_LOCK_TIMEOUT"])
        assert "repairing" not in result.stderr and "building" not in result.stderr
    assert sorted((finished.cache / "logs").iterdir()) == logs  # nothing ran far enough to log
    assert not (finished.cache / "locks" / "rebuild.lock.owner").exists()


@pytest.mark.parametrize("where", ["file", "under-a-file"])
@pytest.mark.parametrize("args", [["rebuild"], [*PREFLIGHT, "--repair", "auto"]], ids=["rebuild", "preflight"])
def test_a_cache_dir_that_is_a_file_is_bad_input(
    where: str, args: list[str], base_env: dict[str, str], tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("mine\n")
    cache = blocker if where == "file" else blocker / "cache"
    result = run_invoke(args, env={**base_env, "BITNET_CACHE_DIR": str(cache)})
    assert_one_sentence(result, 6, says=[str(blocker)], next_says=["BITNET_CACHE_DIR"])
    assert blocker.read_text() == "mine\n"


@pytest.mark.parametrize("args", CONSTANTS_COMMANDS.values(), ids=CONSTANTS_COMMANDS.keys())
def test_a_directory_as_constants_file_is_bad_input(args: list[str], finished: FinishedCache, tmp_path: Path) -> None:
    directory = tmp_path / "constants.d"
    directory.mkdir()
    (directory / "keep").write_text("x")
    result = run_invoke(args, env={**finished.env, "BITNET_CONSTANTS_FILE": str(directory)})
    assert_one_sentence(result, 6, says=[str(directory), "is a directory"], next_says=["regular file"])
    assert [p.name for p in directory.iterdir()] == ["keep"]


# --------------------------------------------------------------------------- 10. paths CMake cannot take


@pytest.mark.parametrize(
    ("char", "name"),
    [(";", "a ';'"), ("\n", "a line break"), ("\\", "a backslash")],
    ids=["semicolon", "newline", "backslash"],
)
def test_a_cache_path_cmake_cannot_take_is_refused_naming_the_character(
    char: str, name: str, base_env: dict[str, str], tmp_path: Path
) -> None:
    cache = tmp_path / f"bad{char}cache"
    result = run_invoke(["rebuild"], env={**base_env, "BITNET_CACHE_DIR": str(cache)})
    assert_one_sentence(
        result,
        6,
        says=[f"contains {name}", "CMake cannot take"],
        next_says=["BITNET_CACHE_DIR", "without ';', line breaks or backslashes"],
    )
    assert "build log" not in result.stderr and "toolchain" not in result.stderr
    assert not cache.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("bad")]
