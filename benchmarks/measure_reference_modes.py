# /// script
# requires-python = ">=3.10"
# ///
"""Measure `--reference` on Gemma 3 270M (Q4_K_M): what each reference says of a correct engine, and
what ``auto`` costs, in one run.

1. The NumPy engine at the defaults (``--reference auto``) over the prompts of
   benchmarks/measure_dequantized_reference.py (prose, code, digits, other languages; 16-48
   generated tokens each), through :func:`run_crossval` as the command runs it. Per run: the
   distance to each reference (mean and max KL over its positions), the reference followed, the
   verdict, and whether the model as given at the quantised limit (``--reference native``, KL
   0.1) would have failed it (a false alarm: the engine is correct). Then the count of false
   alarms of each mode.
2. The cost of ``auto`` against ``native`` with the float copy cached: the same prompts run in
   both modes, side by side, in this process (wall time of :func:`run_crossval` each, and the
   ratio of the sums).

Usage: BITNET_CACHE_DIR=DIR python benchmarks/measure_reference_modes.py [--prompts N]
       [--cost-prompts N] [--json FILE]
DIR must hold the llama backend with its shim (``invoke rebuild``) and Gemma 3 270M (run
``invoke crossval-per-token --model gemma3-270m`` there once); the float copy is written there on
the first run if it is not cached yet (its time is printed apart).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.measure_dequantized_reference import GENERATED, PROMPTS  # noqa: E402
from bitnet_crossval.context import load_context  # noqa: E402
from bitnet_crossval.crossval import CrossvalRequest, parse_model, run_crossval  # noqa: E402
from bitnet_crossval.crossval.defaults import DEFAULT_KL_MAX_QUANTIZED, ReferenceMode  # noqa: E402
from bitnet_crossval.crossval.result import CrossvalResult  # noqa: E402


def run(prompt: str, max_tokens: int, mode: ReferenceMode) -> tuple[CrossvalResult, float]:
    request = CrossvalRequest(model=parse_model("gemma3-270m"), prompt=prompt, max_tokens=max_tokens, reference=mode)
    started = time.monotonic()
    result = run_crossval(request, load_context())
    return result, time.monotonic() - started


def g(x: float) -> str:
    return f"{x:.3g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=len(PROMPTS))
    parser.add_argument("--cost-prompts", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    # The float copy first, so no run below pays for writing it.
    first, seconds = run(PROMPTS[0][1], 1, "dequantized")
    assert first.references is not None and first.references.float_copy is not None
    copy = first.references.float_copy
    print(
        f"float copy {copy.path.name}: {copy.float_type}, {copy.size_bytes / 1e9:.2f} GB, "
        f"{'cached' if copy.cached else f'written in {copy.seconds:.1f} s'} (first run {seconds:.1f} s)"
    )

    print("\n== the NumPy engine, --reference auto ==")
    header = f"{'#':>2} {'kind':<11} {'pos':>4} {'to native mean/max':>20} {'to copy mean/max':>20} followed"
    print(header + "     verdict     native@0.1")
    records: list[dict[str, Any]] = []
    for index, (kind, text) in enumerate(PROMPTS[: args.prompts]):
        max_tokens = GENERATED[index % len(GENERATED)]
        result, seconds = run(text, max_tokens, "auto")
        refs = result.references
        assert refs is not None
        native, copy_d = refs.distances["native"], refs.distances["dequantized"]
        native_alarm = native.max_kl > DEFAULT_KL_MAX_QUANTIZED
        records.append(
            {
                "kind": kind,
                "prompt": text,
                "positions": len(result.rows),
                "generated": max_tokens,
                "verdict": result.verdict,
                "followed": refs.followed,
                "native": native.to_json(),
                "dequantized": copy_d.to_json(),
                "native_limit_would_fail": native_alarm,
                "seconds": round(seconds, 2),
            }
        )
        print(
            f"{index:>2} {kind:<11} {len(result.rows):>4} {g(native.mean_kl) + ' / ' + g(native.max_kl):>20} "
            f"{g(copy_d.mean_kl) + ' / ' + g(copy_d.max_kl):>20} {refs.followed:<12} {result.verdict:<10}  "
            f"{'FAIL' if native_alarm else 'ok'}",
            flush=True,
        )
    auto_alarms = sum(r["verdict"] != "parity" for r in records)
    native_alarms = sum(r["native_limit_would_fail"] for r in records)
    positions = sum(r["positions"] for r in records)
    worst_copy = max(r["dequantized"]["max_kl"] for r in records)
    print(
        f"\nfalse alarms over {len(records)} runs ({positions} positions): auto {auto_alarms}; the model as given at "
        f"KL {DEFAULT_KL_MAX_QUANTIZED:g} (--reference native) {native_alarms}. Largest KL to the float copy: "
        f"{g(worst_copy)}; followed the float copy in {sum(r['followed'] == 'dequantized' for r in records)} runs"
    )

    print("\n== cost of auto against native, the copy cached ==")
    costs: list[dict[str, Any]] = []
    for kind, text in PROMPTS[: args.cost_prompts]:
        _, native_s = run(text, 32, "native")
        auto_result, auto_s = run(text, 32, "auto")
        extra = auto_result.timings.get("reference_dequantized", 0.0) + auto_result.timings.get("float_copy", 0.0)
        costs.append({"kind": kind, "native_seconds": native_s, "auto_seconds": auto_s, "auto_extra_phases": extra})
        print(f"{kind:<11} native {native_s:.1f} s, auto {auto_s:.1f} s ({auto_s / native_s:.2f}x); "
              f"the copy's phases {extra:.1f} s")  # fmt: skip
    if costs:
        native_total = sum(c["native_seconds"] for c in costs)
        auto_total = sum(c["auto_seconds"] for c in costs)
        print(f"total: native {native_total:.1f} s, auto {auto_total:.1f} s, ratio {auto_total / native_total:.2f}")
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {"runs": records, "false_alarms": {"auto": auto_alarms, "native": native_alarms}, "cost": costs},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
