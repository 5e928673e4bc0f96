# /// script
# requires-python = ">=3.10"
# ///
"""Measure the trace's tolerances: the worst error of correct engines per tensor kind, and the margin.

For each model and prompt, llama.cpp (the reference, through the shim's ``trace``) and each
correct candidate (the NumPy engine; ``llama``: llama.cpp itself run as a candidate) trace every
tensor at every position. For each precision class and tensor kind it prints the worst relative
error per position of a correct candidate (the logits: the worst KL), where it was seen, the
tolerance the table in ``bitnet_crossval/crossval/trace_tolerance.py`` sets, and the margin
(tolerance / worst). With ``--faults``, the NumPy engine with each deliberate fault that applies
to the model is traced as well, and the error at the tensor where the fault first shows is
printed against that tensor's tolerance (it must be above it for the trace to name the site).

Usage: python benchmarks/measure_trace_tolerances.py [--model synthetic:gemma3 --model PATH.gguf ...]
       [--candidate numpy --candidate llama] [--faults] [--json FILE]
The suite's cache (BITNET_CACHE_DIR or the default) must hold a llama.cpp backend with its shim
(``invoke preflight --backend llama --repair auto``); nothing is built or downloaded here. A float
copy of a quantised GGUF (``bitnet_crossval.reference.dequantize.float_copy``) is passed by path.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bitnet_crossval.context import load_context  # noqa: E402
from bitnet_crossval.crossval import parse_candidate, parse_model  # noqa: E402
from bitnet_crossval.crossval.candidates import make_candidate  # noqa: E402
from bitnet_crossval.crossval.candidates.base import CandidateSetting, TraceRequest  # noqa: E402
from bitnet_crossval.crossval.defaults import DEFAULT_KL_MAX_FLOAT, DEFAULT_KL_MAX_QUANTIZED  # noqa: E402
from bitnet_crossval.crossval.engine import (  # noqa: E402
    EngineOptions,
    Fault,
    GGUFModelFile,
    load_engine,
)
from bitnet_crossval.crossval.engine.archs import ALL_ARCHITECTURES  # noqa: E402
from bitnet_crossval.crossval.metrics import Thresholds  # noqa: E402
from bitnet_crossval.crossval.models import resolve_model  # noqa: E402
from bitnet_crossval.crossval.trace import RefTensor, TensorComparison, compare_tensor  # noqa: E402
from bitnet_crossval.crossval.trace_tolerance import (  # noqa: E402
    ANY_KIND,
    TOLERANCES,
    TracePrecision,
    judged_by_kl,
    tensor_band,
    tensor_kind,
    tolerance_for,
    trace_precision,
)
from bitnet_crossval.reference.client import Shim  # noqa: E402
from bitnet_crossval.reference.lookup import recorded_shim  # noqa: E402

PROMPTS = (
    "The quick brown fox jumps over the lazy dog because it wants to reach the river before",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) +",
    "3.14159 26535 89793 23846 26433 83279 50288 41971 69399 37510",
    "Le renard brun saute par-dessus le chien paresseux parce qu'il veut",
)
DEFAULT_MODELS = (
    "synthetic:llama",
    "synthetic:bitnet",
    "synthetic:gemma3",
    "synthetic:llama:F16",
    "synthetic:gemma3:F16",
)


@dataclass
class Worst:
    value: float
    where: str


def weight_types(model: Path) -> list[str]:
    """As the crossval's model facts: the types of the 2-D weights."""
    gguf = GGUFModelFile(model)
    return sorted({t.type_name for name, t in gguf.tensors.items() if len(t.shape) >= 2 and name.endswith(".weight")})


