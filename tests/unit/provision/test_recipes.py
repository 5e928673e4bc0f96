from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bitnet_crossval.errors import BuildFailed
from bitnet_crossval.provision.cmake import CMakeProject
from bitnet_crossval.provision.recipes import BITNET_RECIPE, LLAMA_RECIPE, RECIPES


def definitions(args: tuple[str, ...]) -> dict[str, str]:
    """-DNAME=VALUE flags as {NAME: VALUE}; nothing else may be in a recipe's arguments."""
    found: dict[str, str] = {}
    for arg in args:
        assert arg.startswith("-D") and "=" in arg, arg
        name, value = arg[2:].split("=", 1)
        assert name not in found, f"{name} given twice"
        found[name] = value
    return found


def on_machine(monkeypatch: pytest.MonkeyPatch, machine: str) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(os, "uname", lambda: SimpleNamespace(machine=machine))


def fake_clang(bin_dir: Path, suffix: str, version: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in (f"clang{suffix}", f"clang++{suffix}"):
        path = bin_dir / name
        path.write_text(f'#!/bin/sh\necho "Ubuntu clang version {version} (1ubuntu1)"\necho "Target: x86_64"\n')
        path.chmod(0o755)


def test_every_backend_has_a_recipe() -> None:
    assert set(RECIPES) == {"llama", "bitnet"}
    assert all(recipe.backend == name for name, recipe in RECIPES.items())


def test_llama_builds_only_the_shared_release_library() -> None:
    flags = definitions(LLAMA_RECIPE.cmake_args({"PATH": ""}))  # needs no compiler lookup
    assert flags["BUILD_SHARED_LIBS"] == "ON"
    assert flags["CMAKE_BUILD_TYPE"] == "Release"
    for off in ("LLAMA_BUILD_TESTS", "LLAMA_BUILD_EXAMPLES", "LLAMA_BUILD_TOOLS", "LLAMA_BUILD_SERVER", "LLAMA_CURL"):
        assert flags[off] == "OFF", off
    assert flags["CMAKE_INSTALL_RPATH"] == "$ORIGIN"  # the install can be moved into place
    assert LLAMA_RECIPE.targets == ("llama",)
    assert LLAMA_RECIPE.prepare is None


@pytest.mark.parametrize(("machine", "tl_flag"), [("x86_64", "BITNET_X86_TL2"), ("aarch64", "BITNET_ARM_TL1")])
def test_bitnet_builds_with_clang_from_path_and_the_machines_tl_switch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, machine: str, tl_flag: str
) -> None:
    on_machine(monkeypatch, machine)
    fake_clang(tmp_path / "bin", "-19", "19.1.1")
    flags = definitions(BITNET_RECIPE.cmake_args({"PATH": str(tmp_path / "bin")}))
    assert flags["CMAKE_C_COMPILER"] == str(tmp_path / "bin" / "clang-19")
    assert flags["CMAKE_CXX_COMPILER"] == str(tmp_path / "bin" / "clang++-19")
    assert flags[tl_flag] == "OFF"
    other = {"BITNET_X86_TL2", "BITNET_ARM_TL1"} - {tl_flag}
    assert not other & set(flags)
    assert flags["BUILD_SHARED_LIBS"] == "ON" and flags["CMAKE_BUILD_TYPE"] == "Release"
    assert flags["BITNET_BUILD_TESTS"] == "OFF" and flags["LLAMA_BUILD_TESTS"] == "OFF"
    assert flags["LLAMA_CURL"] == "OFF" and flags["LLAMA_BUILD_SERVER"] == "OFF"
    assert BITNET_RECIPE.targets == ("llama",)
    assert BITNET_RECIPE.prepare is not None


def test_bitnet_without_clang_fails_before_anything_runs(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    with pytest.raises(BuildFailed, match="clang >= 18"):
        BITNET_RECIPE.cmake_args({"PATH": str(tmp_path / "bin")})


FAKE_INSTALLING_CMAKE = """\
import sys
from pathlib import Path

args = sys.argv[1:]
assert args[0] == "--install", args
prefix = Path(args[args.index("--prefix") + 1])
(prefix / "{libdir}").mkdir(parents=True, exist_ok=True)
(prefix / "{libdir}" / "libllama.so").write_text("lib")
(prefix / "include").mkdir(parents=True, exist_ok=True)
(prefix / "include" / "llama.h").write_text("// llama.h")
"""


@pytest.mark.parametrize("libdir", ["lib", "lib64"])
def test_llama_is_staged_by_cmake_install_into_lib(tmp_path: Path, libdir: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cmake = bin_dir / "cmake"
    cmake.write_text(f"#!{sys.executable}\n" + FAKE_INSTALLING_CMAKE.format(libdir=libdir))
    cmake.chmod(0o755)
    build = tmp_path / "build"
    build.mkdir()
    project = CMakeProject(source_dir=tmp_path / "src", build_dir=build, env={"PATH": str(bin_dir)})
    staging = tmp_path / "staging"
    LLAMA_RECIPE.stage(project, staging, tmp_path / "install.log")
    assert (staging / "lib" / "libllama.so").read_text() == "lib"
    assert not (staging / "lib64").exists()
    assert (staging / "include" / "llama.h").exists()
