"""One command run in a fresh interpreter that reports its wall time, CPU time and peak RSS.

``run_measured(cmd, env)`` starts ``python -m benchmarks.measured SPEC`` from the repository's
root, which runs ``cmd`` and prints the figures as JSON: RUSAGE_CHILDREN in that interpreter
covers the command and everything it waited for, and nothing of the benchmark that asked.
Shared by the benchmarks that time whole commands (measure_crossval.py, measure_long_context.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Container
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def measured_child(spec_path: str) -> None:
    """In the fresh interpreter: run the command the spec names and print its figures."""
    import resource

    spec = json.loads(Path(spec_path).read_text())
    started = time.perf_counter()
    done = subprocess.run(spec["cmd"], cwd=REPO, env=spec["env"], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        json.dumps(
            {
                "wall_s": wall,
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "maxrss_kib": usage.ru_maxrss,
                "returncode": done.returncode,
                "stdout": done.stdout,
                "stderr_tail": done.stderr[-3000:],
            }
        )
    )


def with_bytecode_cache(env: dict[str, str], prefix: Path) -> dict[str, str]:
    """``env`` with the suite's modules compiled into ``prefix`` (PYTHONPYCACHEPREFIX) and
    bytecode writing back on, as pip compiles an installed package: where PYTHONDONTWRITEBYTECODE
    is set, every run of a checkout would otherwise compile them again (invoke turns bytecode
    writing off before it loads a task collection, so no invoke run writes them)."""
    cached = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cached["PYTHONPYCACHEPREFIX"] = str(prefix)
    compile_suite(cached)
    return cached


def compile_suite(env: dict[str, str] | None = None) -> None:
    """Compile the suite's modules, as pip compiles an installed package: beside their sources,
    or where ``env``'s PYTHONPYCACHEPREFIX says.

    Where PYTHONDONTWRITEBYTECODE is set, a checkout would otherwise compile them on every run;
    a private PYTHONPYCACHEPREFIX is no cure for a command that imports numpy and rich (every
    module then looks there, and invoke turns bytecode writing off before it loads a task
    collection, so what the tasks import would be compiled on every run instead)."""
    package = REPO / "bitnet_crossval"
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(package)], env=env, check=True, stdout=subprocess.DEVNULL
    )


def run_measured(cmd: list[str], env: dict[str, str], *, passing: Container[int] = (0,)) -> dict[str, Any]:
    """The figures of ``cmd`` run once (``document``: its JSON output); a return code not in
    ``passing`` ends the benchmark with the command's output."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as spec:
        json.dump({"cmd": cmd, "env": env}, spec)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.measured", spec.name],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    finally:
        os.unlink(spec.name)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    if result["returncode"] not in passing:
        raise SystemExit(f"{' '.join(cmd)} exited {result['returncode']}:\n{result['stderr_tail']}")
    result["document"] = json.loads(result.pop("stdout"))
    return result


if __name__ == "__main__":
    measured_child(sys.argv[1])
