from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bitnet_crossval.errors import BadInput, BuildFailed
from bitnet_crossval.provision import cmake
from bitnet_crossval.provision.cmake import (
    CMakeProject,
    build_args,
    configure,
    configure_and_build,
    configure_args,
    flags_summary,
    install,
    preferred_generator,
    prepare_build_dir,
)
from bitnet_crossval.provision.options import JOBS
from bitnet_crossval.store.sources import read_cmake_cache
from bitnet_crossval.util import proc

# --- --jobs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "jobs"), [("1", 1), ("8", 8), (" 16 ", 16), ("1024", 1024), ("007", 7)])
def test_jobs_reads_a_whole_number(text: str, jobs: int) -> None:
    assert JOBS.parse(text) == jobs


@pytest.mark.parametrize("text", [None, "", "  ", "0", " 0 "])
def test_jobs_zero_or_nothing_means_one_per_cpu(text: str | None) -> None:
    assert JOBS.parse(text) == 0


@pytest.mark.parametrize(
    "text",
    ["-1", "+2", "1.5", "2.0", "1e3", "two", "2 jobs", "0x10", "1025", "99999999999999999999", "nan", "inf", "²",
     "1" * 5000],
)  # fmt: skip
def test_jobs_refuses_anything_else_as_bad_input(text: str) -> None:
    with pytest.raises(BadInput) as caught:
        JOBS.parse(text)
    assert caught.value.exit_code == 6
    assert "--jobs" in caught.value.message and repr(text) in caught.value.message
    assert "--jobs 2" in caught.value.next_step


# --- fakes -----------------------------------------------------------------------------------


def fake_program(bin_dir: Path, name: str, body: str = "exit 0") -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return path


# A cmake that records each call (one line, shell-quoted) and answers as the test says.
FAKE_CMAKE = """\
for arg in "$@"; do printf '%s\\t' "$arg" >> "$FAKE_CMAKE_CALLS"; done
printf '\\n' >> "$FAKE_CMAKE_CALLS"
case "$1" in
  --build) printf '%s\\n' "$FAKE_CMAKE_BUILD_OUTPUT"; exit "${FAKE_CMAKE_BUILD_EXIT:-0}" ;;
  --install) printf 'installing\\n'; exit "${FAKE_CMAKE_INSTALL_EXIT:-0}" ;;
  *) printf '%s\\n' "$FAKE_CMAKE_CONFIGURE_OUTPUT"; exit "${FAKE_CMAKE_CONFIGURE_EXIT:-0}" ;;
esac
"""


class FakeCMake:
    def __init__(self, tmp_path: Path, *, ninja: bool = False, make: bool = False) -> None:
        self.bin = tmp_path / "bin"
        fake_program(self.bin, "cmake", FAKE_CMAKE)
        if ninja:
            fake_program(self.bin, "ninja")
        if make:
            fake_program(self.bin, "make")
        self.calls_file = tmp_path / "cmake-calls.txt"
        self.env = {"PATH": str(self.bin), "FAKE_CMAKE_CALLS": str(self.calls_file)}

    @property
    def calls(self) -> list[list[str]]:
        if not self.calls_file.exists():
            return []
        return [line.rstrip("\t").split("\t") for line in self.calls_file.read_text().splitlines()]


def project_in(tmp_path: Path, env: dict[str, str], **kwargs) -> CMakeProject:
    source = tmp_path / "src"
    source.mkdir(exist_ok=True)
    return CMakeProject(source_dir=source, build_dir=tmp_path / "build", env=env, **kwargs)


def write_cache(build_dir: Path, **entries: str) -> None:
    build_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# This is the CMakeCache file.", "//A comment", ""]
    lines += [f"{name}:INTERNAL={value}" for name, value in entries.items()]
    (build_dir / "CMakeCache.txt").write_text("\n".join(lines) + "\n")


# --- read_cache ------------------------------------------------------------------------------


def test_read_cache_reads_entries_without_types(tmp_path: Path) -> None:
    tmp_path.joinpath("CMakeCache.txt").write_text(
        "# comment\n"
        "// help text = not an entry\n"
        "\n"
        "CMAKE_GENERATOR:INTERNAL=Ninja\n"
        "CMAKE_BUILD_TYPE:STRING=Release\n"
        "WITH_EQUALS:STRING=a=b=c\n"
        "EMPTY:STRING=\n"
        "no equals sign here\n"
        "NOTYPE=plain\n"
    )
    assert read_cmake_cache(tmp_path) == {
        "CMAKE_GENERATOR": "Ninja",
        "CMAKE_BUILD_TYPE": "Release",
        "WITH_EQUALS": "a=b=c",
        "EMPTY": "",
        "NOTYPE": "plain",
    }


