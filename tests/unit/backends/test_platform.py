from __future__ import annotations

import os
import platform
import sys
from types import SimpleNamespace

import pytest

from bitnet_crossval.backends.platform import library_path_variable, machine_arch, shared_library_suffixes


@pytest.mark.parametrize(
    ("system", "suffixes", "variable"),
    [
        ("linux", (".so",), "LD_LIBRARY_PATH"),
        ("darwin", (".dylib",), "DYLD_LIBRARY_PATH"),
        ("win32", (".dll",), "PATH"),
        ("freebsd14", (".so",), "LD_LIBRARY_PATH"),
    ],
)
def test_libraries_per_platform(
    monkeypatch: pytest.MonkeyPatch, system: str, suffixes: tuple[str, ...], variable: str
) -> None:
    monkeypatch.setattr(sys, "platform", system)
    assert shared_library_suffixes() == suffixes
    assert library_path_variable() == variable


@pytest.mark.parametrize(
    ("machine", "arch"),
    [
        ("x86_64", "x86_64"),
        ("aarch64", "arm64"),
        ("arm64", "arm64"),
        ("riscv64", "riscv64"),
        ("ppc64le", "ppc64le"),
    ],
)
def test_machine_arch_from_uname(monkeypatch: pytest.MonkeyPatch, machine: str, arch: str) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(os, "uname", lambda: SimpleNamespace(machine=machine), raising=False)
    assert machine_arch() == arch


@pytest.mark.parametrize(
    ("machine", "arch"),
    [
        ("AMD64", "x86_64"),
        ("ARM64", "arm64"),  # Windows on ARM
    ],
)
def test_machine_arch_on_windows_asks_platform(monkeypatch: pytest.MonkeyPatch, machine: str, arch: str) -> None:
    monkeypatch.setattr(sys, "platform", "win32")

    def no_uname() -> None:
        raise AssertionError("os.uname does not exist on Windows")

    monkeypatch.setattr(os, "uname", no_uname, raising=False)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    assert machine_arch() == arch


def test_machine_arch_on_this_machine_is_a_plain_name() -> None:
    arch = machine_arch()
    assert arch and arch == arch.strip()
    if os.uname().machine in {"x86_64", "aarch64", "arm64"}:
        assert arch in {"x86_64", "arm64"}
