"""``crossval-per-token``'s option values, parsed and checked before anything runs.

The task passes every option as the text the user typed; this module turns it into a
:class:`~bitnet_crossval.crossval.run.CrossvalRequest` or says, in one sentence, what is wrong
(exit 6). Nothing here takes a lock, reads a model or starts a process.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Literal

from bitnet_crossval.backends.specs import spec_for
from bitnet_crossval.crossval.candidates import DEFAULT_CANDIDATE_TIMEOUT, parse_candidate
from bitnet_crossval.crossval.metrics import DEFAULT_TIE_MARGIN
from bitnet_crossval.crossval.models import parse_model
from bitnet_crossval.crossval.run import DEFAULT_MAX_TOKENS, DEFAULT_PROMPT, CrossvalRequest
from bitnet_crossval.crossval.trace import parse_layers, parse_names
from bitnet_crossval.errors import BadInput

OutputFormat = Literal["text", "json"]
MAX_GENERATED = 4096
MAX_THREADS = 512


def parse_int(value: str, *, option: str, default: int, minimum: int, maximum: int) -> int:
    text = value.strip()
    if not text:
        return default
    if not re.fullmatch(r"[0-9]{1,7}", text) or not minimum <= int(text) <= maximum:
        raise BadInput(
            f"{option} {value!r} is not a whole number from {minimum} to {maximum}",
            next_step=f"pass {option} with a value such as {default}",
        )
    return int(text)


def parse_float(value: str, *, option: str, default: float, example: float) -> float:
    parsed = parse_optional_float(value, option=option, example=example)
    return default if parsed is None else parsed


def parse_optional_float(value: str, *, option: str, example: float) -> float | None:
    """A number of at least 0, or None when the option was not given."""
    text = value.strip()
    if not text:
        return None
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number < 0:
        raise BadInput(f"{option} {value!r} is not a number of at least 0", next_step=f"pass {option} {example}")
    return number


def parse_choice(value: str, *, option: str, choices: tuple[str, ...], default: str) -> str:
    text = value.strip() or default
    if text not in choices:
        raise BadInput(
            f"{option} {value!r} is not one of {', '.join(choices)}", next_step=f"pass {option} {choices[0]}"
        )
    return text


def parse_format(value: str) -> OutputFormat:
    return (
        "json" if parse_choice(value, option="--format", choices=("text", "json"), default="text") == "json" else "text"
    )


def parse_output(value: str, *, what: str) -> Path | None:
    """An output file option (``--report``, ``--plot``, ``--junit``), checked before anything runs."""
    from bitnet_crossval.crossval.report import check_output_path

    if not value.strip():
        return None
    path = Path(value).expanduser().absolute()
    check_output_path(path, what=what)
    return path


def build_request(
    *,
    model: str,
    tokenizer: str,
    prompt: str | None,
    tokens_file: str,
    max_tokens: str,
    backend: str,
    candidate: str,
    add_bos: str,
    parse_special: bool,
    kl_max: str,
    tie_margin: str,
    candidate_timeout: str,
    threads: str,
    bitnet_activation: str,
    trace: bool = False,
    trace_layers: str = "",
    trace_names: str = "",
) -> CrossvalRequest:
    """The request the options describe; every problem is :class:`BadInput`."""
    spec = spec_for(backend or "llama")
    bos = parse_choice(add_bos, option="--add-bos", choices=("auto", "yes", "no"), default="auto")
    activation = parse_choice(
        bitnet_activation, option="--bitnet-activation", choices=("auto", "silu", "relu2"), default="auto"
    )
    if tokens_file.strip() and prompt:
        raise BadInput("--prompt and --tokens-file both give the tokens", next_step="pass one of them")
    return CrossvalRequest(
        model=parse_model(model or None),
        backend=spec.name,
        prompt=DEFAULT_PROMPT if prompt is None else prompt,
        tokens_file=Path(tokens_file).expanduser().absolute() if tokens_file.strip() else None,
        tokenizer=Path(tokenizer).expanduser().absolute() if tokenizer.strip() else None,
        max_tokens=parse_int(
            max_tokens, option="--max-tokens", default=DEFAULT_MAX_TOKENS, minimum=0, maximum=MAX_GENERATED
        ),
        add_bos=None if bos == "auto" else bos == "yes",
        parse_special=parse_special,
        candidate=parse_candidate(candidate),
        kl_max=parse_optional_float(kl_max, option="--kl-max", example=0.05),
        tie_margin=parse_float(
            tie_margin, option="--tie-margin", default=DEFAULT_TIE_MARGIN, example=DEFAULT_TIE_MARGIN
        ),
        candidate_timeout=parse_float(
            candidate_timeout, option="--candidate-timeout", default=DEFAULT_CANDIDATE_TIMEOUT, example=600
        ),
        threads=parse_int(threads, option="--threads", default=1, minimum=1, maximum=MAX_THREADS),
        bitnet_activation=None if activation == "auto" else activation,  # type: ignore[arg-type]
        trace=trace or bool(trace_layers.strip() or trace_names.strip()),
        trace_layers=parse_layers(trace_layers),
        trace_names=parse_names(trace_names),
    )
