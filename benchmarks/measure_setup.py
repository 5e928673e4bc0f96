# /// script
# requires-python = ">=3.10"
# ///
"""Measure the start-up cost of the tasks, side by side in one run, and print the figures.

1. `invoke preflight --backend llama` with the backend present, as a ratio to a bare
   `python -c "import invoke"` (runs interleaved, medians compared): the answer a clean pass
   remembered, and with `--verbose` the full check (as on the first run after a change). In
   the same loop, each also as a ratio to `import invoke`: `invoke --list`, an empty invoke task (a temporary tasks.py
   with one no-op task: the floor any invoke command pays) and the console script's
   `bitnet-crossval preflight --backend llama` (run from a directory with no tasks.py).
2. `invoke setup-cpp-auto --backend llama` when there is nothing to do.
3. A cold `setup-cpp-auto` of a llama.cpp source tree, as a ratio to a plain
   `cmake -S/-B` + `cmake --build` of the same tree with the same flags and target.

Every interpreter finds its bytecode in a private directory (PYTHONPYCACHEPREFIX), even where
PYTHONDONTWRITEBYTECODE is set: the suite's modules are compiled into it first, as pip compiles
an installed package (invoke turns bytecode writing off before it loads a task collection, so no
invoke run ever writes the suite's .pyc files), and one untimed round fills in the rest. In the
same loop `invoke preflight` also runs against a second directory holding no bytecode of the
suite's modules: a checkout where nothing else has imported them compiles them on every run.
When DIR is named ``bitnet``, `invoke preflight` also runs without BITNET_CACHE_DIR, finding DIR
as the default root ($XDG_CACHE_HOME/bitnet), as a user who never set the variable does.
--no-bytecode-cache measures with the environment as it is instead.

Usage: python benchmarks/measure_setup.py --cache DIR [--runs 15] [--source TREE] [--skip-cold]
DIR must hold a llama.cpp install made by the suite (e.g. after `invoke preflight --repair auto`
with BITNET_CACHE_DIR=DIR); TREE defaults to the source tree that install was built from.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.measured import with_bytecode_cache  # noqa: E402
from bitnet_crossval.provision.recipes import LLAMA_CMAKE_ARGS  # noqa: E402
from bitnet_crossval.store.layout import APP_NAME  # noqa: E402


def timed(cmd: list[str], env: dict[str, str], cwd: Path = REPO) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def _source_tree(cache: Path) -> Path:
    candidates = sorted(cache.glob("sources/*/**/include/llama.h"), key=lambda p: len(p.parts))
    if not candidates:
        raise SystemExit(f"no llama.cpp source tree under {cache}/sources; pass --source")
    return candidates[0].parent.parent


def _plain_cmake(source: Path) -> float:
    """What a person would type: configure and build the same target with the same flags."""
    with tempfile.TemporaryDirectory() as tmp:
        build = Path(tmp) / "build"
        started = time.perf_counter()
        for cmd in (
            ["cmake", "-S", str(source), "-B", str(build), "-G", "Ninja", *LLAMA_CMAKE_ARGS],
            ["cmake", "--build", str(build), "--target", "llama", "-j", str(os.cpu_count() or 1)],
        ):
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - started


def _cold_setup(source: Path, env: dict[str, str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cold_env = {**env, "BITNET_CACHE_DIR": str(Path(tmp) / "cache"), "LLAMA_CPP_SOURCE": str(source)}
        return timed([sys.executable, "-m", "invoke", "setup-cpp-auto", "--backend", "llama"], cold_env)


EMPTY_TASKS = """\
from invoke import task


@task
def noop(c):
    pass
