"""The hf candidate's child process: transformers on the model under test, one causal pass.

``python -m bitnet_crossval.crossval.hf --model M.gguf --tokens T.npy --out L.npy [...]`` loads
the model (:mod:`.load`), evaluates the token ids of ``T.npy`` (a 1-D integer array, the
reference tokenizer's ids, never re-tokenised) in one causal forward pass in float32 on the CPU
with eager attention and no KV cache, and writes the logits ``[n_tokens, n_vocab]`` float32 to
``L.npy``. With ``--trace DIR`` it also writes the intermediates under llama.cpp's names
(:mod:`.taps`), one ``<name>.npy`` per tensor, token axis first.

It runs as a child so that torch crashing, hanging or running out of memory ends this process
only. Lines starting ``hf: `` tell what it is doing; a failure ends with the suite's
``error:``/``next:`` lines and the exit code of :mod:`bitnet_crossval.errors`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bitnet_crossval.errors import BadInput, SuiteError, UnclassifiedError
from bitnet_crossval.util.files import write_atomic

PROGRESS_PREFIX = "hf: "

PATCH_ENV = "BITNET_HF_PATCH"
"""The fault-injection seam: ``MODULE:FUNCTION`` (MODULE importable by the child). After loading,
the child calls ``FUNCTION(model)`` on the transformers model, which may replace any module's
forward, to show that the cross-validation catches and locates a deliberately broken layer. The
run's details name it (``patched_by``) and a progress line says so; unset, nothing changes."""

# Set before transformers is imported: no network (the model is local), no progress bars
# drawn with carriage returns into a log read line by line.
CHILD_ENV_DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TQDM_DISABLE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
    "PYTHONUNBUFFERED": "1",
}


def say(message: str) -> None:
    print(PROGRESS_PREFIX + message, flush=True)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bitnet_crossval.crossval.hf",
        description="Logits (and a llama.cpp-named trace) of a model run by Hugging Face transformers.",
    )
    parser.add_argument("--model", type=Path, required=True, help="the GGUF model under test")
    parser.add_argument("--checkpoint", type=Path, help="a Hugging Face checkpoint directory to run instead")
    parser.add_argument("--tokens", type=Path, required=True, help=".npy 1-D integer array of token ids")
    parser.add_argument("--out", type=Path, required=True, help="where the float32 logits .npy goes")
    parser.add_argument("--trace", type=Path, help="a directory for the intermediates (one <name>.npy each)")
    parser.add_argument("--trace-layers", default="", help="A or A-B: only these layers' tensors")
    parser.add_argument("--trace-names", default="", help="a regular expression the whole name must match")
    parser.add_argument("--trace-positions", default="", help="comma-separated token positions to keep")
    parser.add_argument("--cache-root", type=Path, help="the suite's cache root (dequantised weights go below it)")
    parser.add_argument("--details", type=Path, help="where a JSON document of what was done goes")
    parser.add_argument("--threads", type=int, default=0, help="torch's CPU threads (0: torch's default)")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    for key, value in CHILD_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except SuiteError as exc:
        print(exc.render(), file=sys.stderr, flush=True)
        return exc.exit_code
    except MemoryError:
        error = UnclassifiedError(
            "transformers ran out of memory", next_step="free memory or use a smaller model, then rerun"
        )
        print(error.render(), file=sys.stderr, flush=True)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # transformers' or torch's own failure: the traceback goes to the log, one sentence last.
        traceback.print_exc()
        reason = " ".join(str(exc).split()) or "(no message)"
        error = UnclassifiedError(
            f"transformers failed: {type(exc).__name__}: {reason}", next_step="read the traceback above"
        )
        print(error.render(), file=sys.stderr, flush=True)
        return error.exit_code
    return 0


