"""What building microsoft/BitNet (bitnet.cpp) takes beyond a plain CMake build.

Its ``setup_env.py`` does, in order: generate the LUT kernel header
(``utils/codegen_tl2.py`` on x86_64, ``codegen_tl1.py`` on arm64, or a copy from
``preset_kernels/``), configure CMake with clang (its CMakeLists refuses anything else), build,
then convert a model. The suite does the same minus the model, builds only the libraries, and
copies them out of the build tree itself: the project's install rule is broken, and there is no
``libbitnet`` (the kernels are compiled into ``libggml``).
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

from bitnet_crossval.backends.platform import machine_arch
from bitnet_crossval.errors import BadInput, BuildFailed, CommandFailed, SuiteError
from bitnet_crossval.provision import cmake
from bitnet_crossval.util import proc, ui
from bitnet_crossval.util.files import copy_file, make_dir

MIN_CLANG = 18

KERNEL_HEADER = Path("include") / "bitnet-lut-kernels.h"
# The tiling setup_env.py uses for BitNet-b1.58-2B-4T (it reuses the bitnet_b1_58-3B shapes).
KERNEL_MODEL = "bitnet_b1_58-3B"
_CODEGEN = {
    "x86_64": ("utils/codegen_tl2.py", "tl2", ["--BM", "160,320,320", "--BK", "96,96,96", "--bm", "32,32,32"]),
    "arm64": ("utils/codegen_tl1.py", "tl1", ["--BM", "160,320,320", "--BK", "64,128,64", "--bm", "32,64,32"]),
}
_VERSION = re.compile(r"clang version (\d+)")


def find_clang(env: Mapping[str, str]) -> tuple[str, str, int]:
    """(C compiler, C++ compiler, major version) of a clang >= 18 on the child's PATH."""
    path = env.get("PATH", "")
    names = [("clang", "clang++")] + [(f"clang-{v}", f"clang++-{v}") for v in range(30, 13, -1)]
    seen: list[str] = []
    for cc, cxx in names:
        cc_path, cxx_path = shutil.which(cc, path=path), shutil.which(cxx, path=path)
        if not cc_path or not cxx_path:
            continue
        try:
            version = proc.run([cxx_path, "--version"]).output
        except SuiteError:
            continue
        match = _VERSION.search(version)
        major = int(match.group(1)) if match else 0
        if major >= MIN_CLANG:
            return cc_path, cxx_path, major
        seen.append(f"{cxx} {major}")
    found = f" (found only {', '.join(seen)})" if seen else ""
    raise BuildFailed(
        f"bitnet.cpp must be compiled with clang >= {MIN_CLANG}, and none is on PATH{found}",
        next_step="install clang (apt-get install clang-19) and rerun",
    )


def prepare_source(source_dir: Path, env: Mapping[str, str], log_path: Path) -> None:
    """Check the submodule and make sure the generated kernel header exists."""
    if not (source_dir / "3rdparty" / "llama.cpp" / "CMakeLists.txt").exists():
        raise BadInput(
            f"{source_dir} has no 3rdparty/llama.cpp: the llama.cpp submodule of bitnet.cpp is missing",
            next_step="run `git submodule update --init --recursive` in that checkout and rerun",
        )
    header = source_dir / KERNEL_HEADER
    if header.exists():
        return
    arch = machine_arch()
    script, kind, tiling = _CODEGEN.get(arch, _CODEGEN["x86_64"])
    if (source_dir / script).exists():
        ui.say(f"generating {KERNEL_HEADER} with {script} ({KERNEL_MODEL})")
        try:
            proc.run(
                [sys.executable, script, "--model", KERNEL_MODEL, *tiling],
                cwd=source_dir,
                env=env,
                log_path=log_path,
            )
        except CommandFailed as exc:
            ui.warn(f"{script} failed (exit code {exc.returncode}); using the preset kernels instead")
    if header.exists():
        return
    preset = source_dir / "preset_kernels" / KERNEL_MODEL / f"bitnet-lut-kernels-{kind}.h"
    if not preset.exists():
        raise BuildFailed(
            f"cannot provide {KERNEL_HEADER}: {script} did not write it and {preset} does not exist",
            log_path=log_path,
            next_step="check that the source is a complete microsoft/BitNet checkout",
        )
    ui.say(f"copying {preset.relative_to(source_dir)} to {KERNEL_HEADER}")
    make_dir(header.parent)
    copy_file(preset, header)


def stage_from_build_tree(project: cmake.CMakeProject, staging: Path, log_path: Path) -> None:
    """Copy libllama, the libggml* libraries and the public headers into staging/{lib,include}."""
    lib, include = staging / "lib", staging / "include"
    make_dir(lib)
    make_dir(include)
    copied = 0
    for pattern in ("libllama.so*", "libggml*.so*", "libllama.dylib", "libggml*.dylib"):
        for found in sorted(project.build_dir.rglob(pattern)):
            if "CMakeFiles" in found.parts or (lib / found.name).exists():
                continue
            copy_file(found, lib / found.name, keep_symlink=True)
            copied += 1
    llama_cpp = project.source_dir / "3rdparty" / "llama.cpp"
    for header_dir in (llama_cpp / "include", llama_cpp / "ggml" / "include", project.source_dir / "include"):
        for header in sorted(header_dir.glob("*.h")) if header_dir.is_dir() else []:
            if not (include / header.name).exists():
                copy_file(header, include / header.name)
    with log_path.open("a", encoding="utf-8") as log:
        log.write(f"staged {copied} libraries from {project.build_dir} into {lib}\n")
