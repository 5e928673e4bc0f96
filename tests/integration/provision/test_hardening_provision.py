"""setup-cpp-auto against bad input and faults, with real processes on the fake llama.cpp: bad
--jobs and --source values, URLs git would misuse, Ctrl-C and SIGKILL during a build, a corrupt
archive, leftovers of a killed run, progress without a terminal, a PyPI tree already cached.
See docs/reference/bad-inputs.md."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bitnet_crossval.backends.specs import LLAMA_CPP_PYPI_VERSION
from bitnet_crossval.provision.cmake import BUILD_GROUP_FILE
from bitnet_crossval.provision.sources import MARKER_NAME as SOURCE_MARKER
from bitnet_crossval.provision.sources import pypi_identity
from bitnet_crossval.store.layout import CacheLayout
from bitnet_crossval.store.marker import MARKER_NAME as INSTALL_MARKER
from tests.helpers import HANG_SECONDS, REPO_ROOT, copy_fake_llama, run_invoke, wait_for
from tests.integration.hardening_support import (
    FinishedCache,
    assert_one_sentence,
    dead_pid,
    fresh_finished_cache,
    install_snapshot,
    processes_mentioning,
    start_invoke,
    wait_until_gone,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def finished(finished_cache: FinishedCache) -> Iterator[FinishedCache]:
    yield from fresh_finished_cache(finished_cache)


# Nothing in these tests may reach a real host: an index on a closed port, one attempt.
OFFLINE = {"BITNET_PYPI_INDEX_URL": "http://127.0.0.1:9/simple", "BITNET_NET_RETRIES": "1"}


def _setup(*extra: str) -> list[str]:
    return ["setup-cpp-auto", "--backend", "llama", *extra]


@pytest.fixture
def recording_git(tmp_path: Path) -> tuple[str, Path]:
    """A `git` first on PATH that only records that it was run; returns (PATH entry, its log)."""
    bin_dir = tmp_path / "recording-bin"
    bin_dir.mkdir()
    calls = tmp_path / "git-calls.log"
    script = bin_dir / "git"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\nexit 128\n')
    script.chmod(0o755)
    return str(bin_dir), calls


@pytest.fixture
def installed(tmp_path: Path, base_env: dict[str, str], cache_dir: Path) -> tuple[Path, dict[str, str]]:
    """A fake llama.cpp installed from a local source, then edited so the next setup rebuilds it
    (its gate, and so its rendezvous, runs again). Returns the source and the environment."""
    source = copy_fake_llama(tmp_path / "src")
    env = {**base_env, **OFFLINE, "LLAMA_CPP_SOURCE": str(source)}
    first = run_invoke(_setup(), env=env)
    assert first.returncode == 0, first.stderr
    llama_c = source / "api" / "src" / "stub_llama.c"
    llama_c.write_text(llama_c.read_text() + "\nint llama_extra_symbol(void) { return 7; }\n")
    return source, env


def _completed(proc: subprocess.Popen[bytes], stderr: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", stderr.read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- 9. bad arguments at start


@pytest.mark.parametrize("jobs", ["abc", "1.5", "99999999999999999999999", "-1"])
def test_a_bad_jobs_value_is_refused_before_anything_runs(
    jobs: str, base_env: dict[str, str], cache_dir: Path, tmp_path: Path
) -> None:
    source = copy_fake_llama(tmp_path / "src")  # were it accepted, only the fake would build
    result = run_invoke(_setup("--source", str(source), "--jobs", jobs), env={**base_env, **OFFLINE})
    assert_one_sentence(result, 6, says=[f"--jobs {jobs!r}"], next_says=["--jobs 2"])
    assert list(cache_dir.iterdir()) == []


def test_a_file_url_naming_a_file_is_bad_input_at_once(
    base_env: dict[str, str], cache_dir: Path, recording_git: tuple[str, Path]
) -> None:
    bin_dir, calls = recording_git
    env = {**base_env, "PATH": f"{bin_dir}{os.pathsep}{base_env['PATH']}", "BITNET_NET_RETRIES": "4"}
    started = time.monotonic()
    result = run_invoke(_setup("--source", "file:///etc/passwd"), env=env)
    assert_one_sentence(result, 6, says=["'file:///etc/passwd'", "is not a directory"], next_says=["--source"])
    assert time.monotonic() - started < 10
    assert "retrying" not in result.stderr
    assert not calls.exists()
    assert list(cache_dir.iterdir()) == []


# --------------------------------------------------------------------------- 11. URLs git would misuse


def _hostile_urls(target: Path) -> dict[str, str]:
    return {
        "ssh-option-host": f"ssh://-oProxyCommand=touch%20{target}/y",
        "ext-transport": f"ext::sh -c touch% {target}/x",
        "semicolon": f"https://example.invalid/llama.cpp.git;touch {target}/z",
        "newline": f"https://example.invalid/llama.cpp.git\ntouch {target}/w",
    }


HOSTILE = ["ssh-option-host", "ext-transport", "semicolon", "newline"]
SAYS = {
    "ssh-option-host": "names a host starting with '-'",
    "ext-transport": "<transport>::<address> form",
    "semicolon": "contains ';'",
    "newline": "contains a line break",
}


@pytest.mark.parametrize("how", ["--source", "LLAMA_CPP_SOURCE"])
@pytest.mark.parametrize("kind", HOSTILE)
def test_a_url_git_would_misuse_is_one_line_of_bad_input_and_nothing_runs(
    kind: str, how: str, base_env: dict[str, str], cache_dir: Path, tmp_path: Path, recording_git: tuple[str, Path]
) -> None:
    target = tmp_path / "target"
    target.mkdir()
    url = _hostile_urls(target)[kind]
    bin_dir, calls = recording_git
    env = {**base_env, **OFFLINE, "PATH": f"{bin_dir}{os.pathsep}{base_env['PATH']}"}
    if how == "--source":
        result = run_invoke(_setup("--source", url), env=env)
    else:
        result = run_invoke(["preflight", "--backend", "llama", "--repair", "auto"], env={**env, how: url})
    error = assert_one_sentence(result, 6, says=[SAYS[kind]], next_says=["LLAMA_CPP_SOURCE"])
    lines = result.stderr.splitlines()
    assert lines[lines.index(error) + 1].strip().startswith("next:"), result.stderr  # not split by a newline
    assert not any(line.startswith("touch") for line in lines), result.stderr
    assert list(target.iterdir()) == []
    assert not calls.exists(), calls.read_text()
    assert not (cache_dir / "sources").exists() or list((cache_dir / "sources").iterdir()) == []


# --------------------------------------------------------------------------- 12. interruptions and leftovers


def test_ctrl_c_during_a_build_is_130_keeps_the_old_install_and_leaves_nothing_running(
    installed: tuple[Path, dict[str, str]], cache_dir: Path, tmp_path: Path
) -> None:
    source, env = installed
    install = cache_dir / "installs" / "llama"
    before = install_snapshot(install)
    started, release = tmp_path / "started", tmp_path / "release"
    held = {**env, "FAKE_LLAMA_STARTED": str(started), "FAKE_LLAMA_RELEASE": str(release)}
    err = tmp_path / "stderr.txt"
    proc = start_invoke(_setup(), env=held, stderr_path=err)
    try:
        wait_for(started, proc=proc)
        gates = processes_mentioning(str(source / "gate.sh"))
        assert gates, "the held build is not running"
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends to the foreground group
        proc.wait(timeout=HANG_SECONDS)  # its exit, however long the interrupted build takes to stop
        result = _completed(proc, err)
        assert_one_sentence(result, 130, says=["interrupted (Ctrl-C)"], next_says=["rerun the command"])
        assert install_snapshot(install) == before
        assert not list((cache_dir / "installs").glob(".staging-*"))
        assert wait_until_gone(gates) == [], "the interrupted build's commands are still running"
    finally:
        release.touch()  # frees anything left holding the rendezvous
        proc.kill()
    again = run_invoke(_setup(), env=env)
    assert again.returncode == 0, again.stderr
    assert "llama.cpp rebuilt at" in again.stderr


def test_a_sigkilled_setup_leaves_its_build_running_and_the_next_setup_stops_it(
    installed: tuple[Path, dict[str, str]], cache_dir: Path, tmp_path: Path
) -> None:
    source, env = installed
    install = cache_dir / "installs" / "llama"
    before = install_snapshot(install)
    started, release = tmp_path / "started", tmp_path / "release"
    held = {**env, "FAKE_LLAMA_STARTED": str(started), "FAKE_LLAMA_RELEASE": str(release)}
    proc = start_invoke(_setup(), env=held, stderr_path=tmp_path / "stderr.txt")
    try:
        wait_for(started, proc=proc)
        os.kill(proc.pid, signal.SIGKILL)  # only the Python process
        proc.wait(timeout=HANG_SECONDS)
        gates = processes_mentioning(str(source / "gate.sh"))
        assert gates, "the build's process group did not outlive its parent"
        assert [p for p in (cache_dir / "builds").glob(f"*/{BUILD_GROUP_FILE}")], "no record of the build's group"
        assert install_snapshot(install) == before

        again = run_invoke(_setup(), env=env)  # no rendezvous: its own build is not held
        assert again.returncode == 0, again.stderr
        assert "stopping the processes (group" in again.stderr
        assert "llama.cpp rebuilt at" in again.stderr
        assert wait_until_gone(gates) == []
        assert (install / INSTALL_MARKER).is_file()
    finally:
        release.touch()


def _tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _truncated_project() -> bytes:
    whole = _tar_gz({"p/CMakeLists.txt": b"cmake_minimum_required(VERSION 3.16)\n", "p/blob": os.urandom(200_000)})
    return whole[: len(whole) // 2]


CORRUPT = {
    "not-gzip": lambda: b"\x1f\x8b this is not gzip data",
    "random": lambda: os.urandom(4096),
    "truncated": _truncated_project,
}


@pytest.mark.parametrize("make", CORRUPT.values(), ids=CORRUPT.keys())
def test_a_corrupt_archive_is_one_line_and_changes_nothing(make, finished: FinishedCache, tmp_path: Path) -> None:
    archive = tmp_path / "llama.cpp.tar.gz"
    archive.write_bytes(make())
    install = install_snapshot(finished.install)
    sources_before = sorted(p.name for p in (finished.cache / "sources").iterdir())
    result = run_invoke(_setup("--source", str(archive)), env={**finished.env, **OFFLINE})
    assert_one_sentence(result, 6, says=[str(archive), "is not a valid archive"], next_says=["archive"])
    assert install_snapshot(finished.install) == install
    assert sorted(p.name for p in (finished.cache / "sources").iterdir()) == sources_before


def test_leftovers_of_a_setup_killed_between_its_renames_are_cleaned_up(finished: FinishedCache) -> None:
    layout = CacheLayout(finished.cache)
    retired = layout.retired_dir("llama", dead_pid())
    shutil.copytree(finished.install, retired, symlinks=True)  # the previous install, moved aside
    staging = layout.staging_dir("llama", dead_pid())
    (staging / "lib").mkdir(parents=True)
    live = layout.retired_dir("llama", os.getpid())  # its owner is alive: not ours to remove
    live.mkdir()
    install = install_snapshot(finished.install)

    result = run_invoke(_setup(), env=finished.env)

    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stderr
    assert not retired.exists() and not staging.exists()
    assert live.exists()
    assert install_snapshot(finished.install) == install


# --------------------------------------------------------------------------- 13. progress and the cached PyPI tree


def test_a_long_build_prints_a_progress_line_every_interval_without_a_terminal(
    tmp_path: Path, base_env: dict[str, str]
) -> None:
    source = copy_fake_llama(tmp_path / "src")
    started, release = tmp_path / "started", tmp_path / "release"
    env = {
        **base_env,
        **OFFLINE,
        "BITNET_PROGRESS_INTERVAL": "0.3",
        "FAKE_LLAMA_STARTED": str(started),
        "FAKE_LLAMA_RELEASE": str(release),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", *_setup("--source", str(source))],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[tuple[float, str]] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append((time.monotonic(), line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(started, proc=proc)
        held_from = time.monotonic()
        time.sleep(1.5)
        held_until = time.monotonic()
        release.touch()
        assert proc.wait(timeout=HANG_SECONDS) == 0, lines
    finally:
        release.touch()
        proc.kill()
    reader.join(timeout=HANG_SECONDS)  # it ends at the end of the output
    beats = [at for at, line in lines if "still running" in line and held_from <= at <= held_until + 0.5]
    assert len(beats) >= 3, lines
    gaps = [later - earlier for earlier, later in zip([held_from, *beats], [*beats, held_until], strict=True)]
    assert max(gaps) < 1.0, gaps  # at least one line per 0.3 s interval, with room for a loaded machine
    assert all(line.startswith("building llama.cpp:") for at, line in lines if "still running" in line)


def test_a_pypi_tree_already_in_the_cache_is_built_without_trying_the_git_host(
    tmp_path: Path, base_env: dict[str, str], cache_dir: Path, recording_git: tuple[str, Path]
) -> None:
    tree = CacheLayout(cache_dir).pypi_source("llama", LLAMA_CPP_PYPI_VERSION)
    root = f"llama_cpp_python-{LLAMA_CPP_PYPI_VERSION}/vendor/llama.cpp"
    copy_fake_llama(tree / root)
    (tree / SOURCE_MARKER).write_text(json.dumps({"identity": pypi_identity(), "root": root}))
    bin_dir, calls = recording_git
    env = {**base_env, **OFFLINE, "PATH": f"{bin_dir}{os.pathsep}{base_env['PATH']}"}

    result = run_invoke(_setup("--force"), env=env)

    assert result.returncode == 0, result.stderr
    assert "cannot reach" not in result.stderr and "retrying" not in result.stderr
    assert f"building llama.cpp from {tree / root}" in result.stderr
    assert not calls.exists(), calls.read_text()
    marker = json.loads((cache_dir / "installs" / "llama" / INSTALL_MARKER).read_text())
    assert marker["source"] == pypi_identity()


@pytest.mark.parametrize("variable", ["BITNET_PYPI_INDEX_URL", "PIP_INDEX_URL"])
@pytest.mark.parametrize("value", ["not a url", "ftp://example.invalid/simple", "https:///simple"])
def test_an_index_url_that_is_not_one_names_its_variable(base_env: dict[str, str], variable: str, value: str) -> None:
    """`BITNET_PYPI_INDEX_URL='not a url'`: the next step said "check the arguments" for an
    environment variable."""
    env = {**base_env, variable: value, "LLAMA_CPP_SOURCE": "pypi"}
    env.pop("BITNET_PYPI_INDEX_URL" if variable == "PIP_INDEX_URL" else "PIP_INDEX_URL", None)
    result = run_invoke(_setup(), env=env, timeout=120)
    assert_one_sentence(
        result,
        6,
        says=[f"{variable}='{value}' is not an http, https or file URL of a package index"],
        next_says=[f"set {variable} to a simple index such as https://pypi.org/simple, or unset it"],
    )
    assert "check the arguments" not in result.stderr
