# /// script
# requires-python = ">=3.10"
# ///
"""Measure `invoke crossval-suite` with --jobs 1 and --jobs 2 on the same cases, side by side, and
print the figures.

The cases: synthetic llama, gemma3 and bitnet models x 2 prompts x the candidates numpy and
llama, 4 generated tokens each (12 cases). Each round runs the suite once with --jobs 1 and once
with --jobs 2, in alternating order (so a change in the machine's load falls on both), each with
--fresh (every case runs; nothing is reused) and --repair never, in a fresh process started the
way a user starts it (`python -m invoke` from the repository root), OPENBLAS_NUM_THREADS=1. For
each run: the wall-clock time of the command, the sum of its cases' own seconds, the load
average when it started; then the medians and the ratio jobs-2 / jobs-1 of each round.

Usage: BITNET_CACHE_DIR=DIR python benchmarks/measure_suite.py [--rounds 2] [--json FILE]
DIR must hold the llama backend with its shim (the synthetic models are written into it on first
use; the cases' results go to DIR/results and are replaced by every run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FLAGS = ("--repair", "never", "--format", "json")
WARM_UP = """\
[matrix]
model = ["synthetic:llama", "synthetic:gemma3", "synthetic:bitnet"]
prompt = ["warm up"]
candidate = ["llama"]
max-tokens = [0]
"""
CASES = """\
[suite]
name = "benchmark"

[defaults]
max-tokens = 4

[matrix]
model = ["synthetic:llama", "synthetic:gemma3", "synthetic:bitnet"]
prompt = ["The capital of France is", "Once upon a time there was"]
candidate = ["numpy", "llama"]
"""


def run_suite(cases: Path, jobs: int, env: dict[str, str]) -> dict[str, Any]:
    load = os.getloadavg()[0]
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "invoke", "crossval-suite", str(cases), "--jobs", str(jobs), "--fresh", *FLAGS],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the suite with --jobs {jobs} exited {done.returncode}:\n{done.stderr[-3000:]}")
    document = json.loads(done.stdout)
    assert document["cached"] == 0 and document["jobs"] == jobs, document["jobs"]
    return {
        "jobs": jobs,
        "wall_s": wall,
        "cases_s": document["timings"]["cases"],
        "n_cases": len(document["cases"]),
        "load_at_start": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if not os.environ.get("BITNET_CACHE_DIR"):
        raise SystemExit("set BITNET_CACHE_DIR to a cache that holds the llama backend and its shim")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "NO_COLOR": "1"}
    env.pop("CI", None)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="suite-bench-") as tmp:
        cases = Path(tmp) / "cases.toml"
        cases.write_text(CASES)
        warm_up = Path(tmp) / "warm-up.toml"
        warm_up.write_text(WARM_UP)
        # The synthetic models are written, and the files read once, outside the measurements.
        run_suite(warm_up, 2, env)
        for round_number in range(args.rounds):
            order = (1, 2) if round_number % 2 == 0 else (2, 1)
            for jobs in order:
                run = run_suite(cases, jobs, env)
                run["round"] = round_number
                runs.append(run)
                print(
                    f"round {round_number + 1}, --jobs {jobs}: {run['wall_s']:.1f} s wall for {run['n_cases']} cases "
                    f"(cases' own seconds summed: {run['cases_s']:.1f}; load average {run['load_at_start']:.1f})",
                    flush=True,
                )
    one = [r["wall_s"] for r in runs if r["jobs"] == 1]
    two = [r["wall_s"] for r in runs if r["jobs"] == 2]
    ratios = [
        next(r["wall_s"] for r in runs if r["jobs"] == 2 and r["round"] == n)
        / next(r["wall_s"] for r in runs if r["jobs"] == 1 and r["round"] == n)
        for n in range(args.rounds)
    ]
    summary = {
        "cores": len(os.sched_getaffinity(0)),
        "jobs1_wall_median_s": statistics.median(one),
        "jobs2_wall_median_s": statistics.median(two),
        "ratio_jobs2_over_jobs1_per_round": ratios,
        "runs": runs,
    }
    print(
        f"--jobs 1: median {summary['jobs1_wall_median_s']:.1f} s; "
        f"--jobs 2: median {summary['jobs2_wall_median_s']:.1f} s; "
        f"jobs 2 / jobs 1 per round: {', '.join(f'{r:.2f}' for r in ratios)} ({summary['cores']} cores)"
    )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
