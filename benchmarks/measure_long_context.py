# /// script
# requires-python = ">=3.10"
# ///
"""Measure long contexts: `invoke crossval-per-token` on Gemma 3 270M (Q4_K_M) at 256, 1,024 and
4,096 positions of real text, in one run, and print the figures.

Each length is one fresh process started as a user starts it (``python -m invoke`` from the
repository root): ``--model gemma3-270m --prompt-set classics --prompt-tokens N --max-tokens 0``
(the native reference unless --reference says otherwise, the NumPy candidate). For each: the
wall time, the time per position, the run's own phases from its JSON report (reference,
candidate, compare), and the peak RSS of the largest process of the command (RUSAGE_CHILDREN:
the crossval itself or the shim, whichever is larger), as a ratio to the model file and to the
peak at the first length. The verdict does
not matter here (the Q4_K_M reference against a float engine diverges on some of this text).

Usage: BITNET_CACHE_DIR=DIR python benchmarks/measure_long_context.py [--lengths 256,1024,4096] [--json FILE]
       [--reference native|auto|dequantized]
DIR must hold the llama backend with its shim and the fetched Gemma 3 270M (run
``invoke crossval-per-token --model gemma3-270m`` there once); nothing is repaired, built or
downloaded here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.measured import run_measured  # noqa: E402

PASSING_CODES = (0, 10)  # parity or a divergence: either way the command ran to the end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="256,1024,4096", help="positions per run (default 256,1024,4096)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--reference",
        choices=("native", "auto", "dequantized"),
        default="native",
        help="the crossval's --reference (default native: the model as given, one reference)",
    )
    args = parser.parse_args()
    if not os.environ.get("BITNET_CACHE_DIR"):
        raise SystemExit("set BITNET_CACHE_DIR to a cache with the llama backend and the fetched Gemma 3 270M")

    from bitnet_crossval.context import load_context
    from bitnet_crossval.crossval.models import GEMMA_FILE

    ctx = load_context()
    model = ctx.cache.model_file(GEMMA_FILE)
    if not model.is_file():
        raise SystemExit(f"{model} is missing: run `invoke crossval-per-token --model gemma3-270m` in this cache once")
    size = model.stat().st_size
    env = {**os.environ, "NO_COLOR": "1"}
    lengths = [int(n) for n in args.lengths.split(",")]

    runs: dict[int, dict[str, Any]] = {}
    for n in lengths:
        cmd = [sys.executable, "-m", "invoke", "crossval-per-token", "--repair", "never", "--model", "gemma3-270m"]
        cmd += ["--prompt-set", "classics", "--prompt-tokens", str(n), "--max-tokens", "0", "--format", "json"]
        cmd += ["--reference", args.reference]
        runs[n] = run_measured(cmd, env, passing=PASSING_CODES)
        print(f"measured {n} positions: {runs[n]['wall_s']:.1f} s", file=sys.stderr)

    first = lengths[0]
    base_rss = runs[first]["maxrss_kib"]
    print(
        f"model: {model.name}, {size / 2**20:.1f} MiB; --reference {args.reference}; "
        f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'positions':>9} {'wall s':>8} {'ms/pos':>8} {'reference':>10} {'candidate':>10} {'compare':>9} "
        f"{'peak RSS MiB':>13} {'x model':>8} {f'x at {first}':>9}  verdict"
    )
    figures = []
    for n, run in runs.items():
        t = run["document"]["timings"]
        doc = run["document"]
        assert doc["summary"]["n_positions"] == n, (n, doc["summary"]["n_positions"])
        rss = run["maxrss_kib"]
        row = {
            "positions": n,
            "wall_s": run["wall_s"],
            "ms_per_position": 1000 * run["wall_s"] / n,
            "reference_s": t.get("reference", 0.0),
            "candidate_s": t.get("candidate", 0.0),
            "compare_s": t.get("compare", 0.0),
            "peak_rss_bytes": rss * 1024,
            "rss_over_model": rss * 1024 / size,
            "rss_over_first": rss / base_rss,
            "verdict": doc["verdict"],
            "max_kl": doc["summary"]["max_kl"],
        }
        figures.append(row)
        print(
            f"{n:>9} {row['wall_s']:>8.1f} {row['ms_per_position']:>8.1f} {row['reference_s']:>10.1f} "
            f"{row['candidate_s']:>10.1f} {row['compare_s']:>9.1f} {rss / 1024:>13.0f} {row['rss_over_model']:>8.2f} "
            f"{row['rss_over_first']:>9.3f}  {doc['verdict']} (max KL {row['max_kl']:.3g})"
        )
    if len(lengths) > 1:
        a, b = runs[lengths[0]], runs[lengths[-1]]
        marginal = (b["wall_s"] - a["wall_s"]) / (lengths[-1] - lengths[0])
        print(f"marginal time per position from {lengths[0]} to {lengths[-1]}: {1000 * marginal:.1f} ms")
        for phase in ("reference", "candidate", "compare"):
            pa = a["document"]["timings"].get(phase, 0.0)
            pb = b["document"]["timings"].get(phase, 0.0)
            print(f"  {phase:10s} {1000 * (pb - pa) / (lengths[-1] - lengths[0]):7.1f} ms per position")
    if args.json:
        args.json.write_text(json.dumps({"model_bytes": size, "runs": figures}, indent=2) + "\n")


if __name__ == "__main__":
    main()
