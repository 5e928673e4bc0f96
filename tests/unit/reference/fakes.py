"""A fake ``bitnet-shim`` (a small Python script driven by a JSON plan) for the client's and
build_shim's unit tests."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bitnet_crossval.reference.client import Shim

FAKE_SHIM = """\
import json, os, signal, sys

plan = json.load(open(os.environ["FAKE_SHIM_PLAN"]))
argv = sys.argv[1:]
files = {}
for flag in ("--tokens-file", "--text-file"):
    if flag in argv:
        with open(argv[argv.index(flag) + 1], "rb") as handle:
            files[flag] = handle.read().hex()
with open(os.environ["FAKE_SHIM_RECORD"], "a") as handle:
    handle.write(json.dumps({"argv": argv, "files": files}) + "\\n")
if plan.get("npy_shape"):
    import numpy
    out = argv[argv.index("--out" if "--out" in argv else "--out-logits") + 1]
    rows, cols = plan["npy_shape"]
    numpy.save(out, numpy.arange(rows * cols, dtype=numpy.float32).reshape(rows, cols))
if plan.get("trace_manifest"):
    import numpy
    out_dir = argv[argv.index("--out-dir") + 1]
    os.makedirs(out_dir, exist_ok=True)
    manifest = plan["trace_manifest"]
    for tensor in (t for t in manifest["tensors"] if "file" in t and "shape" in t):
        shape = tensor["shape"] if not plan.get("wrong_shape") else [1]
        numpy.save(os.path.join(out_dir, tensor["file"]), numpy.ones(shape, dtype=numpy.float32))
    rows, cols = manifest["logits"]["shape"]
    numpy.save(os.path.join(out_dir, manifest["logits"]["file"]), numpy.zeros((rows, cols), dtype=numpy.float32))
    with open(os.path.join(out_dir, "trace.json"), "w") as handle:
        json.dump(manifest, handle)
if plan.get("quantized"):
    with open(argv[argv.index("--out") + 1], "wb") as handle:
        handle.write(b"GGUF" + bytes(plan["quantized"]))
if plan.get("signal"):
    os.kill(os.getpid(), plan["signal"])
if plan.get("sleep"):
    import time
    time.sleep(plan["sleep"])
sys.stdout.write(plan.get("stdout", ""))
sys.stderr.write(plan.get("stderr", ""))
sys.exit(plan.get("exit", 0))
"""

Plan = Callable[..., Shim]


def calls(tmp_path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (tmp_path / "record.jsonl").read_text().splitlines()]


def option(argv: Sequence[str], name: str) -> str:
    return argv[argv.index(name) + 1]