def test_read_cache_without_a_cache_is_empty(tmp_path: Path) -> None:
    assert read_cmake_cache(tmp_path) == {}
    assert read_cmake_cache(tmp_path / "missing") == {}
    (tmp_path / "d" / "CMakeCache.txt").mkdir(parents=True)
    assert read_cmake_cache(tmp_path / "d") == {}


def test_read_cache_survives_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "CMakeCache.txt").write_bytes(b"PATHY:PATH=/opt/\xff\xfe\nCMAKE_GENERATOR:INTERNAL=Ninja\n")
    assert read_cmake_cache(tmp_path)["CMAKE_GENERATOR"] == "Ninja"


# --- generator, configure_args, build_args ----------------------------------------------------


def test_preferred_generator_is_ninja_when_the_childs_path_has_it(tmp_path: Path) -> None:
    with_ninja = FakeCMake(tmp_path / "a", ninja=True)
    without = FakeCMake(tmp_path / "b")
    assert preferred_generator(with_ninja.env) == "Ninja"
    assert preferred_generator(without.env) is None
    assert preferred_generator({"PATH": ""}) is None


def test_the_first_configure_names_the_generator(tmp_path: Path) -> None:
    fake = FakeCMake(tmp_path, ninja=True)
    project = project_in(tmp_path, fake.env, cmake_args=["-DA=1", "-DB=2"])
    args = configure_args(project)
    assert args[:5] == ["cmake", "-S", str(project.source_dir), "-B", str(project.build_dir)]
    assert args[5:7] == ["-G", "Ninja"]
    assert args[7:] == ["-DA=1", "-DB=2"]


def test_no_generator_flag_without_ninja(tmp_path: Path) -> None:
    fake = FakeCMake(tmp_path)
    project = project_in(tmp_path, fake.env, cmake_args=["-DA=1"])
    assert "-G" not in configure_args(project)
    assert configure_args(project)[-1] == "-DA=1"


def test_a_configured_tree_is_not_given_a_generator_again(tmp_path: Path) -> None:
    fake = FakeCMake(tmp_path, ninja=True)
    project = project_in(tmp_path, fake.env)
    write_cache(project.build_dir, CMAKE_GENERATOR="Unix Makefiles")
    assert "-G" not in configure_args(project)
    assert project.generator == "Unix Makefiles"  # the tree keeps its own


def test_build_args_with_targets_and_jobs(tmp_path: Path) -> None:
    project = project_in(tmp_path, {"PATH": ""}, targets=["llama", "ggml"], jobs=3)
    args = build_args(project)
    assert args[:3] == ["cmake", "--build", str(project.build_dir)]
    assert args[args.index("--target") + 1 : args.index("--target") + 3] == ["llama", "ggml"]
    assert args[args.index("-j") + 1] == "3"
    assert args[args.index("--config") + 1] == "Release"


def test_build_args_without_targets_use_every_cpu(tmp_path: Path) -> None:
    args = build_args(project_in(tmp_path, {"PATH": ""}))
    assert "--target" not in args
    assert args[args.index("-j") + 1] == str(os.cpu_count() or 1)


def test_flags_summary_keeps_the_definitions() -> None:
    assert flags_summary(["-G", "Ninja", "-DA=1", "--fresh", "-DB=OFF"]) == ["-DA=1", "-DB=OFF"]


# --- prepare_build_dir ------------------------------------------------------------------------


def test_a_missing_build_dir_is_created(tmp_path: Path) -> None:
    project = project_in(tmp_path, FakeCMake(tmp_path).env)
    prepare_build_dir(project)
    assert project.build_dir.is_dir()


def test_a_tree_configured_elsewhere_is_started_over(tmp_path: Path) -> None:
    fake = FakeCMake(tmp_path, ninja=True)
    project = project_in(tmp_path, fake.env)
    write_cache(project.build_dir, CMAKE_CACHEFILE_DIR=str(tmp_path / "somewhere-else"), CMAKE_GENERATOR="Ninja")
    (project.build_dir / "stale.o").write_text("object from the other tree")
    prepare_build_dir(project)
    assert project.build_dir.is_dir()
    assert not (project.build_dir / "stale.o").exists()
    assert not (project.build_dir / "CMakeCache.txt").exists()


