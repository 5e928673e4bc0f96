"""Candidates for the crossval tests: ``py:tests.integration.crossval.candidate_fns:<function>``
and, run as a program, ``cmd:<python> <this file> MODE {model} {tokens} {out}``.

Correct ones (the NumPy engine, and a mirror of the fake llama.cpp's logits), faulty ones (the
engine with one deliberate fault), and broken ones (crash, hang, wrong shape, wrong dtype, NaN,
no output, not an .npy file).
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

if __package__ in (None, ""):  # run as a script by a cmd: candidate: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from bitnet_crossval.crossval.engine import EngineOptions, Fault, GGUFModelFile, load_engine

F32 = npt.NDArray[np.float32]
Tokens = npt.NDArray[np.int32]

# tests/data/legacy_llama_api/src/stub_llama.c: 259 tokens, logits sin(0.37 (v+1) + 0.01 state).
STUB_N_VOCAB = 259


def n_vocab_of(model_path: str) -> int:
    return int(GGUFModelFile(Path(model_path)).array_length("tokenizer.ggml.tokens") or 0)


# --- correct ---------------------------------------------------------------------------------


def engine(model_path: str, tokens: Tokens) -> F32:
    return load_engine(model_path).forward(tokens)


def stub_mirror(model_path: str, tokens: Tokens) -> F32:
    """What the fake llama.cpp (the 2024 API stub) computes: a causal summary of the prefix."""
    out = np.empty((len(tokens), STUB_N_VOCAB), dtype=np.float32)
    state = 0.0
    v = np.arange(1, STUB_N_VOCAB + 1, dtype=np.float64)
    for pos, token in enumerate(tokens):
        state = state * 0.5 + float(int(token) + 1) * float(pos + 1)
        out[pos] = np.sin(0.37 * v + 0.01 * state).astype(np.float32)
    return out


def stub_mirror_off_at_3(model_path: str, tokens: Tokens) -> F32:
    """The mirror with position 3 (and everything after it, as a causal bug would) shifted."""
    out = stub_mirror(model_path, tokens)
    out[3:] = np.roll(out[3:], 17, axis=1)
    return out


# --- faulty: the engine with one deliberate fault ------------------------------------------------


def _faulty(model_path: str, tokens: Tokens, name: str, value: float | None = None) -> F32:
    return load_engine(model_path, EngineOptions(fault=Fault(name=name, value=value))).forward(tokens)  # type: ignore[arg-type]


def rope_type(model_path: str, tokens: Tokens) -> F32:
    return _faulty(model_path, tokens, "rope_type")


def norm_eps(model_path: str, tokens: Tokens) -> F32:
    return _faulty(model_path, tokens, "norm_eps")


def missing_sub_norm(model_path: str, tokens: Tokens) -> F32:
    return _faulty(model_path, tokens, "missing_sub_norm")


def gqa_mapping(model_path: str, tokens: Tokens) -> F32:
    return _faulty(model_path, tokens, "gqa_mapping")


def sliding_window(model_path: str, tokens: Tokens) -> F32:
    return _faulty(model_path, tokens, "sliding_window")


def mask_ahead(model_path: str, tokens: Tokens) -> F32:
    return _faulty(model_path, tokens, "mask_ahead")


# --- broken ----------------------------------------------------------------------------------------


def raises(model_path: str, tokens: Tokens) -> F32:
    raise RuntimeError("the candidate's own bug\nsecond line")


def returns_list(model_path: str, tokens: Tokens) -> Any:
    return [[0.0]]


def wrong_shape(model_path: str, tokens: Tokens) -> F32:
    return np.zeros((len(tokens), 7), dtype=np.float32)


def transposed(model_path: str, tokens: Tokens) -> F32:
    return np.zeros((n_vocab_of(model_path), len(tokens)), dtype=np.float32)


def wrong_dtype(model_path: str, tokens: Tokens) -> Any:
    return np.zeros((len(tokens), n_vocab_of(model_path)), dtype=np.int32)


def nan_at_2(model_path: str, tokens: Tokens) -> F32:
    out = np.zeros((len(tokens), n_vocab_of(model_path)), dtype=np.float32)
    out[2, 5] = math.nan
    out[4, 0] = math.inf
    return out


def float64(model_path: str, tokens: Tokens) -> Any:
    """Correct logits as float64: accepted (the check wants floats, not float32 exactly)."""
    return engine(model_path, tokens).astype(np.float64)


PY_MODES = {
    "engine": engine,
    "stub_mirror": stub_mirror,
    "stub_mirror_off_at_3": stub_mirror_off_at_3,
    "wrong_shape": wrong_shape,
    "wrong_dtype": wrong_dtype,
    "nan_at_2": nan_at_2,
}


def main(argv: list[str]) -> int:
    """``MODE MODEL TOKENS OUT``: a cmd: candidate. MODE is a function above, or one of
    crash, hang, silent (writes nothing), garbage (writes a file that is not .npy)."""
    mode, model, tokens_path, out = argv
    if mode == "crash":
        print("CANDIDATE-SAYS: about to fail on purpose", file=sys.stderr, flush=True)
        return 3
    if mode == "hang":
        pid_file = os.environ.get("CANDIDATE_PID_FILE")
        if pid_file:
            Path(pid_file).write_text(f"{os.getpid()} {time.time()}")  # who it is, and when it started
        time.sleep(3600)  # longer than any test waits: only the suite's --candidate-timeout ends it sooner
        return 0
    if mode == "silent":
        return 0
    if mode == "garbage":
        Path(out).write_bytes(b"these are not logits")
        return 0
    tokens = np.load(tokens_path)
    assert tokens.dtype == np.int32 and tokens.ndim == 1, (tokens.dtype, tokens.shape)
    np.save(out, PY_MODES[mode](model, tokens))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
