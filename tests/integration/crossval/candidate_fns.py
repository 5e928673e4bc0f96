"""Candidates for the crossval tests: ``py:tests.integration.crossval.candidate_fns:<function>``
and, run as a program, ``cmd:<python> <this file> MODE {model} {tokens} {out}``.

Correct ones (the NumPy engine, and a mirror of the fake llama.cpp's logits), faulty ones (the
engine with one deliberate fault), and broken ones (crash, hang, wrong shape, wrong dtype, NaN,
all-zero or constant logits, no output, not an .npy file, outputs that are no regular file,
process exits, BaseExceptions, prints).
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

from bitnet_crossval.crossval.engine import EngineOptions, Fault, GGUFModelFile, TraceRecorder, load_engine

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


def zeros(model_path: str, tokens: Tokens) -> F32:
    """All-zero logits: every token equally likely. Never parity."""
    return np.zeros((len(tokens), n_vocab_of(model_path)), dtype=np.float32)


def constant(model_path: str, tokens: Tokens) -> F32:
    """The same logit for every token. Never parity."""
    return np.full((len(tokens), n_vocab_of(model_path)), 3.0, dtype=np.float32)


def exits_0(model_path: str, tokens: Tokens) -> F32:
    sys.exit(0)


def exits_3(model_path: str, tokens: Tokens) -> F32:
    sys.exit(3)


def os_exit_0(model_path: str, tokens: Tokens) -> F32:
    os._exit(0)


class CandidateStop(BaseException):
    """A BaseException of the candidate's own."""


def raises_base_exception(model_path: str, tokens: Tokens) -> F32:
    raise CandidateStop("the candidate's own BaseException")


def segfaults(model_path: str, tokens: Tokens) -> F32:
    import signal

    os.kill(os.getpid(), signal.SIGSEGV)
    return engine(model_path, tokens)


def sleeps(model_path: str, tokens: Tokens) -> F32:
    """Hangs; says where it runs first (CANDIDATE_PID_FILE), as the cmd: hang mode does."""
    _note("", "CANDIDATE_PID_FILE", str(os.getpid()))
    time.sleep(300)
    return engine(model_path, tokens)


def returns_str(model_path: str, tokens: Tokens) -> Any:
    return "these are not logits"


def prints_then_engine(model_path: str, tokens: Tokens) -> F32:
    """Correct, and chatty on stdout: with --format json the suite's stdout must stay one document."""
    print("CANDIDATE-PRINTS on stdout", flush=True)
    print("CANDIDATE-PRINTS on stderr", file=sys.stderr, flush=True)
    return engine(model_path, tokens)


def prints_then_raises(model_path: str, tokens: Tokens) -> F32:
    print("CANDIDATE-SAYS: about to raise on purpose", flush=True)
    raise RuntimeError("the candidate's own bug")


def accepts_trace_writes_nothing(model_path: str, tokens: Tokens, trace: str | None = None) -> F32:
    """The rope_type fault (a divergence); it takes a trace directory and writes nothing there."""
    return rope_type(model_path, tokens)


def nan_from_ffn_up_0(model_path: str, tokens: Tokens, trace: str | None = None) -> F32:
    """NaN logits; its trace turns NaN from ffn_up-0 on (everything before it is right)."""
    recorder = TraceRecorder() if trace else None
    logits = load_engine(model_path).forward(tokens, trace=recorder)
    if recorder is not None and trace is not None:
        poisoned = False
        for name, value in recorder.entries.items():
            poisoned = poisoned or name == "ffn_up-0"
            np.save(Path(trace) / f"{name}.npy", np.full_like(value, np.nan) if poisoned else value)
    return np.full_like(logits, np.nan)


def nan_attn_norm_in_trace(model_path: str, tokens: Tokens, trace: str | None = None) -> F32:
    """The rope_type fault (a divergence) whose trace holds an all-NaN attn_norm-0."""
    recorder = TraceRecorder() if trace else None
    logits = load_engine(model_path, EngineOptions(fault=Fault(name="rope_type"))).forward(  # type: ignore[arg-type]
        tokens, trace=recorder
    )
    if recorder is not None and trace is not None:
        for name, value in recorder.entries.items():
            np.save(Path(trace) / f"{name}.npy", np.full_like(value, np.nan) if name == "attn_norm-0" else value)
    return logits


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
    "zeros": zeros,
    "constant": constant,
    "rope_type": rope_type,
}


def main(argv: list[str]) -> int:
    """``MODE MODEL TOKENS OUT [TRACE]``: a cmd: candidate. MODE is a function above, or one of
    crash, hang, silent (writes nothing), garbage (writes a file that is not .npy), empty (a
    zero-byte file), huge_header (a header claiming a 4 EiB array), fifo_out (a FIFO at OUT),
    device_out (OUT a link to /dev/zero), replace_dir (the directory of OUT replaced by a file),
    keeps_stdout (correct logits, and a child left running with the output pipe open),
    trace_fifo / trace_device (rope_type logits; in a trace run a FIFO, or a link to /dev/zero,
    named like a tensor)."""
    mode, model, tokens_path, out = argv[:4]
    trace = argv[4] if len(argv) > 4 else ""
    _note_pid(out)
    if mode == "crash":
        print("CANDIDATE-SAYS: about to fail on purpose", file=sys.stderr, flush=True)
        return 3
    if mode == "hang":
        time.sleep(3600)  # longer than any test waits: only the suite's --candidate-timeout ends it sooner
        return 0
    if mode == "silent":
        return 0
    if mode in _BROKEN_OUTPUTS:
        _BROKEN_OUTPUTS[mode](Path(out))
        return 0
    tokens = np.load(tokens_path)
    assert tokens.dtype == np.int32 and tokens.ndim == 1, (tokens.dtype, tokens.shape)
    if mode == "keeps_stdout":
        import subprocess

        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])  # inherits stdout
        _note(out, "CANDIDATE_CHILD_PID_FILE", str(child.pid))
        np.save(out, engine(model, tokens))
        return 0
    if mode in ("trace_fifo", "trace_device"):
        np.save(out, rope_type(model, tokens))
        if trace:
            target = Path(trace) / "embd.npy"
            if mode == "trace_fifo":
                os.mkfifo(target)
            else:
                target.symlink_to("/dev/zero")
        return 0
    np.save(out, PY_MODES[mode](model, tokens))
    return 0


def _note(out: str, variable: str, text: str) -> None:
    path = os.environ.get(variable)
    if path:
        Path(path).write_text(text)


def _note_pid(out: str) -> None:
    """Where a test asks for them: this process's id, and the directory the suite gave it."""
    _note(out, "CANDIDATE_PID_FILE", f"{os.getpid()} {time.time()}")  # who it is, and when it started
    _note(out, "CANDIDATE_DIR_FILE", str(Path(out).parent))


def _huge_header(out: Path) -> None:
    np.save(out, np.zeros((2, 2), dtype=np.float32))
    raw = out.read_bytes().replace(b"(2, 2)", b"(4611686018427387904, 1)")
    out.write_bytes(raw)


def _replace_dir(out: Path) -> None:
    import shutil

    shutil.rmtree(out.parent)
    out.parent.write_text("a file where the candidate's directory was")


_BROKEN_OUTPUTS = {
    "garbage": lambda out: out.write_bytes(b"these are not logits"),
    "empty": lambda out: out.write_bytes(b""),
    "huge_header": _huge_header,
    "fifo_out": lambda out: os.mkfifo(out),
    "device_out": lambda out: out.symlink_to("/dev/zero"),
    "replace_dir": _replace_dir,
}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
