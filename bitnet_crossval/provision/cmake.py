"""Configure, build and install a CMake project, with progress on stderr and a full log on disk."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bitnet_crossval.errors import BuildFailed, CommandFailed, ProgramNotFound
from bitnet_crossval.util import proc, ui

# Ninja prints "[12/345] Building ...", Make prints "[ 42%] Building ...".
_NINJA_STEP = re.compile(r"^\[(\d+)/(\d+)\]")
_MAKE_PERCENT = re.compile(r"^\[\s*(\d+)%\]")

BUILD_OK_STAMP = ".bitnet-suite-build-ok"


@dataclass(frozen=True, kw_only=True)
class CMakeProject:
    source_dir: Path
    build_dir: Path
    cmake_args: Sequence[str] = ()
    targets: Sequence[str] = ()
    jobs: int | None = None
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))

    @property
    def generator(self) -> str | None:
        # Keep whatever generator an existing build dir was configured with: CMake refuses to switch.
        return read_cache(self.build_dir).get("CMAKE_GENERATOR") or preferred_generator(self.env)


def preferred_generator(env: Mapping[str, str]) -> str | None:
    """Ninja when the child's PATH has it; otherwise CMake's default (None)."""
    return "Ninja" if shutil.which("ninja", path=env.get("PATH", os.defpath)) else None


def read_cache(build_dir: Path) -> dict[str, str]:
    """The entries of ``build_dir``'s CMakeCache.txt by name (types dropped); empty if none."""
    entries: dict[str, str] = {}
    try:
        text = (build_dir / "CMakeCache.txt").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return entries
    for line in text.splitlines():
        if not line or line.startswith(("#", "//")) or "=" not in line:
            continue
        key_and_type, value = line.split("=", 1)
        entries[key_and_type.split(":", 1)[0]] = value
    return entries


def configure_args(project: CMakeProject) -> list[str]:
    args = ["cmake", "-S", str(project.source_dir), "-B", str(project.build_dir)]
    generator = project.generator
    if generator and not (project.build_dir / "CMakeCache.txt").exists():
        args += ["-G", generator]
    return args + list(project.cmake_args)


def build_args(project: CMakeProject) -> list[str]:
    args = ["cmake", "--build", str(project.build_dir)]
    if project.targets:
        args += ["--target", *project.targets]
    args += ["-j", str(project.jobs or os.cpu_count() or 1)]
    return args


def configure_and_build(project: CMakeProject, *, log_path: Path, what: str) -> bool:
    """Configure and build; return whether anything was compiled (False: already up to date)."""
    stamp = project.build_dir / BUILD_OK_STAMP
    if project.build_dir.exists() and not stamp.exists() and project.generator != "Ninja":
        # Make trusts timestamps, and a compiler killed mid-write leaves a fresh, broken
        # object file behind; Ninja's build log catches that, Make would not.
        shutil.rmtree(project.build_dir)
    project.build_dir.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    _step(configure_args(project), project=project, log_path=log_path, stage="configure", what=what)
    did_work = _build_with_progress(project, log_path=log_path, what=what)
    stamp.write_text("ok\n", encoding="utf-8")
    return did_work


def install(project: CMakeProject, *, prefix: Path, log_path: Path, what: str) -> None:
    args = ["cmake", "--install", str(project.build_dir), "--prefix", str(prefix)]
    _step(args, project=project, log_path=log_path, stage="install", what=what)


def _build_with_progress(project: CMakeProject, *, log_path: Path, what: str) -> bool:
    compiled = False
    with ui.progress(f"building {what}") as bar:

        def on_line(line: str) -> None:
            nonlocal compiled
            if m := _NINJA_STEP.match(line):
                compiled = True
                bar.advance_to(int(m.group(1)), int(m.group(2)))
            elif m := _MAKE_PERCENT.match(line):
                compiled = compiled or "Building" in line or "Linking" in line
                bar.advance_to(int(m.group(1)), 100)

        _step(build_args(project), project=project, log_path=log_path, stage="build", what=what, on_line=on_line)
    return compiled


def _step(
    args: list[str],
    *,
    project: CMakeProject,
    log_path: Path,
    stage: str,
    what: str,
    on_line: proc.LineCallback | None = None,
) -> None:
    try:
        proc.run(args, env=project.env, log_path=log_path, on_line=on_line)
    except ProgramNotFound as exc:
        raise BuildFailed(
            f"cannot {stage} {what}: `{exc.program}` is not installed",
            next_step="install CMake and a C++ compiler (apt-get install cmake ninja-build g++) and rerun",
        ) from exc
    except CommandFailed as exc:
        ui.say(exc.output_tail.rstrip(), "error")
        raise BuildFailed(
            f"CMake {stage} of {what} failed (exit code {exc.returncode})",
            log_path=log_path,
            next_step=_next_step_for(stage, exc.output_tail),
        ) from exc


def _next_step_for(stage: str, tail: str) -> str:
    lowered = tail.lower()
    if "no cmake_cxx_compiler could be found" in lowered or "no cmake_c_compiler" in lowered:
        return "install a C and C++ compiler (apt-get install build-essential) and rerun"
    if "clang is required" in lowered:
        return "install clang (apt-get install clang-19) and rerun"
    if stage == "configure":
        return "read the CMake error in the log; check the source tree and the CMake version (>= 3.22)"
    return "read the compiler error in the log; rerun with --jobs 1 to see the first error in order"


def flags_summary(cmake_args: Sequence[str]) -> list[str]:
    """The -D flags, as recorded in install markers and the constants file."""
    return [arg for arg in cmake_args if arg.startswith("-D")]
