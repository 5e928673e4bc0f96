# /// script
# requires-python = ">=3.10"
# ///
"""Measure what ``--trace`` costs, in one run, side by side.

Prints:
1. the overhead of ``--trace``: ``invoke crossval-per-token --candidate numpy:FAULT`` (a plain
   run of a faulty candidate, which diverges) against the same command with ``--trace`` (which
   then traces both sides up to the first failing position and compares them), as a ratio of
   wall-clock times. Both commands run in fresh processes, interleaved (plain, traced, plain,
   ...), so load on the machine hits both alike; the median and the shortest of each are
   compared, and so are their CPU times (user + system of the command and everything it ran,
   the shim included), which other load on the machine disturbs much less than wall-clock time.
   The run's own ``timings`` (from its JSON) split the traced run: the ``trace`` phase and the
   rest. On the default synthetic model and on Gemma 3 270M (Q4_K_M).
2. the size of a full trace against one filtered to one layer (``--trace-layers 5-5``), on
   Gemma 3 270M: the shim's ``trace`` called directly on the tokens of the run above, at the
   positions the run traced (0..first failing position) and at every position; tensors, their
   bytes, and the whole output directory (which also holds the logits of every position).

Usage: BITNET_CACHE_DIR=DIR python benchmarks/measure_trace.py [--fault rope_type] [--runs 5]
       [--model synthetic:llama --model gemma3-270m] [--json FILE]
DIR must hold a llama.cpp backend with its shim (``invoke preflight --backend llama --repair auto``)
and, for Gemma, the fetched model (``invoke crossval-per-token --model gemma3-270m`` once);
nothing is repaired or downloaded here.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GEMMA = "gemma3-270m"
FILTER = (5, 5)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def crossval(model: str, fault: str, *, trace: bool, env: dict[str, str]) -> tuple[float, float, dict[str, Any]]:
    """One `invoke crossval-per-token` in a fresh process: its wall-clock and CPU seconds, its JSON."""
    cmd = [sys.executable, "-m", "invoke", "crossval-per-token", "--repair", "never", "--model", model]
    cmd += ["--candidate", f"numpy:{fault}", "--format", "json", *(["--trace"] if trace else [])]
    cpu = _children_cpu()
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    cpu = _children_cpu() - cpu
    if done.returncode != 10:  # ParityFailed: the faulty candidate diverged, as it must
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}, expected 10:\n{done.stderr[-3000:]}")
    document: dict[str, Any] = json.loads(done.stdout)
    return seconds, cpu, document


def overhead(model: str, fault: str, runs: int, env: dict[str, str]) -> dict[str, Any]:
    plain: list[float] = []
    traced: list[float] = []
    plain_cpu: list[float] = []
    traced_cpu: list[float] = []
    trace_phase: list[float] = []
    plain_totals: list[float] = []
    traced_totals: list[float] = []
    document: dict[str, Any] = {}
    crossval(model, fault, trace=False, env=env)  # warm: the model written/checked, files in the page cache
    for _ in range(runs):
        seconds, cpu, doc = crossval(model, fault, trace=False, env=env)
        plain.append(seconds)
        plain_cpu.append(cpu)
        plain_totals.append(doc["timings"]["total"])
        seconds, cpu, document = crossval(model, fault, trace=True, env=env)
        traced.append(seconds)
        traced_cpu.append(cpu)
        trace_phase.append(document["timings"]["trace"])
        traced_totals.append(document["timings"]["total"])
    trace = document["trace"]
    departure = trace["first_departure"]
    return {
        "model": model,
        "fault": fault,
        "runs": runs,
        "n_tokens": len(document["tokens"]),
        "n_layer": document["model"]["n_layer"],
        "first_failure": document["summary"]["first_failure"],
        "traced_positions": len(trace["positions"]),
        "tensors_compared": len(trace["compared"]),
        "first_departure": departure["name"] if departure else None,
        "plain_median_s": statistics.median(plain),
        "traced_median_s": statistics.median(traced),
        "plain_min_s": min(plain),
        "traced_min_s": min(traced),
        "ratio_median": statistics.median(traced) / statistics.median(plain),
        "ratio_min": min(traced) / min(plain),
        "in_process_ratio_median": statistics.median(traced_totals) / statistics.median(plain_totals),
        "plain_cpu_median_s": statistics.median(plain_cpu),
        "traced_cpu_median_s": statistics.median(traced_cpu),
        "cpu_ratio_median": statistics.median(traced_cpu) / statistics.median(plain_cpu),
        "cpu_ratio_min": min(traced_cpu) / min(plain_cpu),
        "plain_s": plain,
        "traced_s": traced,
        "plain_cpu_s": plain_cpu,
        "traced_cpu_s": traced_cpu,
        "plain_in_process_s": plain_totals,
        "traced_in_process_s": traced_totals,
        "trace_phase_s": trace_phase,
        "trace_phase_median_s": statistics.median(trace_phase),
        "trace_phase_min_s": min(trace_phase),
        "plain_in_process_min_s": min(plain_totals),
        "plain_cpu_min_s": min(plain_cpu),
        "traced_cpu_min_s": min(traced_cpu),
        "trace_phase_share_of_traced_run": statistics.median(trace_phase) / statistics.median(traced_totals),
        "tokens": document["tokens"],
    }


def trace_sizes(model_name: str, tokens: list[int], positions: list[int] | None) -> dict[str, Any]:
    """The shim's trace, full and ``--trace-layers 5-5``, at ``positions`` (None: every one)."""
    from bitnet_crossval.context import load_context
    from bitnet_crossval.crossval.models import parse_model, resolve_model
    from bitnet_crossval.reference.lookup import recorded_shim

    ctx = load_context()
    shim = recorded_shim(ctx.constants, "llama", env=ctx.env)
    model = resolve_model(parse_model(model_name), cache=ctx.cache, env=ctx.env, source_dirs=[])
    out: dict[str, Any] = {"positions": len(positions) if positions is not None else len(tokens)}
    with tempfile.TemporaryDirectory(prefix="measure-trace-") as tmp:
        for label, layers in (("full", None), ("layers_5_5", FILTER)):
            started = time.perf_counter()
            result = shim.trace(
                model, tokens, out_dir=Path(tmp) / label, layers=layers, positions=positions, kv_type="auto"
            )
            seconds = time.perf_counter() - started
            files = [p for p in result.out_dir.iterdir() if p.is_file()]
            out[label] = {
                "tensors": len(result.tensors),
                "tensor_bytes": sum(t.nbytes for t in result.tensors),
                "logits_bytes": result.logits_path.stat().st_size,
                "directory_bytes": sum(p.stat().st_size for p in files),
                "files": len(files),
                "seconds": seconds,
            }
    full, one = out["full"], out["layers_5_5"]
    out["tensor_bytes_ratio"] = full["tensor_bytes"] / max(one["tensor_bytes"], 1)
    out["directory_bytes_ratio"] = full["directory_bytes"] / max(one["directory_bytes"], 1)
    return out


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fault", default="rope_type", help="the numpy engine's deliberate fault (default rope_type)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--model", action="append", help="default: synthetic:llama and gemma3-270m")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if not os.environ.get("BITNET_CACHE_DIR"):
        raise SystemExit("set BITNET_CACHE_DIR to a cache with the llama backend (and Gemma, for its figures)")
    models = args.model or ["synthetic:llama", GEMMA]
    env = {**os.environ, "NO_COLOR": "1"}
    print(f"machine: {os.cpu_count()} cores; candidate numpy:{args.fault}; {args.runs} interleaved runs each")
    print(f"load average at the start: {os.getloadavg()[0]:.2f} (other work on the machine disturbs the times)")

    figures: dict[str, Any] = {"fault": args.fault, "runs": args.runs, "overhead": [], "sizes": {}}
    print("\n1. --trace overhead (wall clock of the whole command, fresh processes):")
    for model in models:
        o = overhead(model, args.fault, args.runs, env)
        figures["overhead"].append({k: v for k, v in o.items() if k != "tokens"})
        print(
            f"  {model}: {o['n_tokens']} positions, {o['n_layer']} layers; first failing position "
            f"{o['first_failure']}, traced {o['traced_positions']} positions, {o['tensors_compared']} tensors "
            f"compared, first departure {o['first_departure']}"
        )
        print(
            f"    wall clock: plain min {o['plain_min_s']:.2f} s (median {o['plain_median_s']:.2f}), --trace min "
            f"{o['traced_min_s']:.2f} s (median {o['traced_median_s']:.2f}): ratio of minima {o['ratio_min']:.2f} "
            f"(of medians {o['ratio_median']:.2f})"
        )
        print(
            f"    CPU time: plain min {o['plain_cpu_min_s']:.2f} s, --trace min {o['traced_cpu_min_s']:.2f} s: ratio "
            f"of minima {o['cpu_ratio_min']:.2f} (of medians {o['cpu_ratio_median']:.2f})"
        )
        print(
            f"    the trace phase (the run's own timing): min {o['trace_phase_min_s']:.2f} s (median "
            f"{o['trace_phase_median_s']:.2f}) = {o['trace_phase_min_s'] / o['plain_in_process_min_s']:.0%} of the "
            f"plain run's own minimum ({o['plain_in_process_min_s']:.2f} s)"
        )
        if model == GEMMA:
            positions = list(range(o["first_failure"] + 1))
            figures["sizes"] = {
                "traced_positions": trace_sizes(model, o["tokens"], positions),
                "every_position": trace_sizes(model, o["tokens"], None),
            }

    if figures["sizes"]:
        print(f"\n2. trace size on {GEMMA}, full vs --trace-layers {FILTER[0]}-{FILTER[1]} (the shim's trace):")
        for label, s in figures["sizes"].items():
            full, one = s["full"], s["layers_5_5"]
            print(
                f"  {label} ({s['positions']} positions): full {full['tensors']} tensors {_mib(full['tensor_bytes'])}, "
                f"one layer {one['tensors']} tensors {_mib(one['tensor_bytes'])}: {s['tensor_bytes_ratio']:.1f}x less; "
                f"whole directory {_mib(full['directory_bytes'])} vs {_mib(one['directory_bytes'])} "
                f"({s['directory_bytes_ratio']:.2f}x; the logits file, {_mib(one['logits_bytes'])}, is written "
                f"either way); shim time {full['seconds']:.2f} s vs {one['seconds']:.2f} s"
            )
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    figures["load_average_end"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
