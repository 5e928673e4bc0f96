# /// script
# requires-python = ">=3.10"
# ///
"""Measure the two references of a quantised model, the native one and its float copy.

On Gemma 3 270M (Q4_K_M) and a set of prompts of different kinds (prose, code, digits, other
languages; 16-48 generated tokens each), with the shim driven directly:

1. the float copy: the time and size of the first copy (written into a fresh cache), and the
   cost of a cached lookup (with and without hashing the model), all in this one run;
2. per prompt, for the NumPy engine as it is: KL(native || engine) and KL(dequantised || engine),
   max and mean over the run's positions, and the references' own distance per position,
   KL(native || dequantised);
3. the same for deliberate faults of the engine (``EngineOptions(fault=...)``), so where bugs sit
   against each floor can be read off;
4. the shim's time for the logits of the native model and of the copy (side by side, per prompt).

The token sequence of a prompt is its greedy continuation by the native reference (as
`crossval-per-token` makes it); both references and the engine then evaluate that sequence.

Usage: python benchmarks/measure_dequantized_reference.py --shim PATH/bitnet-shim --model GGUF
       [--prompts N] [--faults rope_base,norm_eps,...] [--cache DIR] [--json FILE]
The shim is one built against llama.cpp (``invoke rebuild``; its path is in the cache's
constants.json). Without --cache the copy goes to a temporary cache removed at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bitnet_crossval.crossval.engine import EngineOptions, Fault, load_engine  # noqa: E402
from bitnet_crossval.reference.client import Shim  # noqa: E402
from bitnet_crossval.reference.dequantize import backend_identity, float_copy  # noqa: E402
from bitnet_crossval.store.layout import CacheLayout  # noqa: E402
from bitnet_crossval.util.files import file_sha256  # noqa: E402

PROMPTS: list[tuple[str, str]] = [
    ("prose", "The quick brown fox jumps over the lazy dog because it wants to reach the river before"),
    ("prose", "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg"),
    ("prose", "Once upon a time, in a small village at the edge of a great forest, there lived"),
    ("prose", "Photosynthesis is the process by which green plants use sunlight to"),
    ("prose", "The committee met on Tuesday to discuss the budget, but the meeting ended without"),
    ("prose", "Dear Sir or Madam, I am writing to complain about the delivery of my order, which"),
    ("code", "def fibonacci(n):\n    if n < 2:\n        return n\n    return"),
    ("code", "#include <stdio.h>\n\nint main(void) {\n    for (int i = 0; i < 10; i++) {\n"),
    ("code", "SELECT name, COUNT(*) FROM orders WHERE created_at > '2024-01-01' GROUP BY"),
    ("code", "function debounce(fn, delay) {\n  let timer;\n  return function (...args) {\n"),
    ("code", "<html>\n<head>\n<title>My page</title>\n</head>\n<body>\n<ul>\n"),
    ("digits", "1, 2, 3, 5, 8, 13, 21, 34, 55,"),
    ("digits", "3.14159265358979323846264338327950288"),
    ("digits", "The invoice total is $1,249.99 plus 8.25% tax, which comes to"),
    ("digits", "2024-03-15 14:32:07 ERROR [worker-3] request 58213 failed after 3 retries;"),
    ("french", "Le petit prince demanda au renard pourquoi il ne pouvait pas jouer avec lui, et le renard répondit"),
    ("german", "Die Bundesregierung hat am Mittwoch beschlossen, dass die neuen Regeln ab dem nächsten Jahr"),
    ("spanish", "En un lugar de la Mancha, de cuyo nombre no quiero acordarme, no ha mucho tiempo que vivía"),
    ("chinese", "春天来了，公园里的花都开了，孩子们在草地上"),  # noqa: RUF001 (Chinese commas)
    ("japanese", "昨日、友達と一緒に東京の新しいレストランに行きました。料理は"),
    ("russian", "Москва — столица России, крупнейший по численности населения город страны и"),
    ("q&a", "Q: What is the capital of Australia?\nA:"),
    ("translation", "Translate to English: 'Je voudrais un café, s'il vous plaît.' ->"),
    ("list", "- [x] write tests\n- [ ] update the docs\n- [ ] release version 2.0"),
]
GENERATED = (16, 24, 32, 48)
DEFAULT_FAULTS = "rope_base,rope_base=1.1,norm_eps,norm_eps=1e-4,missing_qk_norm,sliding_window,rope_type,mask_no_self"


def kl_rows(ref: npt.NDArray[np.float32], cand: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """KL(P_ref || P_cand) of every row, in float64 (row by row: the vocabulary is 262144)."""
    out = np.empty(ref.shape[0])
    for i in range(ref.shape[0]):
        r = np.asarray(ref[i], dtype=np.float64)
        c = np.asarray(cand[i], dtype=np.float64)
        log_p = r - np.logaddexp.reduce(r)
        log_q = c - np.logaddexp.reduce(c)
        out[i] = float(np.sum(np.exp(log_p) * (log_p - log_q)))
    return out


@dataclass
class Run:
    kind: str
    text: str
    tokens: tuple[int, ...]
    n_prompt: int
    native: npt.NDArray[np.float32]
    dequantized: npt.NDArray[np.float32]
    native_seconds: float
    dequantized_seconds: float
    reference_gap: npt.NDArray[np.float64]  # KL(native || dequantized) per position


def parse_faults(text: str) -> list[Fault]:
    faults = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, _, value = item.partition("=")
        faults.append(Fault(name=name, value=float(value) if value else None))  # type: ignore[arg-type]
    return faults


def fault_label(fault: Fault | None) -> str:
    if fault is None:
        return "(none)"
    return fault.name if fault.value is None else f"{fault.name}={fault.value:g}"


def measure_copy(model: Path, shim: Shim, cache: CacheLayout) -> dict[str, Any]:
    started = time.perf_counter()
    sha = file_sha256(model)
    sha_seconds = time.perf_counter() - started
    ident = backend_identity(shim.info())
    first = float_copy(model, shim, cache=cache, model_sha256=sha, identity=ident)
    lookups_known = []
    lookups_hashing = []
    for _ in range(7):
        lookups_known.append(float_copy(model, shim, cache=cache, model_sha256=sha, identity=ident).seconds)
        t0 = time.perf_counter()
        again = float_copy(model, shim, cache=cache)
        lookups_hashing.append(time.perf_counter() - t0)
        assert again.cached
    note = json.loads(cache.float_copy_note(first.path).read_text(encoding="utf-8"))
    return {
        "copy": first.to_json(),
        "write_steps": note["write_seconds"],
        "first_copy_seconds": first.seconds,
        "first_copy_was_cached": first.cached,
        "copy_bytes": first.size_bytes,
        "model_bytes": model.stat().st_size,
        "sha256_seconds": sha_seconds,
        "lookup_seconds_sha_known": statistics.median(lookups_known),
        "lookup_seconds_with_sha_and_info": statistics.median(lookups_hashing),
    }


def make_runs(model: Path, copy: Path, shim: Shim, n_prompts: int, out_dir: Path) -> list[Run]:
    runs = []
    for index, (kind, text) in enumerate(PROMPTS[:n_prompts]):
        prompt = list(shim.tokenize(model, text, add_bos=True, parse_special=False).tokens)
        generated = shim.generate(model, prompt, n=GENERATED[index % len(GENERATED)], kv_type="f32")
        tokens = tuple(prompt + list(generated.tokens))
        t0 = time.perf_counter()
        native, _ = shim.logits(model, tokens, kv_type="f32", out_dir=out_dir)
        t1 = time.perf_counter()
        dequantized, _ = shim.logits(copy, tokens, kv_type="f32", out_dir=out_dir)
        t2 = time.perf_counter()
        runs.append(
            Run(
                kind=kind,
                text=text,
                tokens=tokens,
                n_prompt=len(prompt),
                native=native,
                dequantized=dequantized,
                native_seconds=t1 - t0,
                dequantized_seconds=t2 - t1,
                reference_gap=kl_rows(native, dequantized),
            )
        )
        print(f"  prompt {index + 1:2d} ({kind}): {len(prompt)} + {len(generated.tokens)} positions", file=sys.stderr)
    return runs


def engine_distances(model: Path, runs: list[Run], fault: Fault | None) -> list[dict[str, Any]]:
    engine = load_engine(model, EngineOptions(fault=fault))
    engine.preload()  # dequantising the weights is not part of a forward pass's time
    out = []
    for run in runs:
        t0 = time.perf_counter()
        logits = engine.forward(run.tokens)
        seconds = time.perf_counter() - t0
        to_native = kl_rows(run.native, logits)
        to_dequantized = kl_rows(run.dequantized, logits)
        out.append(
            {
                "kind": run.kind,
                "positions": len(run.tokens),
                "engine_seconds": seconds,
                "native_max": float(to_native.max()),
                "native_mean": float(to_native.mean()),
                "dequantized_max": float(to_dequantized.max()),
                "dequantized_mean": float(to_dequantized.mean()),
                "first_position_over_1e-3_vs_dequantized": next(
                    (i for i, v in enumerate(to_dequantized) if v > 1e-3), None
                ),
                "worst_ratio_native_to_gap": float(np.max(to_native / np.maximum(run.reference_gap, 1e-12))),
            }
        )
    del engine
    return out


def g(x: float) -> str:
    return f"{x:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shim", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=len(PROMPTS))
    parser.add_argument("--faults", default=DEFAULT_FAULTS)
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    shim = Shim(args.shim)
    model = args.model.absolute()
    temp = Path(tempfile.mkdtemp(prefix="dequant-bench-"))
    cache = CacheLayout(args.cache or temp / "cache")
    try:
        print(f"model {model} ({model.stat().st_size / 1e6:.0f} MB), shim {args.shim}", file=sys.stderr)
        copy_figures = measure_copy(model, shim, cache)
        copy_path = Path(copy_figures["copy"]["path"])
        print("\n== the float copy ==")
        print(
            f"first copy: {copy_figures['first_copy_seconds']:.1f} s "
            f"({'already cached' if copy_figures['first_copy_was_cached'] else 'written'}), "
            f"{copy_figures['copy_bytes'] / 1e9:.2f} GB ({copy_figures['copy']['float_type']}) "
            f"from a {copy_figures['model_bytes'] / 1e6:.0f} MB model "
            f"({copy_figures['copy_bytes'] / copy_figures['model_bytes']:.2f}x)"
        )
        order = ("backend_input", "backend", "assembly", "check", "total")
        done = copy_figures["write_steps"]
        steps = ", ".join(f"{k} {done[k]:.1f} s" for k in order if k in done)
        print(f"steps of the first copy: {steps}")
        print(
            f"cached lookup: {copy_figures['lookup_seconds_sha_known'] * 1e3:.1f} ms with the sha256 known; "
            f"{copy_figures['lookup_seconds_with_sha_and_info'] * 1e3:.0f} ms hashing the model and asking the "
            f"shim's info (the sha256 alone: {copy_figures['sha256_seconds'] * 1e3:.0f} ms)"
        )

        if args.prompts <= 0:
            return
        runs = make_runs(model, copy_path, shim, args.prompts, temp / "logits")
        native_s = sum(r.native_seconds for r in runs)
        dequant_s = sum(r.dequantized_seconds for r in runs)
        print("\n== the shim's logits, side by side (one thread, F32 KV) ==")
        print(
            f"native model: {native_s:.1f} s over {len(runs)} runs; float copy: {dequant_s:.1f} s "
            f"({dequant_s / native_s:.2f}x)"
        )

        faults: list[Fault | None] = [None, *parse_faults(args.faults)]
        results: dict[str, list[dict[str, Any]]] = {}
        for fault in faults:
            label = fault_label(fault)
            print(f"  engine {label} ...", file=sys.stderr)
            results[label] = engine_distances(model, runs, fault)

        clean = results["(none)"]
        print("\n== the engine as it is, per run: KL to each reference, and the references' own distance ==")
        header = (
            f"{'#':>2} {'kind':<11} {'pos':>4} | {'vs native max':>13} {'mean':>9} | "
            f"{'vs dequant max':>14} {'mean':>9} | {'native||dequant max':>19} {'mean':>9} {'p50':>9}"
        )
        print(header)
        for i, (run, row) in enumerate(zip(runs, clean, strict=True)):
            gap = run.reference_gap
            print(
                f"{i + 1:>2} {run.kind:<11} {len(run.tokens):>4} | {g(row['native_max']):>13} "
                f"{g(row['native_mean']):>9} | {g(row['dequantized_max']):>14} {g(row['dequantized_mean']):>9} | "
                f"{g(gap.max()):>19} {g(gap.mean()):>9} {g(float(np.median(gap))):>9}"
            )
        all_gap = np.concatenate([r.reference_gap for r in runs])
        print(
            f"over all {all_gap.size} positions, KL(native || dequantised): "
            f"p50 {g(float(np.percentile(all_gap, 50)))}, p90 {g(float(np.percentile(all_gap, 90)))}, "
            f"p99 {g(float(np.percentile(all_gap, 99)))}, max {g(float(all_gap.max()))}"
        )
        print(
            f"engine: max KL vs native {g(max(r['native_max'] for r in clean))} "
            f"(runs over 0.1: {sum(r['native_max'] > 0.1 for r in clean)}), "
            f"max KL vs dequantised {g(max(r['dequantized_max'] for r in clean))}; "
            f"worst KL(native||engine) / KL(native||dequantised) at one position: "
            f"{g(max(r['worst_ratio_native_to_gap'] for r in clean))}"
        )

        print("\n== deliberate faults: over the runs, the smallest and the largest per-run max KL ==")
        print(
            "(ratio: a run's largest KL(native || engine) / KL(native || dequantised) at one position, "
            "the reference's own rounding noise there)"
        )
        print(
            f"{'fault':<18} | {'vs dequant: min of max':>22} {'max':>9} {'runs > 1e-3':>11} | "
            f"{'vs native: min of max':>21} {'max':>9} {'runs > 0.1':>10} | {'ratio: min':>10} {'max':>9} "
            f"{'runs > 2':>8}"
        )
        for label, rows in results.items():
            dq = [r["dequantized_max"] for r in rows]
            nv = [r["native_max"] for r in rows]
            ratio = [r["worst_ratio_native_to_gap"] for r in rows]
            print(
                f"{label:<18} | {g(min(dq)):>22} {g(max(dq)):>9} {sum(v > 1e-3 for v in dq):>8}/{len(dq):<2} | "
                f"{g(min(nv)):>21} {g(max(nv)):>9} {sum(v > 0.1 for v in nv):>7}/{len(nv):<2} | "
                f"{g(min(ratio)):>10} {g(max(ratio)):>9} {sum(v > 2 for v in ratio):>5}/{len(ratio):<2}"
            )
        engine_seconds = sum(r["engine_seconds"] for r in clean)
        ratio = engine_seconds / native_s
        print(f"\nengine (clean) forward time: {engine_seconds:.1f} s over the runs ({ratio:.2f}x the shim)")

        if args.json:
            document = {
                "model": str(model),
                "copy": copy_figures,
                "shim_seconds": {"native": native_s, "dequantized": dequant_s},
                "runs": [
                    {
                        "kind": r.kind,
                        "text": r.text,
                        "n_prompt": r.n_prompt,
                        "positions": len(r.tokens),
                        "reference_gap": r.reference_gap.tolist(),
                    }
                    for r in runs
                ],
                "engine": results,
            }
            args.json.write_text(json.dumps(document, indent=1), encoding="utf-8")
    finally:
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
