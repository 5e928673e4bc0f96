"""A cross-validation candidate as a separate program (the ``cmd:`` protocol).

    invoke crossval-per-token --candidate "cmd:python examples/cmd_candidate.py {model} {tokens} {out}"
    invoke crossval-per-token --trace \
        --candidate "cmd:python examples/cmd_candidate.py {model} {tokens} {out} --trace {trace} --fault rope_type"

It reads the model path, a ``.npy`` file of int32 token ids and the path to write, and writes a
float32 ``.npy`` of shape ``[n_tokens, n_vocab]``: the logits of every position from one causal
pass. This one uses the suite's NumPy engine, so it agrees with llama.cpp; ``--fault NAME``
breaks it on purpose (see ``bitnet_crossval.crossval.engine.FAULTS``) to watch the check fail.
With ``--trace DIR`` (``{trace}`` is an empty string unless the suite wants a trace) it also writes
its intermediates, one ``<name>.npy`` per tensor, named as llama.cpp names them. Your engine
replaces the lines marked below.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from bitnet_crossval.crossval.engine import EngineOptions, Fault, TraceRecorder, load_engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("tokens")
    parser.add_argument("out")
    parser.add_argument("--fault", default=None)
    parser.add_argument("--trace", default="")
    args = parser.parse_args()

    tokens = np.load(args.tokens)  # 1-D int32 token ids
    options = EngineOptions(fault=Fault(name=args.fault) if args.fault else None)  # your engine: load the model
    recorder = TraceRecorder() if args.trace else None
    logits = load_engine(args.model, options).forward(tokens, trace=recorder)  # your engine: [n_tokens, n_vocab]
    np.save(args.out, np.asarray(logits, dtype=np.float32))
    if recorder is not None:  # your engine: save the intermediates it has, [n_tokens, ...] float32
        trace_dir = Path(args.trace)
        trace_dir.mkdir(parents=True, exist_ok=True)
        for name, value in recorder.entries.items():
            np.save(trace_dir / f"{name}.npy", value)


if __name__ == "__main__":
    main()
