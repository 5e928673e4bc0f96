# /// script
# requires-python = ">=3.10"
# ///
"""Measure `invoke crossval-per-token` on Gemma 3 270M (Q4_K_M), in one run, and print the figures.

1. End to end: the wall-clock time of ``invoke crossval-per-token --model gemma3-270m`` (18 prompt
   tokens given as ids + 16 generated: 34 positions; --prompt-ids changes it; --format json,
   --repair never), each in a fresh process
   started the way a user starts it (``python -m invoke`` from the repository root):
   - the first run: the model file evicted from the OS page cache first (posix_fadvise
     DONTNEED on the GGUF), so the engine's first load reads it from disk, as the first run
     after a fetch or a reboot does. Python's bytecode caches stay as they are: the suite's
     modules are compiled first, beside their sources, as pip compiles an installed package
     (where PYTHONDONTWRITEBYTECODE is set a checkout would compile them on every run;
     --no-bytecode-cache measures that). The shim's libraries are usually still cached;
   - repeated runs: the same command again, everything warm (median and minimum of --runs).
   With each: CPU time (user + system of the command and everything it ran, the shim included)
   and peak RSS of the largest process (the crossval itself, which holds the NumPy engine).
   Between the repeated runs, one shim ``logits`` call on the same ids (a fresh process, as the
   crossval starts it): the repeated crossval's median as a ratio to that call's median (aim: at
   most 5), and the peak RSS as a ratio to the model file (aim: at most 5).
2. The run's own timings from its JSON report: model (resolve, sha256, the shim's info call),
   tokenize, candidate_load (the engine opens and validates the GGUF), reference (the shim's
   generate and logits calls, process starts and model loads included), candidate (the
   engine's forward pass over every position), compare, total.
3. The crossval's own overhead: wall time minus the two engines' time (reference +
   candidate_load + candidate), split into start-up/preflight/output (wall - total), the model
   phase, tokenize, compare and the rest of run_crossval (the model's sha256 and tensor table,
   detokenizing the pieces), whose steps are also timed one by one here.
4. The NumPy engine against the shim on the same 48 tokens, reusing benchmarks/measure_engine.py:
   time per position (marginal cost of 48 positions over 1, shortest of --engine-runs) as a
   ratio, and the engine's peak memory (a fresh child process) against the model file size.

Usage: BITNET_CACHE_DIR=DIR python benchmarks/measure_crossval.py [--runs 3] [--engine-runs 3] [--json FILE]
DIR must hold the llama backend with its shim and the fetched Gemma 3 270M (run
``invoke crossval-per-token --model gemma3-270m`` there once); nothing is repaired, built or
downloaded here, and nothing in DIR is written but the runs' remembered answers under
``checks/`` (the model's pages are only dropped from the page cache).
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
sys.path.insert(0, str(REPO))

from benchmarks import measure_engine  # noqa: E402
from benchmarks.measured import compile_suite, run_measured  # noqa: E402

TEXT = measure_engine.TEXT
N_PROMPT, N_GENERATED = 18, measure_engine.N_GENERATED
ENGINE_PHASES = ("reference", "candidate_load", "candidate")


def evict_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def breakdown(run: dict[str, Any]) -> dict[str, float]:
    t = run["document"]["timings"]
    engines = sum(t.get(name, 0.0) for name in ENGINE_PHASES)
    in_phases = sum(t.get(name, 0.0) for name in ("model", "tokenize", "compare", *ENGINE_PHASES))
    return {
        "wall": run["wall_s"],
        "engines": engines,
        "overhead": run["wall_s"] - engines,
        "outside_run": run["wall_s"] - t["total"],
        "model": t.get("model", 0.0),
        "tokenize": t.get("tokenize", 0.0),
        "compare": t.get("compare", 0.0),
        "rest_of_run": t["total"] - in_phases,
    }


def outside_phases(shim: Any, model: Path, tokens: list[int]) -> dict[str, float]:
    """What run_crossval does outside its timed phases, each step timed here on its own (warm)."""
    from bitnet_crossval.crossval.engine import GGUFModelFile
    from bitnet_crossval.util.files import file_sha256

    steps = {
        "sha256 of the model (the report's model.sha256)": lambda: file_sha256(model),
        "reading its tensor table (the weight types)": lambda: GGUFModelFile(model),
        "the shim's detokenize (the table's pieces)": lambda: shim.detokenize(model, tokens),
    }
    seconds = {}
    for label, step in steps.items():
        started = time.perf_counter()
        step()
        seconds[label] = time.perf_counter() - started
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="repeated end-to-end runs (default 3)")
    parser.add_argument("--engine-runs", type=int, default=3, help="runs of each engine/shim timing (default 3)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--reference",
        choices=("auto", "native", "dequantized"),
        default="auto",
        help="the crossval's --reference (default auto, the command's own default)",
    )
    parser.add_argument("--prompt-ids", type=int, default=N_PROMPT, help=f"prompt tokens (default {N_PROMPT})")
    parser.add_argument("--no-bytecode-cache", action="store_true", help="leave PYTHONDONTWRITEBYTECODE as it is")
    args = parser.parse_args()
    if not os.environ.get("BITNET_CACHE_DIR"):
        raise SystemExit("set BITNET_CACHE_DIR to a cache with the llama backend and the fetched Gemma 3 270M")

    from bitnet_crossval.context import load_context
    from bitnet_crossval.crossval.models import GEMMA_FILE
    from bitnet_crossval.reference.lookup import recorded_shim

    ctx = load_context()
    shim = recorded_shim(ctx.constants, "llama", env=ctx.env)
    model = ctx.cache.model_file(GEMMA_FILE)
    if not model.is_file():
        raise SystemExit(f"{model} is missing: run `invoke crossval-per-token --model gemma3-270m` in this cache once")
    size = model.stat().st_size
    env = {**os.environ, "NO_COLOR": "1"}
    cores = os.cpu_count() or 1

    if not args.no_bytecode_cache:
        compile_suite()
    with tempfile.TemporaryDirectory(prefix="measure-crossval-") as tmp:
        prompt = list(shim.tokenize(model, TEXT, add_bos=True, parse_special=False).tokens)[: args.prompt_ids]
        tokens_file = Path(tmp) / "prompt.json"
        tokens_file.write_text(json.dumps(prompt))
        cmd = [sys.executable, "-m", "invoke", "crossval-per-token", "--repair", "never", "--model", "gemma3-270m"]
        cmd += ["--tokens-file", str(tokens_file), "--max-tokens", str(N_GENERATED), "--format", "json"]
        cmd += ["--reference", args.reference]

        evict_from_page_cache(model)
        first = run_measured(cmd, env)
        tokens: list[int] = first["document"]["tokens"]
        n = len(tokens)
        ids_file = Path(tmp) / "ids.json"
        ids_file.write_text(json.dumps(tokens))
        logits_cmd = [str(shim.executable), "logits", "--model", str(model), "--tokens-file", str(ids_file)]
        logits_cmd += ["--out", str(Path(tmp) / "logits.npy")]
        repeated, shim_calls = [], []
        for _ in range(args.runs):  # interleaved: both see the same load
            repeated.append(run_measured(cmd, env))
            started = time.perf_counter()
            subprocess.run(logits_cmd, check=True, capture_output=True, env=env)
            shim_calls.append(time.perf_counter() - started)

        rest = outside_phases(shim, model, tokens)
        shim_1 = measure_engine.time_shim(shim, model, tokens, args.engine_runs, threads=1)
        engine_all = measure_engine.run_child(model, tokens, args.engine_runs, one_thread=False)
        engine_1 = measure_engine.run_child(model, tokens, args.engine_runs, one_thread=True)

    def per_position(full: float, single: float) -> float:
        return (full - single) / (n - 1)

    doc = first["document"]
    s = doc["summary"]
    print(
        f"model: {model.name}, {size / 2**20:.1f} MiB; {n} positions ({args.prompt_ids} prompt ids + {N_GENERATED} "
        "generated)"
    )
    print(f"machine: {cores} cores; load average {os.getloadavg()[0]:.2f} at the end")
    print(
        f"verdict {doc['verdict']}: max KL {s['max_kl']:.4g} (limit {doc['thresholds']['kl_max']:g}), "
        f"mean KL {s['mean_kl']:.4g}, min cosine {s['min_cosine']:.6f}, top-1 {s['top1_agreement']:.1%} "
        f"({s['n_near_ties']} near ties)"
    )

    walls = [r["wall_s"] for r in repeated]
    median_run = sorted(repeated, key=lambda r: r["wall_s"])[len(repeated) // 2]
    print("\n1. end to end (`invoke crossval-per-token --model gemma3-270m`, fresh process each):")
    print(
        f"  first run (model evicted from the page cache)  {first['wall_s']:6.2f} s wall, {first['cpu_s']:6.2f} s CPU, "
        f"peak RSS {first['maxrss_kib'] / 2**10:.0f} MiB"
    )
    print(
        f"  repeated runs (warm), median of {len(walls)}         {statistics.median(walls):6.2f} s wall "
        f"(min {min(walls):.2f}), {statistics.median(r['cpu_s'] for r in repeated):6.2f} s CPU, "
        f"peak RSS {statistics.median(r['maxrss_kib'] for r in repeated) / 2**10:.0f} MiB "
        f"= {statistics.median(r['maxrss_kib'] for r in repeated) * 1024 / size:.2f}x the model file"
    )

    crossval_median = statistics.median(walls)
    shim_median = statistics.median(shim_calls)
    print(
        f"  one shim `logits` call on the same {n} ids, median of {len(shim_calls)}   {shim_median:6.2f} s wall; "
        f"repeated crossval / shim call: {crossval_median / shim_median:.2f}x (aim: at most 5x)"
    )
    print(
        f"  peak RSS of the repeated crossval / model file: "
        f"{statistics.median(r['maxrss_kib'] for r in repeated) * 1024 / size:.2f}x (aim: at most 5x)"
    )

    print("\n2. the run's own timings (seconds; first run | median repeated run):")
    for name in ("model", "tokenize", "candidate_load", "reference", "candidate", "compare", "total"):
        a = first["document"]["timings"].get(name, 0.0)
        b = median_run["document"]["timings"].get(name, 0.0)
        print(f"  {name:15s} {a:7.3f} | {b:7.3f}")

    print("\n3. the crossval's own overhead = wall - (reference + candidate_load + candidate):")
    for label, run in (("first", first), ("repeated (median run)", median_run)):
        b = breakdown(run)
        print(
            f"  {label}: {b['overhead']:.2f} s of {b['wall']:.2f} s ({b['overhead'] / b['wall']:.0%}); engines "
            f"{b['engines']:.2f} s. Parts: start-up + preflight + output {b['outside_run']:.2f} s, model "
            f"{b['model']:.2f} s, tokenize {b['tokenize']:.2f} s, compare {b['compare']:.2f} s, "
            f"rest of the run {b['rest_of_run']:.2f} s"
        )

    print(
        "  the rest of the run, step by step (measured separately, warm): "
        + ", ".join(f"{label} {value:.2f} s" for label, value in rest.items())
    )

    shim_pp = per_position(*shim_1)
    eng_pp_all = per_position(engine_all["forward_s"], engine_all["forward_1_s"])
    eng_pp_1 = per_position(engine_1["forward_s"], engine_1["forward_1_s"])
    peak_kib = max(engine_all["maxrss_kib"], engine_all["vm_hwm_kib"] or 0)
    print(f"\n4. the NumPy engine vs the shim on the same {n} tokens (benchmarks/measure_engine.py):")
    print(f"  shim, 1 thread (as the crossval runs it)   {shim_pp * 1e3:8.2f} ms per position")
    print(f"  engine, BLAS on all {cores} cores (as the crossval) {eng_pp_all * 1e3:8.2f} ms per position")
    print(f"  engine, BLAS 1 thread                      {eng_pp_1 * 1e3:8.2f} ms per position")
    print(f"  ratio engine/shim: {eng_pp_all / shim_pp:.2f}x (engine all cores), {eng_pp_1 / shim_pp:.2f}x (1 thread)")
    print(
        f"  engine peak RSS {peak_kib / 2**10:.0f} MiB = {peak_kib * 1024 / size:.2f}x the model file "
        f"({size / 2**20:.1f} MiB); open {engine_all['open_s']:.2f} s, dequantise {engine_all['dequant_s']:.2f} s"
    )

    if args.json:
        figures = {
            "model_bytes": size,
            "n_positions": n,
            "first": {k: v for k, v in first.items() if k != "document"} | {"timings": doc["timings"]},
            "repeated": [
                {k: v for k, v in r.items() if k != "document"} | {"timings": r["document"]["timings"]}
                for r in repeated
            ],
            "overhead_first": breakdown(first),
            "overhead_repeated_median_run": breakdown(median_run),
            "shim_per_position_s": shim_pp,
            "engine_per_position_s_all_cores": eng_pp_all,
            "engine_per_position_s_1_thread": eng_pp_1,
            "engine_peak_rss_bytes": peak_kib * 1024,
            "engine": engine_all,
            "rest_of_run_steps_s": rest,
            "shim_logits_call_s": shim_calls,
            "crossval_over_shim_call": crossval_median / shim_median,
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
