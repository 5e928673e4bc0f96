"""Facts about the platform the backends are built and loaded on."""

from __future__ import annotations

import os
import sys

_ARCH_ALIAS = {
    "AMD64": "x86_64",
    "x86_64": "x86_64",
    "x86": "x86_64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "ARM64": "arm64",
}


def shared_library_suffixes() -> tuple[str, ...]:
    if sys.platform == "darwin":
        return (".dylib",)
    if sys.platform == "win32":
        return (".dll",)
    return (".so",)


def library_path_variable() -> str:
    """The variable the platform's dynamic loader searches."""
    if sys.platform == "darwin":
        return "DYLD_LIBRARY_PATH"
    if sys.platform == "win32":
        return "PATH"
    return "LD_LIBRARY_PATH"


def machine_arch() -> str:
    """``x86_64`` or ``arm64`` for the machines bitnet.cpp has kernels for, else as reported."""
    if sys.platform == "win32":  # os.uname() does not exist there
        import platform

        machine = platform.machine()
    else:
        machine = os.uname().machine
    return _ARCH_ALIAS.get(machine, machine)