def test_a_tree_configured_from_other_sources_is_started_over(tmp_path: Path) -> None:
    # CMake refuses a tree configured from another source directory: a clone of the suite in
    # another place, or a release whose C++ sources moved, shares the cache's build trees.
    fake = FakeCMake(tmp_path, ninja=True)
    project = project_in(tmp_path, fake.env)
    write_cache(
        project.build_dir,
        CMAKE_CACHEFILE_DIR=str(project.build_dir),
        CMAKE_HOME_DIRECTORY=str(tmp_path / "old-clone" / "cpp"),
        CMAKE_GENERATOR="Ninja",
    )
    (project.build_dir / "stale.o").write_text("object from the other sources")
    prepare_build_dir(project)
    assert not (project.build_dir / "stale.o").exists()
    assert not (project.build_dir / "CMakeCache.txt").exists()


def test_a_tree_configured_from_its_own_sources_is_kept(tmp_path: Path) -> None:
    fake = FakeCMake(tmp_path, ninja=True)
    project = project_in(tmp_path, fake.env)
    write_cache(
        project.build_dir,
        CMAKE_CACHEFILE_DIR=str(project.build_dir),
        CMAKE_HOME_DIRECTORY=str(project.source_dir),
        CMAKE_GENERATOR="Ninja",
    )
    (project.build_dir / "kept.o").write_text("x")
    prepare_build_dir(project)
    assert (project.build_dir / "kept.o").exists()


def test_a_tree_whose_generator_program_is_gone_is_started_over(tmp_path: Path) -> None:
    fake = FakeCMake(tmp_path)  # no ninja on the child's PATH
    project = project_in(tmp_path, fake.env)
    write_cache(project.build_dir, CMAKE_CACHEFILE_DIR=str(project.build_dir), CMAKE_GENERATOR="Ninja")
    (project.build_dir / "kept.o").write_text("x")
    prepare_build_dir(project)
    assert not (project.build_dir / "kept.o").exists()
    assert "-G" not in configure_args(project)  # and it is configured afresh for the default generator


@pytest.mark.parametrize(
    ("generator", "tools"),
    [("Ninja", {"ninja": True}), ("Unix Makefiles", {"make": True}), ("Xcode", {})],
)
def test_a_reusable_tree_is_kept(tmp_path: Path, generator: str, tools: dict[str, bool]) -> None:
    fake = FakeCMake(tmp_path, **tools)
    project = project_in(tmp_path, fake.env)
    write_cache(project.build_dir, CMAKE_CACHEFILE_DIR=str(project.build_dir), CMAKE_GENERATOR=generator)
    (project.build_dir / "kept.o").write_text("x")
    prepare_build_dir(project)
    assert (project.build_dir / "kept.o").read_text() == "x"
    assert read_cmake_cache(project.build_dir)["CMAKE_GENERATOR"] == generator


def test_a_tree_reached_through_a_symlink_is_the_same_tree(tmp_path: Path) -> None:
    fake = FakeCMake(tmp_path, ninja=True)
    real = tmp_path / "real-build"
    write_cache(real, CMAKE_CACHEFILE_DIR=str(real), CMAKE_GENERATOR="Ninja")
    (real / "kept.o").write_text("x")
    (tmp_path / "build").symlink_to(real)
    project = project_in(tmp_path, fake.env)
    prepare_build_dir(project)
    assert (real / "kept.o").exists()


def test_a_build_dir_that_is_a_file_is_bad_input(tmp_path: Path) -> None:
    project = project_in(tmp_path, FakeCMake(tmp_path).env)
    project.build_dir.write_text("not a directory")
    with pytest.raises(BadInput):
        prepare_build_dir(project)