"""


def _console_script() -> str:
    """The suite's console script beside this interpreter, else the one on PATH."""
    found = shutil.which("bitnet-crossval", path=str(Path(sys.executable).parent)) or shutil.which("bitnet-crossval")
    if found is None:
        raise SystemExit("no bitnet-crossval console script: install the suite (pip install -e .)")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--source", type=Path)
    parser.add_argument("--skip-cold", action="store_true")
    parser.add_argument("--cold-rounds", type=int, default=2)
    parser.add_argument("--no-bytecode-cache", action="store_true", help="leave PYTHONDONTWRITEBYTECODE as it is")
    args = parser.parse_args()

    scratch = tempfile.TemporaryDirectory(prefix="measure-setup-")
    scratch_dir = Path(scratch.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BITNET_", "LLAMA_CPP_"))}
    env.pop("CI", None)
    env.update(BITNET_CACHE_DIR=str(args.cache.resolve()), NO_COLOR="1")
    if not args.no_bytecode_cache:
        env = with_bytecode_cache(env, scratch_dir / "pycache")
    py = sys.executable
    bare_env = dict(env)  # a checkout: the suite's own modules are compiled on every run
    if not args.no_bytecode_cache:
        bare_env["PYTHONPYCACHEPREFIX"] = str(scratch_dir / "pycache-checkout")
    empty_project = scratch_dir / "empty-project"  # tasks.py with one no-op task
    empty_project.mkdir()
    (empty_project / "tasks.py").write_text(EMPTY_TASKS, encoding="utf-8")
    elsewhere = scratch_dir / "elsewhere"  # no tasks.py: the console script needs none
    elsewhere.mkdir()

    # name -> (command, working directory, environment); run interleaved, one of each per round.
    commands: dict[str, tuple[list[str], Path, dict[str, str]]] = {
        "import_invoke": ([py, "-c", "import invoke"], REPO, env),
        "invoke_list": ([py, "-m", "invoke", "--list"], REPO, env),
        "empty_task": ([py, "-m", "invoke", "noop"], empty_project, env),
        "preflight_present": ([py, "-m", "invoke", "preflight", "--backend", "llama"], REPO, env),
        "console_preflight_present": ([_console_script(), "preflight", "--backend", "llama"], elsewhere, env),
        # --verbose never takes a remembered answer: the full check, as on the first run after a change
        "preflight_checked_in_full": ([py, "-m", "invoke", "preflight", "--backend", "llama", "--verbose"], REPO, env),
        "setup_noop": ([py, "-m", "invoke", "setup-cpp-auto", "--backend", "llama"], REPO, env),
    }
    if not args.no_bytecode_cache:
        commands["preflight_checkout"] = ([py, "-m", "invoke", "preflight", "--backend", "llama"], REPO, bare_env)
    cache = args.cache.resolve()
    if cache.name == APP_NAME:  # the same cache found as a user's default root: $XDG_CACHE_HOME/bitnet
        default_root_env = {k: v for k, v in env.items() if k != "BITNET_CACHE_DIR"}
        default_root_env["XDG_CACHE_HOME"] = str(cache.parent)
        commands["preflight_default_root"] = (
            [py, "-m", "invoke", "preflight", "--backend", "llama"],
            REPO,
            default_root_env,
        )

    def run_one(name: str) -> float:
        cmd, cwd, cmd_env = commands[name]
        return timed(cmd, cmd_env, cwd)

    for name in commands:  # untimed: fills the bytecode caches, warms the page cache
        run_one(name)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name in commands:
            times[name].append(run_one(name))
    figures: dict[str, float] = {f"{name}_median_s": statistics.median(values) for name, values in times.items()}
    figures["setup_noop_max_s"] = max(times["setup_noop"])
    bare = figures["import_invoke_median_s"]
    for name in (
        "invoke_list",
        "empty_task",
        "preflight_present",
        "console_preflight_present",
        "preflight_checked_in_full",
        "preflight_checkout",
        "preflight_default_root",
    ):
        if name in times:
            figures[f"{name}_ratio_to_import_invoke"] = figures[f"{name}_median_s"] / bare
    figures["preflight_present_ratio_to_empty_task"] = (
        figures["preflight_present_median_s"] / figures["empty_task_median_s"]
    )

    if not args.skip_cold:
        source = args.source or _source_tree(args.cache)
        plain_times, setup_times = [], []
        for _ in range(args.cold_rounds):  # alternate, so drift in machine speed hits both sides
            plain_times.append(_plain_cmake(source))
            setup_times.append(_cold_setup(source, env))
        figures["plain_cmake_cold_s"] = statistics.median(plain_times)
        figures["setup_cold_s"] = statistics.median(setup_times)
        figures["setup_cold_ratio_to_plain_cmake"] = sum(setup_times) / sum(plain_times)

    bytecode = "no bytecode cache" if args.no_bytecode_cache else "bytecode cached"
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {args.runs} runs each, {bytecode}")
    for key, value in figures.items():
        print(f"{key:50s} {value:8.3f}")
    scratch.cleanup()


if __name__ == "__main__":
    main()
