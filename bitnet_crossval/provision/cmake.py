"""Configure, build and install a CMake project, with progress on stderr and a full log on disk."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bitnet_crossval.errors import BuildFailed, CommandFailed, ProgramNotFound
from bitnet_crossval.store.sources import read_cmake_cache
from bitnet_crossval.util import proc, ui
from bitnet_crossval.util.files import ensure_writable, make_dir, remove_tree, write_text

# Ninja prints "[12/345] Building ...", Make prints "[ 42%] Building ...".
_NINJA_STEP = re.compile(r"^\[(\d+)/(\d+)\]", re.MULTILINE)
_MAKE_PERCENT = re.compile(r"^\[\s*(\d+)%\]")

BUILD_OK_STAMP = ".bitnet-suite-build-ok"
# The process group of the CMake step running in a build tree (see proc.stop_group_in).
BUILD_GROUP_FILE = ".bitnet-suite-build.pgid"


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
        """The generator of an existing build tree (CMake refuses to switch one in place), else
        the preferred one; see :func:`prepare_build_dir` for when a tree is started over."""
        return read_cmake_cache(self.build_dir).get("CMAKE_GENERATOR") or preferred_generator(self.env)


# The program each generator runs; a tree whose generator's program is gone must start over.
_GENERATOR_PROGRAMS = {"Ninja": "ninja", "Ninja Multi-Config": "ninja", "Unix Makefiles": "make"}


def preferred_generator(env: Mapping[str, str]) -> str | None:
    """Ninja when the child's PATH has it; otherwise CMake's default (None)."""
    return "Ninja" if shutil.which("ninja", path=env.get("PATH", os.defpath)) else None


def prepare_build_dir(project: CMakeProject) -> None:
    """Start the build tree over when it cannot be reused, else keep it (incremental builds).

    One policy for every CMake build the suite runs: a tree keeps its generator, unless that
    generator's program is no longer on PATH; a tree copied or moved from elsewhere (its
    CMakeCache.txt names another directory, which CMake refuses) is started over.
    """
    # A build whose parent was killed may still be compiling here; it must stop before we start.
    proc.stop_group_in(project.build_dir / BUILD_GROUP_FILE)
    cached = read_cmake_cache(project.build_dir)
    if not cached:
        make_dir(project.build_dir)
        ensure_writable(project.build_dir)
        return
    reason = None
    recorded_dir = cached.get("CMAKE_CACHEFILE_DIR")
    if recorded_dir and Path(recorded_dir).resolve() != project.build_dir.resolve():
        reason = f"it was configured in {recorded_dir} and then moved or copied"
    recorded_source = cached.get("CMAKE_HOME_DIRECTORY")
    if recorded_source and Path(recorded_source).resolve() != project.source_dir.resolve():
        reason = f"it was configured from the sources in {recorded_source}"
    generator = cached.get("CMAKE_GENERATOR", "")
    program = _GENERATOR_PROGRAMS.get(generator)
    if program and not shutil.which(program, path=project.env.get("PATH", os.defpath)):
        reason = f"it was configured for {generator} and `{program}` is no longer on PATH"
    if reason:
        ui.debug(f"starting {project.build_dir} over: {reason}")
        remove_tree(project.build_dir)
    make_dir(project.build_dir)
    ensure_writable(project.build_dir)


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
    # --config matters only to multi-config generators (Visual Studio, Xcode).
    return [*args, "--config", "Release"]


def configure(project: CMakeProject, *, log_path: Path, what: str) -> None:
    _step(configure_args(project), project=project, log_path=log_path, stage="configure", what=what)


def build(project: CMakeProject, *, log_path: Path, what: str, show_progress: bool = True) -> bool:
    """Build the project's targets; return whether anything was compiled."""
    if not show_progress:
        output = _step(build_args(project), project=project, log_path=log_path, stage="build", what=what)
        return bool(_NINJA_STEP.search(output) or "Building" in output or "Linking" in output)
    return _build_with_progress(project, log_path=log_path, what=what)


def configure_and_build(project: CMakeProject, *, log_path: Path, what: str) -> bool:
    """Configure and build; return whether anything was compiled (False: already up to date)."""
    prepare_build_dir(project)
    stamp = project.build_dir / BUILD_OK_STAMP
    if (project.build_dir / "CMakeCache.txt").exists() and not stamp.exists() and project.generator != "Ninja":
        # Make trusts timestamps, and a compiler killed mid-write leaves a fresh, broken
        # object file behind; Ninja's build log catches that, Make would not.
        remove_tree(project.build_dir)
        make_dir(project.build_dir)
    remove_tree(stamp)
    configure(project, log_path=log_path, what=what)
    did_work = _build_with_progress(project, log_path=log_path, what=what)
    write_text(stamp, "ok\n")
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


_STAGE_VERBS = {"configure": "configuring", "build": "compiling", "install": "installing"}


def _step(
    args: list[str],
    *,
    project: CMakeProject,
    log_path: Path,
    stage: str,
    what: str,
    on_line: proc.LineCallback | None = None,
) -> str:
    try:
        group_file = project.build_dir / BUILD_GROUP_FILE if project.build_dir.is_dir() else None
        return proc.run(args, env=project.env, log_path=log_path, on_line=on_line, group_file=group_file).output
    except ProgramNotFound as exc:
        raise BuildFailed(
            f"cannot {stage} {what}: `{exc.program}` is not installed",
            next_step="install CMake and a C++ compiler (apt-get install cmake ninja-build g++) and rerun",
        ) from exc
    except CommandFailed as exc:
        ui.say(exc.output_tail.rstrip(), "error")
        raise BuildFailed(
            f"{_STAGE_VERBS[stage]} {what} failed (CMake exit code {exc.returncode})",
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