def test_a_stale_group_file_does_not_kill_an_unrelated_process_group(tmp_path: Path) -> None:
    fake = FakeCMake(tmp_path, ninja=True)
    project = project_in(tmp_path, fake.env)
    write_cache(project.build_dir, CMAKE_CACHEFILE_DIR=str(project.build_dir), CMAKE_GENERATOR="Ninja")
    # An unrelated process that leads its own group, as a reused id would name.
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True, cwd=tmp_path
    )
    # Reap it the moment it dies, as init would reap an orphan, so its group is gone at once.
    reaper = threading.Thread(target=bystander.wait, daemon=True)
    reaper.start()
    try:
        for recorded in (f"{bystander.pid}\n", f"{bystander.pid} 1\n"):  # old format; a wrong start time
            (project.build_dir / cmake.BUILD_GROUP_FILE).write_text(recorded)
            prepare_build_dir(project)
            assert bystander.poll() is None, f"the unrelated process was killed (exit {bystander.returncode})"
    finally:
        bystander.kill()
        reaper.join(10)


def test_the_orphans_of_a_killed_build_are_stopped_before_the_tree_is_reused(tmp_path: Path) -> None:
    fake = FakeCMake(tmp_path, ninja=True)
    project = project_in(tmp_path, fake.env)
    write_cache(project.build_dir, CMAKE_CACHEFILE_DIR=str(project.build_dir), CMAKE_GENERATOR="Ninja")
    # A "compiler" left running in its own group, recorded the way proc.run records a build.
    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    reaper = threading.Thread(target=orphan.wait, daemon=True)  # as init reaps a real orphan
    reaper.start()
    try:
        proc._write_group_file(project.build_dir / cmake.BUILD_GROUP_FILE, orphan.pid)
        prepare_build_dir(project)
        reaper.join(10)
        assert orphan.returncode == -signal.SIGTERM
        assert not (project.build_dir / cmake.BUILD_GROUP_FILE).exists()
    finally:
        orphan.kill()


# --- running a fake cmake ----------------------------------------------------------------------


def test_configure_and_build_runs_configure_then_build(tmp_path: Path) -> None:
    fake = FakeCMake(tmp_path, ninja=True)
    env = {**fake.env, "FAKE_CMAKE_BUILD_OUTPUT": "[1/2] Building C object a.o\n[2/2] Linking C shared library libx.so"}
    project = project_in(tmp_path, env, cmake_args=["-DX=1"], targets=["x"], jobs=2)
    log = tmp_path / "build.log"
    assert configure_and_build(project, log_path=log, what="the fake project") is True
    configure_call, build_call = fake.calls
    assert configure_call[0] == "-S" and "-G" in configure_call and configure_call[-1] == "-DX=1"
    assert build_call[:2] == ["--build", str(project.build_dir)]
    assert build_call[build_call.index("--target") + 1] == "x"
    assert build_call[build_call.index("-j") + 1] == "2"
    text = log.read_text()
    assert "Linking C shared library libx.so" in text
    assert shlex.join(["-DX=1"]) in text  # the commands are in the log too


def test_a_build_that_compiles_nothing_says_so(tmp_path: Path) -> None:
    fake = FakeCMake(tmp_path, ninja=True)
    env = {**fake.env, "FAKE_CMAKE_BUILD_OUTPUT": "ninja: no work to do."}
    project = project_in(tmp_path, env)
    assert configure_and_build(project, log_path=tmp_path / "log", what="x") is False


def test_a_make_build_reports_work_from_its_percent_lines(tmp_path: Path) -> None:
    fake = FakeCMake(tmp_path, make=True)
    env = {**fake.env, "FAKE_CMAKE_BUILD_OUTPUT": "[ 50%] Building C object a.o\n[100%] Linking C library libx.so"}
    project = project_in(tmp_path, env)
    assert configure_and_build(project, log_path=tmp_path / "log", what="x") is True


