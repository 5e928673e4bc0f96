"""`invoke setup-cpp-auto` end to end with real processes, on a small local CMake project that
has llama.cpp's shape (tests/data/fake_llama): fetching, building, staging, locking, errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bitnet_crossval.store.lock import exclusive_lock
from bitnet_crossval.store.marker import MARKER_NAME as INSTALL_MARKER
from tests.helpers import HANG_SECONDS, REPO_ROOT, copy_fake_llama, fake_llama_git_repo, run_invoke, wait_for

pytestmark = pytest.mark.integration


def _setup_args(source: str, *extra: str) -> list[str]:
    return ["setup-cpp-auto", "--backend", "llama", "--source", source, *extra]


def _builds(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_local_source_installs_then_does_nothing_then_rebuilds_incrementally(
    tmp_path: Path, base_env: dict[str, str], cache_dir: Path
) -> None:
    source = copy_fake_llama(tmp_path / "src")
    builds = tmp_path / "builds.log"
    env = {**base_env, "FAKE_LLAMA_BUILD_LOG": str(builds)}

    first = run_invoke(_setup_args(str(source)), env=env)
    assert first.returncode == 0, first.stderr
    install = cache_dir / "installs" / "llama"
    marker = json.loads((install / INSTALL_MARKER).read_text())
    assert marker["backend"] == "llama"
    assert marker["source"]["kind"] == "local"
    assert (install / "lib" / "libllama.so").exists()
    assert (install / "include" / "llama.h").exists()
    assert "installed" in first.stderr
    assert _builds(builds) == 1
    assert first.stdout == ""

    second = run_invoke(_setup_args(str(source)), env=env)
    assert second.returncode == 0, second.stderr
    assert "nothing to do" in second.stderr
    assert _builds(builds) == 1

    llama_c = source / "api" / "src" / "stub_llama.c"  # what libllama is compiled from (copy_fake_llama)
    llama_c.write_text(llama_c.read_text() + "\nint llama_extra_symbol(void) { return 7; }\n")
    third = run_invoke(_setup_args(str(source)), env=env)
    assert third.returncode == 0, third.stderr
    assert "rebuilt" in third.stderr
    assert _builds(builds) == 2
    # Incremental: ggml was not recompiled, only llama.
    log = Path(next(line.split("log: ")[1].rstrip(")") for line in third.stderr.splitlines() if "log: " in line))
    text = log.read_text()
    assert "llama.c.o" in text and "ggml.c.o" not in text


def test_four_concurrent_setups_build_once_and_all_succeed(
    tmp_path: Path, base_env: dict[str, str], cache_dir: Path
) -> None:
    url, commit = fake_llama_git_repo(tmp_path)
    builds, started, release = tmp_path / "builds.log", tmp_path / "started", tmp_path / "release"
    env = {
        **base_env,
        "FAKE_LLAMA_BUILD_LOG": str(builds),
        "FAKE_LLAMA_STARTED": str(started),
        "FAKE_LLAMA_RELEASE": str(release),
    }
    # stderr goes to files so the test can see, while the build is held, that the other three are
    # really waiting on the lock rather than assume they got there within some sleep.
    err_paths = [tmp_path / f"stderr-{i}.txt" for i in range(4)]
    procs = []
    for err_path in err_paths:
        with err_path.open("w", encoding="utf-8") as err:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "invoke", *_setup_args(f"{url}@{commit}")],
                    cwd=REPO_ROOT,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
            )

    def waiting() -> int:
        return sum("waiting for the lock" in path.read_text(encoding="utf-8") for path in err_paths)

    try:
        wait_for(started)
        deadline = time.monotonic() + HANG_SECONDS
        while waiting() < 3:
            assert time.monotonic() < deadline, [path.read_text(encoding="utf-8") for path in err_paths]
            time.sleep(0.05)
        release.touch()
        for p in procs:
            p.wait(timeout=HANG_SECONDS)
    finally:
        for p in procs:
            p.kill()
    errs = [path.read_text(encoding="utf-8") for path in err_paths]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errs
    assert _builds(builds) == 1
    assert sum("llama.cpp installed at" in e for e in errs) == 1
    assert sum("waiting for the lock" in e for e in errs) == 3
    assert sum("another process finished installing" in e for e in errs) == 3
    marker = json.loads((cache_dir / "installs" / "llama" / INSTALL_MARKER).read_text())
    assert marker["source"]["commit"] == commit


def test_setup_killed_mid_build_leaves_no_install_and_the_next_run_completes(
    tmp_path: Path, base_env: dict[str, str], cache_dir: Path
) -> None:
    source = copy_fake_llama(tmp_path / "src")
    started, release = tmp_path / "started", tmp_path / "release"
    env = {**base_env, "FAKE_LLAMA_STARTED": str(started), "FAKE_LLAMA_RELEASE": str(release)}
    victim = subprocess.Popen(
        [sys.executable, "-m", "invoke", *_setup_args(str(source))],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_for(started)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=HANG_SECONDS)

    install = cache_dir / "installs" / "llama"
    assert not (install / INSTALL_MARKER).exists()
    with exclusive_lock(cache_dir / "locks" / "llama.lock", purpose="test", timeout=2):
        pass  # the kernel released the dead holder's lock

    release.touch()
    again = run_invoke(_setup_args(str(source)), env=env)
    assert again.returncode == 0, again.stderr
    assert (install / INSTALL_MARKER).exists()
    assert not list((cache_dir / "installs").glob(".staging-*"))


def test_unwritable_cache_is_exit_4(tmp_path: Path, base_env: dict[str, str], cache_dir: Path) -> None:
    source = copy_fake_llama(tmp_path / "src")
    root = os.geteuid() == 0
    if root:
        if shutil.which("chattr") is None:
            pytest.skip("running as root without chattr: cannot make a directory unwritable")
        subprocess.run(["chattr", "+i", str(cache_dir)], check=True)
    else:
        cache_dir.chmod(0o555)
    try:
        result = run_invoke(_setup_args(str(source)), env=base_env)
    finally:
        if root:
            subprocess.run(["chattr", "-i", str(cache_dir)], check=True)
        else:
            cache_dir.chmod(0o755)
    assert result.returncode == 4, result.stderr
    assert str(cache_dir) in result.stderr
    assert "next:" in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_source_is_exit_3_within_bounded_time(base_env: dict[str, str]) -> None:
    env = {**base_env, "BITNET_NET_RETRIES": "3", "BITNET_NET_RETRY_BUDGET": "2"}
    started = time.monotonic()
    result = run_invoke(
        _setup_args("https://127.0.0.1:9/llama.cpp.git@0c1e57098bba43ac29e6e3b677cdceebdd22334f"),
        env=env,
        timeout=120,
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 3, result.stderr
    assert "retrying" in result.stderr
    assert "next:" in result.stderr and "Traceback" not in result.stderr
    assert elapsed < 60


def test_cmake_failure_is_exit_5_with_the_log(tmp_path: Path, base_env: dict[str, str]) -> None:
    source = copy_fake_llama(tmp_path / "src")
    result = run_invoke(_setup_args(str(source)), env={**base_env, "FAKE_LLAMA_BREAK": "1"})
    assert result.returncode == 5, result.stderr
    log_line = next(line for line in result.stderr.splitlines() if line.strip().startswith("log:"))
    log = Path(log_line.split("log:", 1)[1].strip())
    assert log.exists()
    assert "broken.c" in log.read_text()
    assert "Traceback" not in result.stderr


def test_a_build_without_the_llama_api_fails_the_health_check(tmp_path: Path, base_env: dict[str, str]) -> None:
    source = copy_fake_llama(tmp_path / "src")
    result = run_invoke(_setup_args(str(source)), env={**base_env, "FAKE_LLAMA_NO_SYMBOLS": "1"})
    assert result.returncode == 5, result.stderr
    assert "health check" in result.stderr


def test_emit_prints_only_shell_lines_that_point_at_the_install(
    tmp_path: Path, base_env: dict[str, str], cache_dir: Path
) -> None:
    source = copy_fake_llama(tmp_path / "src weird 'dir'")
    result = run_invoke(_setup_args(str(source), "--emit", "sh"), env=base_env)
    assert result.returncode == 0, result.stderr
    script = result.stdout + '\nprintf "%s\\n%s\\n" "$LLAMA_CPP_DIR" "$LD_LIBRARY_PATH"\n'
    shell_env = {"PATH": base_env["PATH"], "LD_LIBRARY_PATH": "/already/there"}
    out = subprocess.run(["sh", "-c", script], env=shell_env, capture_output=True, text=True, check=True).stdout
    install = cache_dir / "installs" / "llama"
    assert out.splitlines() == [str(install), f"{install / 'lib'}:/already/there"]


@pytest.mark.parametrize(
    "args",
    [
        ["setup-cpp-auto", "--backend", "nope"],
        ["setup-cpp-auto", "--backend", "llama", "--source", "/does/not/exist"],
        ["setup-cpp-auto", "--backend", "llama", "--emit", "zsh"],
        ["setup-cpp-auto", "--backend", "bitnet", "--source", "pypi"],
    ],
)
def test_bad_arguments_are_exit_6(args: list[str], base_env: dict[str, str]) -> None:
    result = run_invoke(args, env=base_env)
    assert result.returncode == 6, result.stderr
    assert "next:" in result.stderr
    assert "Traceback" not in result.stderr
