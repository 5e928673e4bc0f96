"""A candidate that writes a partial trace in layouts of its own, for tests/integration/crossval/test_trace_real.py.

It is the suite's NumPy engine with one deliberate fault, traced with TraceRecorder (every
position), but what it writes into the trace directory is not the reference's layout:

- no ``Vcur-*`` at all (the comparison must say they are missing, and go on);
- ``Qcur-*`` with the heads merged, ``[n_tokens, n_head * head_dim]``;
- one tensor llama.cpp does not name, ``scratch-<layer>`` (the comparison must list it).

As a program (a ``cmd:`` candidate)::

    python partial_trace.py FAULT MODEL TOKENS OUT [TRACE_DIR [--write-nothing]]

``FAULT`` ``none`` for the engine as it is. ``TRACE_DIR`` empty or absent: no trace (what
``{trace}`` becomes when none is asked for). ``--write-nothing``: accept a trace directory and
leave it empty (a candidate that promises a trace and writes none).
As a ``py:`` candidate: ``py:tests.data.crossval_trace.partial_trace:mask_ahead`` (and the other
functions below), which take the ``trace`` keyword argument.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt

if __package__ in (None, ""):  # run as a script by a cmd: candidate: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from bitnet_crossval.crossval.engine import EngineOptions, Fault, TraceRecorder, load_engine, split_key

F32 = npt.NDArray[np.float32]

SKIPPED = "Vcur"
MERGED = "Qcur"
SCRATCH_LAYER = 1
SCRATCH = f"scratch-{SCRATCH_LAYER}"


def write_partial_trace(entries: dict[str, F32], directory: Path) -> list[str]:
    """Write ``entries`` as this candidate does; returns the names written, in order."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for key, value in entries.items():
        name, layer = split_key(key)
        if name == SKIPPED:
            continue
        array = value.reshape(value.shape[0], -1) if name == MERGED else value
        np.save(directory / f"{key}.npy", np.asarray(array, dtype=np.float32))
        written.append(key)
        if name == "l_out" and layer == SCRATCH_LAYER:
            np.save(directory / f"{SCRATCH}.npy", np.zeros_like(value))
            written.append(SCRATCH)
    return written


def evaluate(
    model_path: str, tokens: npt.NDArray[np.int32], fault: str, trace: str | None, *, write: bool = True
) -> F32:
    options = EngineOptions(fault=Fault(name=fault) if fault else None)  # type: ignore[arg-type]
    recorder = TraceRecorder() if trace else None
    logits = load_engine(model_path, options).forward(tokens, trace=recorder)
    if recorder is not None and trace and write:
        write_partial_trace(recorder.entries, Path(trace))
    return np.asarray(logits, dtype=np.float32)


# --- py: candidates --------------------------------------------------------------------------


def mask_ahead(model_path: str, tokens: npt.NDArray[np.int32], trace: str | None = None) -> F32:
    return evaluate(model_path, tokens, "mask_ahead", trace)


def correct(model_path: str, tokens: npt.NDArray[np.int32], trace: str | None = None) -> F32:
    return evaluate(model_path, tokens, "", trace)


def main(argv: list[str]) -> int:
    fault, model, tokens_path, out, *rest = argv
    trace = rest[0] if rest else ""
    write = "--write-nothing" not in rest[1:]
    tokens = np.load(tokens_path)
    np.save(out, evaluate(model, tokens, "" if fault == "none" else fault, trace or None, write=write))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