@pytest.mark.parametrize(
    ("stage", "run", "verb", "next_words"),
    [
        ("CONFIGURE", lambda p, log: configure(p, log_path=log, what="llama.cpp"), "configuring", "CMake version"),
        ("BUILD", lambda p, log: cmake.build(p, log_path=log, what="llama.cpp"), "compiling", "--jobs 1"),
        (
            "BUILD",
            lambda p, log: cmake.build(p, log_path=log, what="llama.cpp", show_progress=False),
            "compiling",
            "--jobs 1",
        ),
        (
            "INSTALL",
            lambda p, log: install(p, prefix=p.build_dir / "prefix", log_path=log, what="llama.cpp"),
            "installing",
            "--jobs 1",
        ),
    ],
)
def test_a_failing_cmake_is_build_failed_with_the_log_and_a_next_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], stage: str, run, verb: str, next_words: str
) -> None:
    fake = FakeCMake(tmp_path)
    env = {
        **fake.env,
        f"FAKE_CMAKE_{stage}_EXIT": "2",
        f"FAKE_CMAKE_{stage}_OUTPUT": "CMake Error at CMakeLists.txt:1: something broke",
    }
    project = project_in(tmp_path, env)
    project.build_dir.mkdir()
    log = tmp_path / "step.log"
    with pytest.raises(BuildFailed) as caught:
        run(project, log)
    error = caught.value
    assert error.exit_code == 5
    assert error.message == f"{verb} llama.cpp failed (CMake exit code 2)"
    assert error.log_path == log
    assert next_words in error.next_step
    assert f"log: {log}" in error.render()
    assert log.exists()
    if stage != "INSTALL":
        assert "something broke" in log.read_text()
        assert "something broke" in capsys.readouterr().err  # the tail is shown


@pytest.mark.parametrize(
    ("tail", "advice"),
    [
        ("-- The CXX compiler identification is unknown\nNo CMAKE_CXX_COMPILER could be found.", "build-essential"),
        ("No CMAKE_C_COMPILER could be found.", "build-essential"),
        ("CMake Error: Clang is required for Bitnet.cpp compilation", "apt-get install clang-19"),
    ],
)
def test_a_missing_compiler_gets_the_install_advice(tmp_path: Path, tail: str, advice: str) -> None:
    fake = FakeCMake(tmp_path)
    env = {**fake.env, "FAKE_CMAKE_CONFIGURE_EXIT": "1", "FAKE_CMAKE_CONFIGURE_OUTPUT": tail}
    project = project_in(tmp_path, env)
    with pytest.raises(BuildFailed) as caught:
        configure(project, log_path=tmp_path / "log", what="bitnet.cpp")
    assert advice in caught.value.next_step


def test_a_missing_cmake_is_build_failed_naming_it(tmp_path: Path) -> None:
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    project = project_in(tmp_path, {"PATH": str(empty_bin)})
    with pytest.raises(BuildFailed) as caught:
        configure_and_build(project, log_path=tmp_path / "log", what="llama.cpp")
    assert caught.value.exit_code == 5
    assert "`cmake` is not installed" in caught.value.message
    assert "cannot configure llama.cpp" in caught.value.message
    assert "apt-get install cmake" in caught.value.next_step


def test_a_make_tree_without_the_ok_stamp_is_started_over(tmp_path: Path) -> None:
    # A Make tree whose last build did not finish may hold a fresh, broken object file.
    fake = FakeCMake(tmp_path, make=True)
    project = project_in(tmp_path, fake.env)
    write_cache(project.build_dir, CMAKE_CACHEFILE_DIR=str(project.build_dir), CMAKE_GENERATOR="Unix Makefiles")
    (project.build_dir / "half-written.o").write_text("x")
    configure_and_build(project, log_path=tmp_path / "log", what="x")
    assert not (project.build_dir / "half-written.o").exists()
    assert (project.build_dir / cmake.BUILD_OK_STAMP).exists()


def test_a_finished_make_tree_is_kept(tmp_path: Path) -> None:
    fake = FakeCMake(tmp_path, make=True)
    project = project_in(tmp_path, fake.env)
    write_cache(project.build_dir, CMAKE_CACHEFILE_DIR=str(project.build_dir), CMAKE_GENERATOR="Unix Makefiles")
    (project.build_dir / "done.o").write_text("x")
    (project.build_dir / cmake.BUILD_OK_STAMP).write_text("ok\n")
    configure_and_build(project, log_path=tmp_path / "log", what="x")
    assert (project.build_dir / "done.o").exists()


def test_a_failed_build_leaves_no_ok_stamp(tmp_path: Path) -> None:
    fake = FakeCMake(tmp_path, ninja=True)
    project = project_in(tmp_path, {**fake.env, "FAKE_CMAKE_BUILD_EXIT": "1"})
    project.build_dir.mkdir()
    (project.build_dir / cmake.BUILD_OK_STAMP).write_text("ok\n")  # from an earlier, good build
    with pytest.raises(BuildFailed):
        configure_and_build(project, log_path=tmp_path / "log", what="x")
    assert not (project.build_dir / cmake.BUILD_OK_STAMP).exists()
