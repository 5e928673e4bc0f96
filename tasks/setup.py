"""invoke setup-cpp-auto: fetch, build and install a backend into the cache."""

from __future__ import annotations

import sys
from typing import Any

from invoke.tasks import task

from bitnet_crossval.backends.specs import SPECS, library_path_variable, spec_for
from bitnet_crossval.errors import BadInput

from ._runner import suite_context, suite_task

EMIT_SHELLS = ("sh", "fish", "pwsh", "cmd")


@task(
    help={
        "backend": "llama, bitnet, or all",
        "source": "a local directory, a git URL (URL@REF), a .tar.gz/.zip archive, or pypi (llama only); "
        "default: $LLAMA_CPP_SOURCE / $BITNET_CPP_SOURCE, else the pinned commit",
        "ref": "the git commit, tag or branch to build (overrides @REF)",
        "force": "rebuild and reinstall even when the install is up to date",
        "emit": "print only the shell lines that point a shell at the install: sh, fish, pwsh or cmd",
        "jobs": "parallel compile jobs (default: the number of CPUs)",
        "verbose": "show every command and a traceback on errors",
    }
)
@suite_task
def setup_cpp_auto(
    c: Any,
    backend: str = "llama",
    source: str = "",
    ref: str = "",
    force: bool = False,
    emit: str = "",
    jobs: int = 0,
    verbose: bool = False,
) -> None:
    """Get a backend's source, build it with CMake and install it into the cache."""
    if emit and emit not in EMIT_SHELLS:
        raise BadInput(
            f"--emit {emit!r} is not a shell I can write for", next_step=f"use one of: {', '.join(EMIT_SHELLS)}"
        )
    if jobs < 0:
        raise BadInput(f"--jobs {jobs} must be a positive number")
    names = list(SPECS) if backend == "all" else [spec_for(backend).name]
    if source and len(names) > 1:
        raise BadInput(
            "--source names one backend's source", next_step="use --backend llama or --backend bitnet with --source"
        )
    from bitnet_crossval.provision import install
    from bitnet_crossval.provision.emit import emit_lines

    ctx = suite_context()
    set_vars: dict[str, str] = {}
    lib_dirs: list[str] = []
    for name in names:
        spec = SPECS[name]
        result = install.setup_backend(
            spec,
            cache=ctx.cache,
            env=ctx.env,
            source_text=source or None,
            ref=ref or None,
            force=force,
            jobs=jobs or None,
        )
        set_vars[spec.dir_env] = str(result.install_dir)
        lib_dirs.append(str(result.lib_dir))
    if emit:
        sep = ";" if sys.platform == "win32" else ":"
        lines = emit_lines(emit, set_vars=set_vars, prepend_paths={library_path_variable(): sep.join(lib_dirs)})  # type: ignore[arg-type]
        sys.stdout.write("\n".join(lines) + "\n")
