"""invoke setup-cpp-auto: fetch, build and install a backend into the cache."""

from __future__ import annotations

from bitnet_crossval.provision.options import EMIT, FORCE, JOBS, REF, SETUP_BACKEND, SOURCE
from bitnet_crossval.util import stdio, ui
from bitnet_crossval.util.options import FORMAT, VERBOSE, OptionValues

from ._runner import print_json, suite_context, suite_task


@suite_task(options=(SETUP_BACKEND, SOURCE, REF, FORCE, EMIT, JOBS, FORMAT, VERBOSE))
def setup_cpp_auto(values: OptionValues) -> None:
    """Get a backend's source, build it with CMake and install it into the cache."""
    import os

    from bitnet_crossval.backends.platform import library_path_variable
    from bitnet_crossval.backends.specs import SPECS, spec_for
    from bitnet_crossval.errors import BadInput
    from bitnet_crossval.provision import install
    from bitnet_crossval.provision.emit import emit_lines

    backend = values[SETUP_BACKEND]
    source = values[SOURCE] or None
    specs = list(SPECS.values()) if backend == "all" else [spec_for(backend)]
    if source and len(specs) > 1:
        raise BadInput(
            "--source names one backend's source", next_step="use --backend llama or --backend bitnet with --source"
        )
    if values[EMIT] is not None and values[FORMAT] == "json":
        raise BadInput(
            "--emit and --format json both want stdout", next_step="pass one of them: --emit for a shell to eval"
        )
    ctx = suite_context()
    results = [
        install.setup_backend(
            spec,
            cache=ctx.cache,
            env=ctx.env,
            source_text=source,
            ref=values[REF] or None,
            force=values[FORCE],
            jobs=values[JOBS] or None,
            detector=ctx.detector,
        )
        for spec in specs
    ]
    shell = values[EMIT]
    if shell is not None:
        set_vars = {spec.dir_env: str(result.install_dir) for spec, result in zip(specs, results, strict=True)}
        lib_dirs = os.pathsep.join(str(result.lib_dir) for result in results)
        lines = emit_lines(shell, set_vars=set_vars, prepend_paths={library_path_variable(): lib_dirs})
        if not stdio.write_stdout("\n".join(lines) + "\n"):
            ui.warn("stdout is closed or cannot be written, so the --emit lines were not printed")
    if values[FORMAT] == "json":
        print_json({"command": "setup-cpp-auto", "ok": True, "installs": [result.to_json() for result in results]})
