"""build_shim without C++: a fake ``cmake`` behind proc.run, and the fake ``bitnet-shim`` answering ``info``."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from bitnet_crossval.errors import BuildFailed, CommandFailed
from bitnet_crossval.reference import build as shim_build
from bitnet_crossval.reference.build import build_shim
from bitnet_crossval.util import proc
from tests.unit.reference.fakes import option

# ----- build_shim with a fake cmake --------------------------------------------------------------


@pytest.fixture
def backend_prefix(tmp_path: Path) -> Path:
    prefix = tmp_path / "prefix"
    (prefix / "include").mkdir(parents=True)
    (prefix / "include" / "llama.h").write_text("/* stand-in */\n")
    (prefix / "lib").mkdir()
    return prefix


class FakeCmake:
    """Stands in for cmake behind bitnet_crossval.util.proc.run; everything else runs for real."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, shim_script: Path, *, cache_api: str = "current") -> None:
        self.calls: list[list[str]] = []
        self.fail: str | None = None
        self.cache_api = cache_api
        self._shim_script = shim_script
        self._real_run = proc.run
        monkeypatch.setattr(proc, "run", self.run)

    def run(self, argv: Sequence[str | os.PathLike[str]], **kwargs: Any) -> proc.Completed:
        args = [os.fspath(a) for a in argv]
        if args[0] != "cmake":
            return self._real_run(args, **kwargs)
        self.calls.append(args)
        step = "build" if args[1] == "--build" else "configure"
        if self.fail == step:
            raise CommandFailed(args, 1, "boom", log_path=kwargs.get("log_path"))
        build_dir = Path(args[args.index("-B") + 1] if step == "configure" else args[2])
        if step == "configure":
            build_dir.mkdir(parents=True, exist_ok=True)
            (build_dir / "CMakeCache.txt").write_text(
                f"CMAKE_GENERATOR:INTERNAL=Ninja\nBITNET_SHIM_API:INTERNAL={self.cache_api}\n"
            )
        else:
            target = build_dir / shim_build.EXECUTABLE_NAME
            target.write_bytes(self._shim_script.read_bytes())
            target.chmod(0o755)
        return proc.Completed(argv=args, returncode=0, output="")


def _build(prefix: Path, tmp_path: Path, env: Mapping[str, str]) -> shim_build.ShimBuild:
    return build_shim(
        include_dirs=[prefix / "include"],
        lib_dir=prefix / "lib",
        build_dir=tmp_path / "build",
        log_path=tmp_path / "build.log",
        env=env,
        backend="llama",
        backend_commit="abc123",
        build_flags="-DX=1",
    )


@pytest.fixture
def ninja_env(tmp_path: Path, fake_shim: Path) -> dict[str, str]:
    """PATH with a `ninja`, so the generator choice is stable; the fake shim answers `info`."""
    bin_dir = tmp_path / "ninja-bin"
    bin_dir.mkdir()
    (bin_dir / "ninja").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "ninja").chmod(0o755)
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps({"stdout": json.dumps({"api": "current"})}))
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    env["FAKE_SHIM_PLAN"] = str(plan_path)
    env["FAKE_SHIM_RECORD"] = str(tmp_path / "record.jsonl")
    return env


def test_build_configures_once_and_then_only_builds(
    monkeypatch: pytest.MonkeyPatch, backend_prefix: Path, tmp_path: Path, fake_shim: Path, ninja_env: dict[str, str]
) -> None:
    cmake = FakeCmake(monkeypatch, fake_shim)
    first = _build(backend_prefix, tmp_path, ninja_env)
    second = _build(backend_prefix, tmp_path, ninja_env)

    assert first == second
    assert first.api == "current"
    assert first.executable == tmp_path / "build" / shim_build.EXECUTABLE_NAME
    steps = ["configure" if "-S" in c else "build" for c in cmake.calls]
    assert steps == ["configure", "build", "build"]
    configure = cmake.calls[0]
    assert option(configure, "-G") == "Ninja"
    assert f"-DSHIM_INCLUDE_DIRS={backend_prefix / 'include'}" in configure
    assert f"-DSHIM_LIB_DIR={backend_prefix / 'lib'}" in configure
    assert "-DSHIM_BACKEND_COMMIT=abc123" in configure
    assert "-DSHIM_BUILD_FLAGS=-DX=1" in configure


