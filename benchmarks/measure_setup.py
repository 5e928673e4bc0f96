# /// script
# requires-python = ">=3.10"
# ///
"""Measure what issue 2 asks for, side by side in one run, and print the figures.

1. `invoke preflight --backend llama` with the backend present, as a ratio to a bare
   `python -c "import invoke"` (runs interleaved, medians compared).
2. `invoke setup-cpp-auto --backend llama` when there is nothing to do.
3. A cold `setup-cpp-auto` of a llama.cpp source tree, as a ratio to a plain
   `cmake -S/-B` + `cmake --build` of the same tree with the same flags and target.

Usage: python benchmarks/measure_setup.py --cache DIR [--runs 15] [--source TREE] [--skip-cold]
DIR must hold a llama.cpp install made by the suite (e.g. after `invoke preflight --repair auto`
with BITNET_CACHE_DIR=DIR); TREE defaults to the source tree that install was built from.
"""

from __future__ import annotations

import argparse
import json
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

from tasks.recipes import LLAMA_CMAKE_ARGS  # noqa: E402


def timed(cmd: list[str], env: dict[str, str], cwd: Path = REPO) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--source", type=Path)
    parser.add_argument("--skip-cold", action="store_true")
    args = parser.parse_args()

    env = {k: v for k, v in os.environ.items() if not k.startswith(("BITNET_", "LLAMA_CPP_"))}
    env.pop("CI", None)
    env.update(BITNET_CACHE_DIR=str(args.cache.resolve()), NO_COLOR="1")
    py = sys.executable

    bare, preflight, noop = [], [], []
    for _ in range(args.runs):
        bare.append(timed([py, "-c", "import invoke"], env))
        preflight.append(timed([py, "-m", "invoke", "preflight", "--backend", "llama"], env))
        noop.append(timed([py, "-m", "invoke", "setup-cpp-auto", "--backend", "llama"], env))
    figures: dict[str, float] = {
        "import_invoke_median_s": statistics.median(bare),
        "preflight_present_median_s": statistics.median(preflight),
        "setup_noop_median_s": statistics.median(noop),
        "setup_noop_max_s": max(noop),
    }
    figures["preflight_ratio_to_import_invoke"] = (
        figures["preflight_present_median_s"] / figures["import_invoke_median_s"]
    )

    if not args.skip_cold:
        marker = json.loads((args.cache / "installs" / "llama" / ".bitnet-suite-install.json").read_text())
        source = args.source or Path(marker["source"].get("path") or marker["build_dir"])
        if not (source / "CMakeLists.txt").exists():
            candidates = sorted(args.cache.glob("sources/*/**/include/llama.h"), key=lambda p: len(p.parts))
            source = candidates[0].parent.parent
        jobs = str(os.cpu_count() or 1)
        with tempfile.TemporaryDirectory() as tmp:
            plain_build = Path(tmp) / "plain"
            started = time.perf_counter()
            subprocess.run(
                ["cmake", "-S", str(source), "-B", str(plain_build), "-G", "Ninja", *LLAMA_CMAKE_ARGS],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            subprocess.run(
                ["cmake", "--build", str(plain_build), "--target", "llama", "-j", jobs],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            figures["plain_cmake_cold_s"] = time.perf_counter() - started
            shutil.rmtree(plain_build)
            cold_env = {**env, "BITNET_CACHE_DIR": str(Path(tmp) / "cache"), "LLAMA_CPP_SOURCE": str(source)}
            figures["setup_cold_s"] = timed([py, "-m", "invoke", "setup-cpp-auto", "--backend", "llama"], cold_env)
        figures["setup_cold_ratio_to_plain_cmake"] = figures["setup_cold_s"] / figures["plain_cmake_cold_s"]

    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, {args.runs} runs each")
    for key, value in figures.items():
        print(f"{key:40s} {value:8.3f}")


if __name__ == "__main__":
    main()
