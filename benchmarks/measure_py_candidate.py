# /// script
# requires-python = ">=3.10"
# ///
"""Measure what running a ``py:`` candidate in a child process costs, side by side with calling
the same function in this process (what the suite did before), in one run.

For each function, interleaved (direct, child, direct, child, ...) so that load on the machine
hits both alike:

- ``direct``: ``function(model_path, tokens)`` called here, the module imported once;
- ``child``: ``PythonCandidate.run`` as the crossval runs it: a child process with this
  interpreter (the runner imports numpy and the module, loads the tokens, calls the function,
  saves the array), the array then read back and checked;
- ``made``: making the candidate (a child process that imports the module and finds the
  function; once per crossval run, before the reference).

Two functions: ``zeros`` (returns an array at once: the bare cost of the process) and
``examples.py_candidate:logits`` (the NumPy engine on the model: a real candidate). Medians and
minimums of wall-clock seconds, the child's overhead in seconds and as a ratio.

Usage: python benchmarks/measure_py_candidate.py [--model PATH] [--tokens 22] [--runs 7] [--json FILE]
Without --model, the synthetic llama model is written to a temporary directory (with llama.cpp's
SentencePiece test vocabulary when BITNET_CACHE_DIR holds it, else a tiny one).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ZEROS_MODULE = (
    "import numpy as np\n\n"
    "def zeros(model_path, tokens):\n"
    "    return np.zeros((len(tokens), N_VOCAB), dtype=np.float32)\n"
)


def write_model(directory: Path) -> Path:
    from bitnet_crossval.crossval.synthetic import write_synthetic_model

    vocab = next(
        Path(os.environ.get("BITNET_CACHE_DIR", "/nonexistent")).glob("sources/*/**/ggml-vocab-llama-spm.gguf"), None
    )
    if vocab is None:
        from tests.integration.crossval.test_crossval_errors import write_tiny_vocab

        vocab = write_tiny_vocab(directory / "vocab.gguf")
    return write_synthetic_model(directory / "llama.gguf", arch="llama", vocab=vocab)


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def measure(
    target: str, model: Path, tokens: np.ndarray, n_vocab: int, runs: int, env: dict[str, str]
) -> dict[str, Any]:
    from bitnet_crossval.crossval.candidates import parse_candidate
    from bitnet_crossval.crossval.candidates.python import PythonCandidate, PythonSpec

    module_name, _, function_name = target.rpartition(":")
    function = getattr(importlib.import_module(module_name), function_name)
    spec = parse_candidate(f"py:{target}")
    assert isinstance(spec, PythonSpec)
    direct, child, inner, made = [], [], [], []
    with tempfile.TemporaryDirectory(prefix="bitnet-py-bench-") as tmp:
        for _ in range(runs):
            direct.append(timed(lambda: function(str(model), tokens.copy())))
            started = time.perf_counter()
            candidate = PythonCandidate(spec, n_vocab=n_vocab, env=env)
            made.append(time.perf_counter() - started)
            started = time.perf_counter()
            output = candidate.run(model, tokens, work_dir=Path(tmp), trace=False)
            child.append(time.perf_counter() - started)
            inner.append(output.seconds)
    return {
        "function": target,
        "direct_median": statistics.median(direct),
        "direct_min": min(direct),
        "child_median": statistics.median(child),
        "child_min": min(child),
        "function_in_child_median": statistics.median(inner),
        "made_median": statistics.median(made),
        "overhead_median": statistics.median(child) - statistics.median(direct),
        "ratio_median": statistics.median(child) / statistics.median(direct)
        if statistics.median(direct) >= 0.01
        else None,
    }


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"  # against a function that takes no time: meaningless


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--tokens", type=int, default=22)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from bitnet_crossval.crossval.engine import load_engine

    with tempfile.TemporaryDirectory(prefix="bitnet-py-bench-model-") as tmp:
        model = args.model or write_model(Path(tmp))
        n_vocab = load_engine(model).n_vocab
        tokens = (np.arange(args.tokens, dtype=np.int32) * 7 + 1) % n_vocab
        module_dir = Path(tmp) / "bench_modules"
        module_dir.mkdir()
        (module_dir / "bench_zeros.py").write_text(f"N_VOCAB = {n_vocab}\n" + ZEROS_MODULE)
        sys.path.insert(0, str(module_dir))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(module_dir), str(REPO)])}
        results = [
            measure(target, model, tokens, n_vocab, args.runs, env)
            for target in ("bench_zeros:zeros", "examples.py_candidate:logits")
        ]
    print(
        f"py: candidate in a child process vs called in-process; {args.tokens} tokens, {args.runs} runs each, "
        f"n_vocab {n_vocab}"
    )
    print(f"{'function':32} {'direct':>9} {'child':>9} {'in child':>9} {'overhead':>9} {'ratio':>6} {'made':>8}")
    for r in results:
        print(
            f"{r['function']:32} {r['direct_median']:8.3f}s {r['child_median']:8.3f}s "
            f"{r['function_in_child_median']:8.3f}s {r['overhead_median']:+8.3f}s {ratio(r['ratio_median']):>6} "
            f"{r['made_median']:7.3f}s"
        )
    print("(medians; direct: the function called here; child: PythonCandidate.run; in child: the function's own")
    print(" time inside the child; made: making the candidate, the import check, once per crossval run)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