def test_changed_inputs_configure_again(
    monkeypatch: pytest.MonkeyPatch, backend_prefix: Path, tmp_path: Path, fake_shim: Path, ninja_env: dict[str, str]
) -> None:
    cmake = FakeCmake(monkeypatch, fake_shim)
    _build(backend_prefix, tmp_path, ninja_env)
    build_shim(
        include_dirs=[backend_prefix / "include"],
        lib_dir=backend_prefix / "lib",
        build_dir=tmp_path / "build",
        log_path=tmp_path / "build.log",
        env=ninja_env,
        backend="llama",
        backend_commit="def456",
        build_flags="-DX=1",
    )
    assert sum("-S" in c for c in cmake.calls) == 2


@pytest.mark.parametrize("step", ["configure", "build"])
def test_cmake_failures_are_build_failures_with_the_log(
    monkeypatch: pytest.MonkeyPatch,
    backend_prefix: Path,
    tmp_path: Path,
    fake_shim: Path,
    ninja_env: dict[str, str],
    step: str,
) -> None:
    cmake = FakeCmake(monkeypatch, fake_shim)
    cmake.fail = step
    with pytest.raises(BuildFailed) as caught:
        _build(backend_prefix, tmp_path, ninja_env)
    assert caught.value.exit_code == 5
    assert caught.value.log_path == tmp_path / "build.log"
    assert ("configuring" if step == "configure" else "compiling") in caught.value.message


def test_a_failed_configure_is_run_again_next_time(
    monkeypatch: pytest.MonkeyPatch, backend_prefix: Path, tmp_path: Path, fake_shim: Path, ninja_env: dict[str, str]
) -> None:
    cmake = FakeCmake(monkeypatch, fake_shim)
    cmake.fail = "configure"
    with pytest.raises(BuildFailed):
        _build(backend_prefix, tmp_path, ninja_env)
    cmake.fail = None
    assert _build(backend_prefix, tmp_path, ninja_env).api == "current"
    assert sum("-S" in c for c in cmake.calls) == 2


def test_missing_llama_h_fails_before_cmake(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fake_shim: Path, ninja_env: dict[str, str]
) -> None:
    cmake = FakeCmake(monkeypatch, fake_shim)
    empty = tmp_path / "empty"
    (empty / "include").mkdir(parents=True)
    (empty / "lib").mkdir()
    with pytest.raises(BuildFailed, match=r"llama\.h was not found"):
        _build(empty, tmp_path, ninja_env)
    assert cmake.calls == []


def test_api_disagreement_between_cache_and_binary_fails(
    monkeypatch: pytest.MonkeyPatch, backend_prefix: Path, tmp_path: Path, fake_shim: Path, ninja_env: dict[str, str]
) -> None:
    FakeCmake(monkeypatch, fake_shim, cache_api="legacy")  # the fake binary says "current"
    with pytest.raises(BuildFailed, match="reports API"):
        _build(backend_prefix, tmp_path, ninja_env)


def test_a_build_dir_whose_generator_is_gone_starts_over(
    monkeypatch: pytest.MonkeyPatch, backend_prefix: Path, tmp_path: Path, fake_shim: Path, ninja_env: dict[str, str]
) -> None:
    # One policy for every CMake build (provision/cmake.py): a tree keeps its generator unless
    # that generator's program is no longer on PATH; then it starts over with the preferred one.
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    (build_dir / "CMakeCache.txt").write_text("CMAKE_GENERATOR:INTERNAL=Unix Makefiles\n")
    (build_dir / "stale-object.o").write_text("")
    FakeCmake(monkeypatch, fake_shim)
    no_make = {**ninja_env, "PATH": ninja_env["PATH"].split(os.pathsep)[0]}  # only the fake ninja
    _build(backend_prefix, tmp_path, no_make)
    assert not (build_dir / "stale-object.o").exists()


def test_a_build_dir_of_another_generator_keeps_it_while_its_program_exists(
    monkeypatch: pytest.MonkeyPatch, backend_prefix: Path, tmp_path: Path, fake_shim: Path, ninja_env: dict[str, str]
) -> None:
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    (build_dir / "CMakeCache.txt").write_text("CMAKE_GENERATOR:INTERNAL=Unix Makefiles\n")
    (build_dir / "stale-object.o").write_text("")
    FakeCmake(monkeypatch, fake_shim)
    _build(backend_prefix, tmp_path, ninja_env)  # make is on PATH: the tree is reused, not rebuilt
    assert (build_dir / "stale-object.o").exists()
