"""invoke setup-cpp-auto: fetch, build and install a backend into the cache."""

from __future__ import annotations

import os
import sys
from typing import Any

from invoke.tasks import task

from bitnet_crossval.backends.platform import library_path_variable
from bitnet_crossval.backends.specs import SPECS, spec_for
from bitnet_crossval.errors import BadInput

from ._runner import suite_context, suite_task


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
    jobs: str = "",
    verbose: bool = False,
) -> None:
    """Get a backend's source, build it with CMake and install it into the cache."""
    from bitnet_crossval.provision import install
    from bitnet_crossval.provision.cmake import parse_jobs
    from bitnet_crossval.provision.emit import emit_lines, parse_shell

    shell = parse_shell(emit) if emit else None
    parallel = parse_jobs(jobs)
    specs = list(SPECS.values()) if backend == "all" else [spec_for(backend)]
    if source and len(specs) > 1:
        raise BadInput(
            "--source names one backend's source", next_step="use --backend llama or --backend bitnet with --source"
        )
    ctx = suite_context()
    results = [
        install.setup_backend(
            spec,
            cache=ctx.cache,
            env=ctx.env,
            source_text=source or None,
            ref=ref or None,
            force=force,
            jobs=parallel,
            detector=ctx.detector,
        )
        for spec in specs
    ]
    if shell is not None:
        set_vars = {spec.dir_env: str(result.install_dir) for spec, result in zip(specs, results, strict=True)}
        lib_dirs = os.pathsep.join(str(result.lib_dir) for result in results)
        lines = emit_lines(shell, set_vars=set_vars, prepend_paths={library_path_variable(): lib_dirs})
        sys.stdout.write("\n".join(lines) + "\n")