def traced_errors(
    shim: Shim, model: Path, tokens: list[int], candidates: Mapping[str, Any], *, arch: str, precision: TracePrecision
) -> dict[str, list[TensorComparison]]:
    """Every reference tensor against each candidate's, at every position (nothing stops at a departure)."""
    positions = list(range(len(tokens)))
    kl_max = DEFAULT_KL_MAX_QUANTIZED if precision == "quantized" else DEFAULT_KL_MAX_FLOAT
    with tempfile.TemporaryDirectory(prefix="trace-tolerances-") as tmp:
        reference = shim.trace(model, tokens, out_dir=Path(tmp) / "reference", positions=positions, threads=2)
        refs = [RefTensor(name=t.name, layer=t.layer, op=t.op, shape=t.shape, load=t.load) for t in reference.tensors]
        out: dict[str, list[TensorComparison]] = {}
        for label, candidate in candidates.items():
            work = Path(tmp) / label
            work.mkdir()
            traced = candidate.trace(
                model, np.asarray(tokens, dtype=np.int32), request=TraceRequest(positions=positions), work_dir=work
            )
            assert traced is not None, f"{label} wrote no trace"
            rows: list[TensorComparison] = []
            for ref in refs:
                loader = traced.get(ref.name)
                if loader is None:
                    continue
                rows.append(
                    compare_tensor(
                        ref,
                        loader(),
                        architecture=arch,
                        positions=positions,
                        rel_tol=tolerance_for(ref.name, precision),
                        thresholds=Thresholds(kl_max=kl_max) if judged_by_kl(ref.name) else None,
                    )
                )
            out[label] = rows
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="synthetic:ARCH[:TYPE] or a GGUF path (repeatable)")
    parser.add_argument("--candidate", action="append", help="numpy, llama (repeatable; default both)")
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="how many of the built-in prompts")
    parser.add_argument("--faults", action="store_true", help="also trace each applicable fault of the NumPy engine")
    parser.add_argument("--fault", action="append", help="with --faults: only these (repeatable)")
    parser.add_argument("--json", type=Path, help="write every figure to this file")
    parser.add_argument("--shim", type=Path, help="a shim built against llama.cpp (default: the cache's)")
    args = parser.parse_args()
    ctx = load_context(dict(os.environ))
    shim = Shim(args.shim) if args.shim else recorded_shim(ctx.constants, "llama", env=ctx.env)
    worst: dict[tuple[TracePrecision, str, str], Worst] = {}  # (precision, kind) -> worst correct error
    fault_rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for spec in args.model or DEFAULT_MODELS:
        model = (
            resolve_model(parse_model(spec), cache=ctx.cache, env=ctx.env, source_dirs=[])
            if spec.startswith("synthetic:")
            else Path(spec)
        )
        info = shim.info(model)
        arch = str(info["architecture"])
        precision: TracePrecision = trace_precision(weight_types(model))
        setting = CandidateSetting(
            model=model,
            n_vocab=int(info["vocab_size"]),
            architecture=arch,
            env=ctx.env,
            threads=2,
            shim_for=lambda _backend: shim,
        )
        labels = args.candidate or ["numpy", "llama"]
        candidates = {label: make_candidate(parse_candidate(label), setting) for label in labels}
        if args.faults:
            for located in ALL_ARCHITECTURES[arch].FAULTS:
                if args.fault and located.spec.name not in args.fault:
                    continue
                try:
                    engine = load_engine(model, EngineOptions(fault=Fault(name=located.spec.name)))
                except Exception:  # a fault that cannot change this model (BadInput): not measured
                    continue
                site = engine.fault_site()
                assert site is not None
                fault_rows.append({"model": spec, "fault": str(located.spec.name), "site": site.key})
                candidates[f"numpy:{located.spec.name}"] = make_candidate(
                    parse_candidate(f"numpy:{located.spec.name}"), setting
                )
        for index, prompt in enumerate(PROMPTS[: args.prompts]):
            tokens = list(shim.tokenize(model, prompt, add_bos=bool(info.get("add_bos")), parse_special=False).tokens)
            per_candidate = traced_errors(shim, model, tokens, candidates, arch=arch, precision=precision)
            for label, rows in per_candidate.items():
                if label.startswith("numpy:"):
                    fault = label.split(":", 1)[1]
                    entry = next(r for r in fault_rows if r["model"] == spec and r["fault"] == fault)
                    at_site = next((r for r in rows if r.name == entry["site"]), None)
                    if at_site is None:
                        entry[f"prompt{index}"] = math.nan
                    else:
                        kl = at_site.max_kl
                        entry[f"prompt{index}"] = kl if kl is not None else at_site.max_rel_error
                        entry["tolerance"] = "KL" if kl is not None else at_site.tolerance
                    first = next((r for r in rows if not r.agrees), None)
                    entry[f"named{index}"] = first.name if first else None
                    continue
                for row in rows:
                    value = row.max_kl if row.max_kl is not None else row.max_rel_error
                    key = (precision, tensor_band(row.name), tensor_kind(row.name))
                    if key not in worst or value > worst[key].value:
                        worst[key] = Worst(
                            value, f"{label} on {spec}, prompt {index}, {row.name} pos {row.worst_position}"
                        )
            print(
                f"  {spec} prompt {index} ({len(tokens)} tokens): traced ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )

    print("\nworst error of a correct engine, per precision, depth band and tensor kind (logits: KL)")
    print(f"{'precision':9} {'band':11} {'kind':16} {'worst':>10} {'limit':>8} {'margin':>9}  where")
    figures: list[dict[str, Any]] = []
    for (kind_precision, band, kind), w in sorted(worst.items()):
        if kind == "result_output":
            limit = DEFAULT_KL_MAX_QUANTIZED if kind_precision == "quantized" else DEFAULT_KL_MAX_FLOAT
        else:
            table_row = TOLERANCES[kind_precision][band]  # type: ignore[index]
            limit = table_row.get(kind, table_row[ANY_KIND])
        margin = limit / w.value if w.value > 0 else math.inf
        print(f"{kind_precision:9} {band:11} {kind:16} {w.value:10.3g} {limit:8.3g} {margin:8.3g}x  {w.where}")
        figures.append(
            {
                "precision": kind_precision,
                "band": band,
                "kind": kind,
                "worst": w.value,
                "limit": limit,
                "margin": margin,
                "where": w.where,
            }
        )
    if fault_rows:
        print(
            "\nthe NumPy engine with a fault: its error at the tensor where it first shows (logits: KL), "
            "and what the trace names"
        )
        for entry in fault_rows:
            values = [v for k, v in entry.items() if k.startswith("prompt")]
            named = sorted({str(v) for k, v in entry.items() if k.startswith("named")})
            print(
                f"  {entry['model']:22} {entry['fault']:16} site {entry['site']:14} "
                f"min {min(values):.3g} (limit {entry['tolerance']}); named: {', '.join(named)}"
            )
    if args.json is not None:
        args.json.write_text(json.dumps({"worst": figures, "faults": fault_rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