def run(args: argparse.Namespace) -> None:
    from bitnet_crossval.crossval.hf.availability import require_hf

    require_hf()
    tokens = read_tokens(args.tokens)
    started = time.monotonic()
    say("importing torch and transformers")
    import torch
    import transformers

    from bitnet_crossval.crossval.hf.load import LoadRequest, load_model
    from bitnet_crossval.store.layout import CacheLayout
    from bitnet_crossval.store.lock import lock_timeout_from

    transformers.utils.logging.set_verbosity_error()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cache = CacheLayout(args.cache_root) if args.cache_root is not None else None
    loaded = load_model(
        LoadRequest(
            model=args.model, checkpoint=args.checkpoint, cache=cache, lock_timeout=lock_timeout_from(os.environ)
        ),
        say=say,
    )
    model = loaded.model
    patched_by = apply_patch(model, os.environ.get(PATCH_ENV, "").strip())
    n_vocab = int(model.config.vocab_size)
    if tokens.size and (int(tokens.min()) < 0 or int(tokens.max()) >= n_vocab):
        raise BadInput(
            f"the token ids in {args.tokens} must lie in [0, {n_vocab}); "
            f"they span {int(tokens.min())}..{int(tokens.max())}",
            next_step="pass the ids of this model's vocabulary",
        )

    recorder = _recorder(args) if args.trace is not None else None
    say(f"forward pass over {tokens.size} positions (float32, eager attention, no cache)")
    forward_started = time.monotonic()
    logits, trace_facts = forward(model, tokens, recorder=recorder)
    forward_seconds = time.monotonic() - forward_started
    _write_npy(args.out, logits)
    if recorder is not None:
        _write_trace(args.trace, recorder.entries)
        trace_facts["written"] = len(recorder)
    say(f"done: logits {list(logits.shape)} in {forward_seconds:.2f}s")
    if args.details is not None:
        details = {
            "engine": "transformers",
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "model_type": str(getattr(model.config, "model_type", "")),
            "architecture": type(model).__name__,
            "dtype": "float32",
            "attention": "eager",
            "threads": torch.get_num_threads(),
            **{k: v for k, v in loaded.facts.items() if k != "raw_config"},
            "config_findings": [f.to_json() for f in loaded.findings],
            "forward_seconds": round(forward_seconds, 4),
            "total_seconds": round(time.monotonic() - started, 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "trace": trace_facts if recorder is not None else None,
            "patched_by": patched_by,
        }
        write_atomic(args.details, (json.dumps(details, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def forward(model: Any, tokens: npt.NDArray[np.int64], *, recorder: Any = None) -> tuple[Any, dict[str, Any]]:
    """Logits ``[n_tokens, n_vocab]`` float32 of one causal pass; ``recorder`` (a TraceRecorder)
    receives the intermediates under llama.cpp's names."""
    import contextlib

    import torch

    from bitnet_crossval.crossval.hf.taps import attached, record_logits

    ids = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.int64)).reshape(1, -1)
    facts: dict[str, Any] = {}
    with torch.inference_mode():
        if recorder is None:
            output = model(input_ids=ids, use_cache=False)
            return np.ascontiguousarray(output.logits[0].float().numpy(), dtype=np.float32), facts
        with contextlib.ExitStack() as stack:
            session = stack.enter_context(attached(model, recorder))
            output = model(input_ids=ids, use_cache=False)
        logits = np.ascontiguousarray(output.logits[0].float().numpy(), dtype=np.float32)
        record_logits(session, recorder, logits)
    facts["mapped"] = session is not None
    facts["unmapped"] = session.unmapped if session is not None else []
    if session is None:
        say(f"no llama.cpp names are known for {getattr(model.config, 'model_type', '?')!r} models: no trace written")
    return logits, facts


def apply_patch(model: Any, target: str) -> str | None:
    """Call the :data:`PATCH_ENV` function ``target`` on ``model``; None when there is none."""
    if not target:
        return None
    import importlib

    module_name, _, function_name = target.partition(":")
    if not module_name or not function_name.isidentifier():
        raise BadInput(
            f"{PATCH_ENV}={target!r} is not MODULE:FUNCTION",
            next_step=f"set it to MODULE:FUNCTION or unset {PATCH_ENV}",
        )
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise BadInput(
            f"{PATCH_ENV}={target!r} names nothing the child can import ({exc})",
            next_step=f"put MODULE on PYTHONPATH or unset {PATCH_ENV}",
        ) from exc
    function(model)
    say(f"the model was patched by {target} ({PATCH_ENV}): its results are not transformers' own")
    return target


def read_tokens(path: Path) -> npt.NDArray[np.int64]:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BadInput(
            f"the token file {path} is not a readable .npy file ({exc})", next_step="write it with numpy.save"
        ) from exc
    if array.ndim != 1 or array.dtype.kind not in "iu" or array.size == 0:
        raise BadInput(
            f"the token file {path} holds a {array.dtype} array of shape {list(array.shape)}",
            next_step="pass a non-empty 1-D integer array (int32) of token ids",
        )
    return np.asarray(array, dtype=np.int64)


def _recorder(args: argparse.Namespace) -> Any:
    from bitnet_crossval.crossval.engine.trace import TraceRecorder
    from bitnet_crossval.crossval.trace import parse_layers, parse_names

    layers = parse_layers(args.trace_layers)
    positions = [int(p) for p in args.trace_positions.split(",") if p.strip()] if args.trace_positions else None
    return TraceRecorder(
        layers=range(layers[0], layers[1] + 1) if layers is not None else None,
        name_regex=parse_names(args.trace_names),
        positions=positions,
        include_global=layers is None,
    )


def _write_npy(path: Path, array: npt.NDArray[Any]) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    write_atomic(path, buffer.getvalue(), what="the logits file")


def _write_trace(directory: Path, entries: dict[str, npt.NDArray[np.float32]]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in entries.items():
        np.save(directory / f"{name}.npy", array, allow_pickle=False)
