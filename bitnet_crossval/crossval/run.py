"""One cross-validation: the reference and a candidate on the same tokens, position by position.

The reference (the shim of ``--backend``) tokenizes the prompt, greedily generates
``max_tokens`` more tokens, then evaluates prompt plus continuation in one causal batch; the
candidate evaluates the same ids; :mod:`~bitnet_crossval.crossval.metrics` compares every
position. Scripts call :func:`run_crossval` directly::

    from bitnet_crossval.context import load_context
    from bitnet_crossval.crossval import CrossvalRequest, parse_model, run_crossval

    result = run_crossval(CrossvalRequest(model=parse_model("model.gguf"), prompt="Hello"), load_context())
    print(result.verdict, result.summary.first_failure if result.summary else None)
"""

from __future__ import annotations

import functools
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bitnet_crossval.crossval import nonfinite, references
from bitnet_crossval.crossval.candidates import (
    Candidate,
    CandidateOutput,
    CandidateSetting,
    Prepares,
    ReferenceFacts,
    TraceRequest,
    make_candidate,
)
from bitnet_crossval.crossval.defaults import DEFAULT_KL_MAX_FLOAT, DEFAULT_KL_MAX_QUANTIZED
from bitnet_crossval.crossval.facts import model_facts
from bitnet_crossval.crossval.metrics import Thresholds, summarize
from bitnet_crossval.crossval.models import resolve_model, shim_quantizer
from bitnet_crossval.crossval.nonfinite import NonFinite, TracedTensor
from bitnet_crossval.crossval.request import CrossvalRequest
from bitnet_crossval.crossval.result import CrossvalResult, Verdict
from bitnet_crossval.crossval.tokens import (
    TokenMismatch,
    check_token_ids,
    first_difference,
    read_tokens_file,
    tokenizer_json_tokens,
)
from bitnet_crossval.crossval.trace import (
    RefTensor,
    TraceComparison,
    compare_traces,
    describe_filters,
)
from bitnet_crossval.crossval.trace_tolerance import TracePrecision, trace_precision
from bitnet_crossval.errors import BadInput
from bitnet_crossval.reference.lookup import recorded_shim
from bitnet_crossval.store.sources import source_dirs
from bitnet_crossval.util import ui
from bitnet_crossval.util.files import make_dir
from bitnet_crossval.util.machine import available_memory, usable_cores
from bitnet_crossval.util.npy_rows import row_blocks, rows_per_block
from bitnet_crossval.util.timefmt import file_stamp

if TYPE_CHECKING:
    from bitnet_crossval.context import SuiteContext
    from bitnet_crossval.crossval.engine import GGUFModelFile
    from bitnet_crossval.reference.client import Shim, TraceResult
    from bitnet_crossval.reference.dequantize import FloatCopy
    from bitnet_crossval.store.constants import BackendRecord

# Weight types whose matrices llama.cpp multiplies without quantising the activations: a model
# made only of these is held to the float threshold (docs/explanation/verdict.md).
FLOAT_TYPES = frozenset({"F32", "F16", "BF16", "F64"})


class Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._started = time.monotonic()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.monotonic() - started, 4)

    def total(self) -> float:
        return round(time.monotonic() - self._started, 4)


def run_crossval(request: CrossvalRequest, ctx: SuiteContext, *, work_dir: Path | None = None) -> CrossvalResult:
    """Run the whole comparison and return its result; a :class:`~bitnet_crossval.errors.SuiteError`
    when it cannot be made (bad input, a candidate that fails)."""
    if work_dir is None:
        # A candidate may leave its directories in a state rmtree trips over: never an error of the run.
        with tempfile.TemporaryDirectory(prefix="bitnet-crossval-", ignore_cleanup_errors=True) as tmp:
            return run_crossval(request, ctx, work_dir=Path(tmp))
    make_dir(work_dir)  # a file there is named as bad input, before anything runs
    timer = Timer()
    # llama.cpp's log of each shim call outlives the run (an error names it).
    log_dir = ctx.cache.logs / f"crossval-{file_stamp()}-{os.getpid()}"
    shim = recorded_shim(ctx.constants, request.backend, env=ctx.env, log_dir=log_dir)
    with ui.progress("cross-validation: preparing the model", total=5) as bar:
        prepared = _prepare(request, ctx, shim, timer, bar)
        model, info, n_vocab, prompt_tokens, model_description, thresholds, reference = (
            prepared.model,
            prepared.info,
            prepared.n_vocab,
            prepared.prompt_tokens,
            prepared.model_description,
            prepared.thresholds,
            prepared.reference,
        )
        if prepared.mismatch is not None:
            return CrossvalResult(
                verdict="token-mismatch",
                model=model_description,
                reference=reference,
                candidate={"label": request.candidate.label, "kind": request.candidate.kind},
                tokens=list(prompt_tokens),
                n_prompt=len(prompt_tokens),
                pieces=_pieces(shim, model, prompt_tokens),
                thresholds=thresholds,
                rows=[],
                summary=None,
                token_mismatch=prepared.mismatch,
                timings={**timer.seconds, "total": timer.total()},
            )
        bar.advance_to(2)
        bar.describe("cross-validation: loading the candidate")
        candidate_progress = _Meter(bar)
        with timer.phase("candidate_load"):
            candidate = _load_candidate(
                request, ctx, model=model, n_vocab=n_vocab, info=info, progress=candidate_progress
            )
        evaluated, shim_documents = _evaluate_references(
            request,
            ctx,
            shim,
            model=model,
            model_description=model_description,
            prompt_tokens=prompt_tokens,
            work_dir=work_dir,
            timer=timer,
            bar=bar,
            candidate=candidate,
        )
        tokens = evaluated.tokens
        shim_doc = shim_documents[model]
        reference.update(evaluated.settings)
        if evaluated.float_copy is not None:
            reference["float_copy"] = {
                **evaluated.float_copy.to_json(),
                "evaluated_side_by_side": evaluated.side_by_side,
            }
        result = functools.partial(
            CrossvalResult,
            model=model_description,
            reference=reference,
            n_prompt=len(prompt_tokens),
            token_mismatch=None,
            trace_filtered=request.trace_filtered,
        )
        reference_unreal = _unreal_reference(
            request, shim, evaluated, shim_documents, work_dir=work_dir, timer=timer, bar=bar
        )
        if reference_unreal is not None:
            # No candidate is run: nothing could be judged against these logits.
            return result(
                verdict="non-finite",
                thresholds=thresholds,
                candidate={"label": candidate.label, "kind": request.candidate.kind},
                tokens=list(tokens),
                pieces=_pieces(shim, model, tokens, shim_doc.get("pieces_hex")),
                rows=[],
                summary=None,
                timings={**timer.seconds, "total": timer.total()},
                non_finite=reference_unreal,
            )
        check_token_ids(tokens, n_vocab=n_vocab, where="the reference's continuation")
        candidate = candidate.follow(ReferenceFacts(kv_type_v=str(reference["settings"]["kv_type_v"])))
        bar.advance_to(3)
        bar.describe(f"cross-validation: the candidate ({candidate.label}) evaluates {len(tokens)} positions")
        with timer.phase("candidate"):
            output = _run_candidate(candidate, model, tokens, work_dir, progress=candidate_progress)
        bar.advance_to(4)
        bar.describe(f"cross-validation: comparing {len(tokens)} positions")
        with timer.phase("compare"):
            choice, thresholds, rows = references.judge(
                request.reference,
                evaluated,
                output.logits,
                base=thresholds,
                float_limit=request.kl_max if request.kl_max is not None else DEFAULT_KL_MAX_FLOAT,
                progress=ui.Rate(bar, len(tokens)),
            )
            summary = summarize(rows)
            candidate_unreal = nonfinite.find(output.logits, side="candidate", label=f"the candidate {candidate.label}")
        bar.advance_to(5)
        comparison = None
        reference_model = evaluated.models[choice.followed]
        if candidate_unreal is not None:
            if request.trace:
                bar.describe("cross-validation: looking for the candidate's first NaN or infinity")
                with timer.phase("trace"):
                    candidate_unreal = _explain_candidate(
                        request,
                        shim,
                        candidate,
                        candidate_unreal,
                        model=model,
                        reference_model=reference_model,
                        tokens=tokens,
                        work_dir=work_dir,
                    )
        elif request.trace and summary.first_failure is not None:
            bar.describe(f"cross-validation: tracing both sides up to position {summary.first_failure}")
            with timer.phase("trace"):
                comparison = _locate(
                    request,
                    shim,
                    candidate,
                    model=model,
                    reference_model=reference_model,
                    tokens=tokens,
                    first_failure=summary.first_failure,
                    work_dir=work_dir,
                    architecture=str(info.get("architecture")),
                    precision=trace_precision(_followed_weight_types(model_description["weight_types"], choice)),
                    thresholds=thresholds,
                )
    verdict: Verdict = "non-finite" if candidate_unreal is not None else ("parity" if summary.passed else "divergence")
    return result(
        verdict=verdict,
        thresholds=thresholds,
        candidate={"label": candidate.label, "kind": request.candidate.kind, "details": dict(output.details)},
        tokens=list(tokens),
        pieces=_pieces(shim, model, tokens, shim_doc.get("pieces_hex")),
        rows=rows,
        summary=summary,
        timings={**timer.seconds, "candidate_compute": round(output.seconds, 4), "total": timer.total()},
        trace=comparison,
        non_finite=candidate_unreal,
        references=choice,
    )


@dataclass(frozen=True, kw_only=True)
class _Prepared:
    """What the run knows before either side computes anything."""

    model: Path
    info: dict[str, Any]
    n_vocab: int
    prompt_tokens: list[int]
    mismatch: TokenMismatch | None
    model_description: dict[str, Any]
    thresholds: Thresholds
    reference: dict[str, Any]


def _prepare(request: CrossvalRequest, ctx: SuiteContext, shim: Shim, timer: Timer, bar: ui.ProgressTask) -> _Prepared:
    """The model (checked), its tokens, the thresholds and the reference's facts."""
    record = ctx.constants.record(request.backend)
    assert record is not None
    with timer.phase("model"):
        quantizer = shim_quantizer(ctx.constants, request.backend, env=ctx.env)
        model = resolve_model(
            request.model, cache=ctx.cache, env=ctx.env, source_dirs=source_dirs(record), quantizer=quantizer
        )
        facts = model_facts(ctx.cache, shim.executable, model, ask=lambda: shim.info(model))
        info = facts.info
        gguf = _open_gguf(model)
        if gguf is not None:
            _check_hyperparameters(gguf)
    n_vocab = int(info["vocab_size"])
    add_bos = bool(info.get("add_bos")) if request.add_bos is None else request.add_bos
    bar.advance_to(1)
    bar.describe("cross-validation: tokenizing")
    with timer.phase("tokenize"):
        prompt_tokens, prompt_text = prompt_ids(request, shim, model, add_bos=add_bos, n_vocab=n_vocab)
        mismatch = _tokenizer_mismatch(request, prompt_tokens, prompt_text, add_bos=add_bos)
    _check_context(len(prompt_tokens) + request.max_tokens, info, model)
    model_description, weight_types = _model_facts(model, gguf, info, sha256=facts.sha256)
    thresholds = Thresholds(
        kl_max=request.kl_max if request.kl_max is not None else _default_kl_max(weight_types),
        tie_margin=request.tie_margin,
    )
    return _Prepared(
        model=model,
        info=info,
        n_vocab=n_vocab,
        prompt_tokens=prompt_tokens,
        mismatch=mismatch,
        model_description=model_description,
        thresholds=thresholds,
        reference=_reference_facts(request, record, shim, info, add_bos=add_bos),
    )


def _reference_facts(
    request: CrossvalRequest, record: BackendRecord, shim: Shim, info: dict[str, Any], *, add_bos: bool
) -> dict[str, Any]:
    return {
        "backend": request.backend,
        "commit": record.source.get("commit", ""),
        "source": dict(record.source),
        "build_flags": list(record.build_flags),
        "shim": str(shim.executable),
        "api": info.get("api"),
        "tokenization": {
            "tokens_from": "tokens-file" if request.tokens_file is not None else "reference tokenizer",
            "prompt_file": str(request.prompt_file) if request.prompt_file is not None else None,
            "prompt_set": request.prompt_set,
            "prompt_tokens": request.prompt_tokens,
            "add_bos": add_bos,
            "parse_special": request.parse_special,
            "tokenizer_json": str(request.tokenizer) if request.tokenizer is not None else None,
        },
    }


def _load_candidate(
    request: CrossvalRequest,
    ctx: SuiteContext,
    *,
    model: Path,
    n_vocab: int,
    info: dict[str, Any],
    progress: Callable[[float], None] | None = None,
) -> Candidate:
    return make_candidate(
        request.candidate,
        CandidateSetting(
            model=model,
            n_vocab=n_vocab,
            architecture=str(info.get("architecture")),
            env=ctx.env,
            timeout=request.candidate_timeout,
            threads=request.threads,
            kv_type=request.kv_type,
            bitnet_activation=request.bitnet_activation,
            shim_for=lambda backend: recorded_shim(ctx.constants, backend, env=ctx.env),
            progress=progress,
        ),
    )


def _open_gguf(model: Path) -> GGUFModelFile | None:
    """The model's header and tensor directory (read once for the checks and facts below), or
    None when the NumPy reader cannot read it: llama.cpp loaded it, and what the reader cannot
    read is reported by whoever reads it."""
    from bitnet_crossval.crossval.engine import GGUFModelFile

    try:
        return GGUFModelFile(model)
    except BadInput:
        return None


def _check_hyperparameters(gguf: GGUFModelFile) -> None:
    """Hyperparameters that make llama.cpp abort (a negative norm epsilon: SIGABRT) or compute
    NaN are bad input before the reference runs, for any architecture and any candidate."""
    from bitnet_crossval.crossval.engine.hparams import check_hyperparameters

    check_hyperparameters(gguf)


def prompt_ids(
    request: CrossvalRequest, shim: Shim, model: Path, *, add_bos: bool, n_vocab: int
) -> tuple[list[int], str]:
    """The prompt's ids as the run evaluates them, and the text they came from ("" for ids)."""
    if request.tokens_file is not None:
        tokens = read_tokens_file(request.tokens_file)
        check_token_ids(tokens, n_vocab=n_vocab, where=f"the tokens file {request.tokens_file}")
        return fit_prompt(tokens, request), ""
    if not request.prompt:
        raise BadInput("the prompt is empty", next_step="pass --prompt TEXT or --tokens-file FILE")

    def tokenize(text: str) -> list[int]:
        return list(shim.tokenize(model, text, add_bos=add_bos, parse_special=request.parse_special).tokens)

    text = request.prompt
    tokens = tokenize(text)
    if not tokens:
        raise BadInput("the prompt tokenizes to no tokens", next_step="pass a longer --prompt, or --add-bos")
    wanted = request.prompt_tokens or 0
    if request.prompt_set is not None and len(tokens) < wanted:
        from bitnet_crossval.crossval.texts import joined_text, parse_prompt_set

        choice = parse_prompt_set(request.prompt_set)
        while len(tokens) < wanted:
            # Each round asks for more characters than the text has (wanted > tokens), so it ends.
            chars_per_token = len(text) / len(tokens)
            text = joined_text(choice, int(wanted * chars_per_token * 1.1) + 64)
            tokens = tokenize(text)
    return fit_prompt(tokens, request), text


def fit_prompt(tokens: list[int], request: CrossvalRequest) -> list[int]:
    """The prompt's ids as the run evaluates them: the first ``--prompt-tokens`` of them.

    The one place the length of the prompt is decided; a prompt shorter than asked for is
    evaluated whole (a prompt set is first joined up to the length asked for, by the caller).
    """
    return tokens[: request.prompt_tokens] if request.prompt_tokens else tokens


def _tokenizer_mismatch(
    request: CrossvalRequest, reference: list[int], text: str, *, add_bos: bool
) -> TokenMismatch | None:
    if request.tokenizer is None:
        return None
    if request.tokens_file is not None:
        raise BadInput(
            "--tokenizer compares tokenizations of --prompt, which --tokens-file replaces",
            next_step="pass one of --tokenizer and --tokens-file",
        )
    own = tokenizer_json_tokens(request.tokenizer, text, add_special_tokens=add_bos)
    return first_difference(reference, fit_prompt(own, request))


def _check_context(n_positions: int, info: dict[str, Any], model: Path) -> None:
    n_ctx = int(info.get("context_length") or 0)
    if n_ctx and n_positions > n_ctx:
        raise BadInput(
            f"the prompt and the continuation need {n_positions} positions, more than the context of {n_ctx} "
            f"that {model.name} was trained for",
            next_step="shorten the prompt (--prompt-tokens N keeps its first N tokens) or lower --max-tokens",
        )


def _model_facts(
    model: Path, gguf: GGUFModelFile | None, info: dict[str, Any], *, sha256: str
) -> tuple[dict[str, Any], list[str]]:
    # Unreadable here: the reference loaded it; the candidate will say what it cannot read.
    weight_types = (
        sorted({t.type_name for name, t in gguf.tensors.items() if len(t.shape) >= 2 and name.endswith(".weight")})
        if gguf is not None
        else []
    )
    facts = {
        "path": str(model),
        "sha256": sha256,
        "size_bytes": model.stat().st_size,
        "architecture": info.get("architecture"),
        "name": info.get("name"),
        "n_vocab": info.get("vocab_size"),
        "n_layer": info.get("n_layer"),
        "context_length": info.get("context_length"),
        "weight_types": weight_types,
        "precision": "float" if weight_types and set(weight_types) <= FLOAT_TYPES else "quantized",
    }
    return facts, weight_types


def _followed_weight_types(weight_types: list[str], choice: references.ReferenceChoice) -> list[str]:
    """The tensor types of the reference model the run followed: the float copy holds the float
    type in place of every quantised type, and every other tensor as it was."""
    if choice.followed != "dequantized" or choice.float_copy is None:
        return weight_types
    return sorted({choice.float_copy.float_type, *(t for t in weight_types if t in FLOAT_TYPES)})


def _default_kl_max(weight_types: list[str]) -> float:
    return DEFAULT_KL_MAX_FLOAT if weight_types and set(weight_types) <= FLOAT_TYPES else DEFAULT_KL_MAX_QUANTIZED


def _prepare_beside_generation(threads: int, candidate: Candidate, model: Path, *, cores: int) -> Prepares | None:
    """The candidate, when it has work to do before it knows the token ids and the machine has
    a core the generation leaves idle (more than ``--threads``) and the memory: for what the work
    fills, and for the float copy the backend maps next (about as large: both are the model's
    weights as floats) beside the model."""
    if not isinstance(candidate, Prepares) or cores <= threads:
        return None
    return candidate if _memory_holds(model, also=2 * candidate.prepare_bytes()) else None


def _prepare_candidate(candidate: Prepares, timer: Timer, stop: threading.Event) -> None:
    """The candidate's work before it knows the token ids, while the continuation is generated."""
    with timer.phase("candidate_prepare"):
        try:
            candidate.prepare(stop)
        except Exception as exc:  # met again, and reported, where the candidate runs
            ui.debug(f"the candidate's preparation stopped: {exc}")


def _evaluate_references(
    request: CrossvalRequest,
    ctx: SuiteContext,
    shim: Shim,
    *,
    model: Path,
    model_description: dict[str, Any],
    prompt_tokens: list[int],
    work_dir: Path,
    timer: Timer,
    bar: ui.ProgressTask,
    candidate: Candidate,
) -> tuple[references.Evaluated, dict[Path, dict[str, Any]]]:
    """The references the request asks for, on the same ids, and the shim's own document of
    each evaluation by the model it ran (its pieces, its count of values that are not finite);
    the candidate prepares while the continuation is generated, when it can."""
    names = references.references_to_run(request.reference, quantized=model_description["precision"] != "float")
    shim_documents: dict[Path, dict[str, Any]] = {}
    together = False
    cores = _cores(request)
    preparing = _prepare_beside_generation(request.threads, candidate, model, cores=cores)

    def generate(path: Path, prompt: list[int], n: int) -> list[int]:
        bar.describe(f"cross-validation: the reference generates {n} tokens")
        generated = shim.generate(path, prompt, n=n, threads=request.threads, kv_type=request.kv_type)
        return [*prompt, *generated.tokens]

    def decide_side_by_side(copy: FloatCopy) -> bool:
        # references.evaluate asks this once, before either evaluation starts.
        nonlocal together
        together = _references_side_by_side(request.threads, model, copy.path, cores=cores)
        return together

    def run_logits(path: Path, tokens: list[int], stop: threading.Event | None) -> tuple[Any, dict[str, Any]]:
        if together:
            heard = both.hear(path, len(tokens))
        else:
            where = "" if path == model else " of the float copy"
            bar.describe(f"cross-validation: the reference evaluates {len(tokens)} positions{where}")
            heard = ui.Rate(bar, len(tokens))
        logits, facts, document = _reference_logits(
            request,
            shim,
            path,
            tokens,
            work_dir,
            progress=heard,
            stop=stop,
            log_tag=None if path == model else "float-copy",
        )
        facts["settings"]["generated"] = len(tokens) - len(prompt_tokens)
        shim_documents[path] = document
        return logits, facts

    both = _BothReferences(bar, model=model)
    evaluated = references.evaluate(
        names,
        model=model,
        prompt=prompt_tokens,
        max_tokens=request.max_tokens,
        generate=generate,
        run_logits=run_logits,
        make_copy=lambda: _float_copy(request, ctx, shim, model, sha256=str(model_description["sha256"])),
        phase=timer.phase,
        copy_optional=request.reference == "auto",
        side_by_side=decide_side_by_side,
        beside_generation=functools.partial(_prepare_candidate, preparing, timer) if preparing else None,
    )
    return evaluated, shim_documents


def _cores(request: CrossvalRequest) -> int:
    """The cores the run may keep busy: ``--cores``, within what the process may use."""
    usable = usable_cores()
    return min(request.cores, usable) if request.cores > 0 else usable


def _references_side_by_side(threads: int, model: Path, copy: Path, *, cores: int) -> bool:
    """Whether the float copy may be evaluated beside the model as given: the cores for both at
    ``--threads`` each, and the memory for both files (each process maps its model whole)."""
    return 2 * threads <= cores and _memory_holds(model, copy)


def _memory_holds(*files: Path, also: int = 0) -> bool:
    """Whether ``MemAvailable`` holds the files (a process maps each whole) and ``also`` bytes
    more at once: yes where the system does not say, no when a file cannot be looked at."""
    memory = available_memory()
    if memory is None:
        return True
    try:
        needed = also + sum(path.stat().st_size for path in files)
    except OSError:
        return False
    return needed <= memory


class _BothReferences:
    """The progress of two evaluations running side by side, as one count of positions."""

    def __init__(self, bar: ui.ProgressTask, *, model: Path) -> None:
        self._bar = bar
        self._model = model
        self._done: dict[bool, int] = {}
        self._rate: ui.Rate | None = None
        self._lock = threading.Lock()

    def hear(self, path: Path, n: int) -> Callable[[int], None]:
        native = path == self._model
        with self._lock:
            if self._rate is None:
                self._bar.describe(
                    f"cross-validation: the reference evaluates {n} positions of the model and of its float copy, "
                    "side by side"
                )
                self._rate = ui.Rate(self._bar, 2 * n)
            self._done[native] = 0

        def heard(done: int) -> None:
            with self._lock:
                self._done[native] = done
                assert self._rate is not None
                self._rate(sum(self._done.values()))

        return heard


def _unreal_reference(
    request: CrossvalRequest,
    shim: Shim,
    evaluated: references.Evaluated,
    shim_documents: dict[Path, dict[str, Any]],
    *,
    work_dir: Path,
    timer: Timer,
    bar: ui.ProgressTask,
) -> NonFinite | None:
    """The first reference whose logits hold NaN or infinity, explained; every reference must
    also rank the vocabulary. The shim counts what is not finite as it writes; the rows are
    looked at only if it found any."""
    for name, ref_logits in evaluated.logits.items():
        if shim_documents.get(evaluated.models[name], {}).get("n_nonfinite") == 0:
            _check_ranks(ref_logits)
            continue
        label = "the reference" if name == "native" else "the reference on the float copy"
        found = nonfinite.find(ref_logits, side="reference", label=label)
        if found is not None:
            bar.describe("cross-validation: looking for the reference's first NaN or infinity")
            with timer.phase("non_finite"):
                return _explain_reference(
                    request, shim, found, model=evaluated.models[name], tokens=evaluated.tokens, work_dir=work_dir
                )
        _check_ranks(ref_logits)
    return None


def _float_copy(request: CrossvalRequest, ctx: SuiteContext, shim: Shim, model: Path, *, sha256: str) -> FloatCopy:
    """The model's float copy for this backend build (cached; written once under a lock)."""
    from bitnet_crossval.reference.dequantize import float_copy

    return float_copy(
        model, shim, cache=ctx.cache, float_type=request.dequantize_to, model_sha256=sha256, threads=request.threads
    )


REFERENCE_BLOCK = 64
"""Tokens per ``llama_decode`` call of the reference. llama.cpp's output buffer holds a row of
logits for each of them (64 MiB for Gemma 3's vocabulary), and the rows of a long sequence were
identical to a one-batch evaluation's with blocks of 64 and 256 (Gemma 3 270M Q4_K_M, 600
tokens), at the same speed: docs/reference/benchmarks.md."""


def _reference_logits(
    request: CrossvalRequest,
    shim: Shim,
    model: Path,
    tokens: list[int],
    work_dir: Path,
    *,
    progress: Callable[[int], None] | None = None,
    stop: threading.Event | None = None,
    log_tag: str | None = None,
) -> tuple[np.ndarray[Any, Any], dict[str, Any], dict[str, Any]]:
    """The reference's logits of every position of ``tokens`` (a read-only memory map of a file
    in ``work_dir`` written a block of positions at a time), the run's facts for the report and
    the shim's own document (its pieces, its count of values that are not finite)."""
    from bitnet_crossval.reference.client import run_report

    logits, doc = shim.logits(
        model,
        tokens,
        threads=request.threads,
        kv_type=request.kv_type,
        out_dir=work_dir,
        block=REFERENCE_BLOCK,
        progress=progress,
        stop=stop,
        log_tag=log_tag,
    )
    run = run_report(doc)
    settings = {
        "kv_type_k": run.kv_type_k,
        "kv_type_v": run.kv_type_v,
        "kv_fallback": run.kv_fallback,
        "threads": run.threads,
        "n_ctx": run.n_ctx,
        "n_ubatch": run.n_ubatch,
        "seed": run.seed,
        "flash_attn": doc.get("flash_attn", False),
        "causal": doc.get("causal", True),
    }
    return logits, {"settings": settings}, doc


def _check_ranks(logits: np.ndarray[Any, Any]) -> None:
    """The reference must rank the vocabulary: a row with one value for every token (an output
    norm or output matrix of zeros gives one) cannot judge a candidate, and would call a
    constant candidate's row agreement."""
    if logits.shape[1] < 2:
        return
    flat_rows: list[int] = []
    for start, rows in row_blocks(logits, rows_per_block(logits.shape[1])):
        flat_rows += [start + int(i) for i in np.flatnonzero(np.max(rows, axis=1) == np.min(rows, axis=1))]
    if not flat_rows:
        return
    flat = np.asarray(flat_rows)
    more = f" and {flat.size - 1} more" if flat.size > 1 else ""
    raise BadInput(
        f"the reference's logits at position {int(flat[0])}{more} are the same for every token, so they rank "
        "nothing and cannot judge a candidate",
        next_step="check the model's weights: an output norm or an output matrix of zeros gives such logits",
    )


def _explain_reference(
    request: CrossvalRequest, shim: Shim, found: NonFinite, *, model: Path, tokens: list[int], work_dir: Path
) -> NonFinite:
    """Which weights hold NaN or infinity and, with --trace, the first tensor of llama.cpp's graph
    that does (over the positions up to the first bad one)."""
    weights, checked = nonfinite.non_finite_weights(model)
    first_tensor = None
    if request.trace:
        positions = list(range(found.positions[0] + 1))
        _, traced = _trace_reference(request, shim, model, tokens, positions=positions, work_dir=work_dir)
        first_tensor = nonfinite.first_in_trace(
            [TracedTensor(name=t.name, layer=t.layer, op=t.op, load=t.load) for t in traced.tensors], positions
        )
    return replace(found, weights=weights, weights_checked=checked, traced=request.trace, first_tensor=first_tensor)


def _explain_candidate(
    request: CrossvalRequest,
    shim: Shim,
    candidate: Candidate,
    found: NonFinite,
    *,
    model: Path,
    reference_model: Path,
    tokens: list[int],
    work_dir: Path,
) -> NonFinite:
    """The first tensor of the candidate's trace holding NaN or infinity, in the reference's
    execution order (then the names only the candidate wrote), up to the first bad position."""
    positions = list(range(found.positions[0] + 1))
    trace_request, reference = _trace_reference(
        request, shim, reference_model, tokens, positions=positions, work_dir=work_dir
    )
    traced = candidate.trace(model, np.asarray(tokens, dtype=np.int32), request=trace_request, work_dir=work_dir)
    if not traced:
        return replace(found, traced=False)
    known = {t.name: t for t in reference.tensors}
    order = [
        TracedTensor(name=t.name, layer=t.layer, op=t.op, load=traced[t.name])
        for t in reference.tensors
        if t.name in traced
    ]
    order += [
        TracedTensor(name=name, layer=None, op="", load=load)
        for name, load in sorted(traced.items())
        if name not in known
    ]
    return replace(found, traced=True, first_tensor=nonfinite.first_in_trace(order, positions))


def _trace_reference(
    request: CrossvalRequest,
    shim: Shim,
    reference_model: Path,
    tokens: list[int],
    *,
    positions: list[int],
    work_dir: Path,
) -> tuple[TraceRequest, TraceResult]:
    """The reference's trace of ``positions`` under the request's filters, and the same request
    for the candidate's trace."""
    trace_request = TraceRequest(positions=positions, layers=request.trace_layers, names=request.trace_names)
    reference = shim.trace(
        reference_model,
        tokens,
        out_dir=work_dir / "reference-trace",
        layers=request.trace_layers,
        names=request.trace_names,
        positions=positions,
        threads=request.threads,
        kv_type=request.kv_type,
    )
    return trace_request, reference


def _run_candidate(
    candidate: Candidate, model: Path, tokens: list[int], work_dir: Path, *, progress: _Meter | None = None
) -> CandidateOutput:
    """The candidate's logits of ``tokens`` (a memory map of a file in ``work_dir`` for the
    built-in engine, which tells ``progress`` how far it is)."""
    if progress is not None:
        progress.start(len(tokens))
    return candidate.run(model, np.asarray(tokens, dtype=np.int32), work_dir=work_dir, trace=False)


def _locate(
    request: CrossvalRequest,
    shim: Shim,
    candidate: Candidate,
    *,
    model: Path,
    reference_model: Path,
    tokens: list[int],
    first_failure: int,
    work_dir: Path,
    architecture: str,
    precision: TracePrecision,
    thresholds: Thresholds,
) -> TraceComparison:
    """Trace both sides over positions 0..first_failure (the failing position depends on all of
    them) in the same batch as the logits of a run of one batch, and find the first tensor that
    departs. The reference traced is the one the candidate follows (``reference_model``: the
    model as given or its float copy); the candidate always runs the model as given."""
    positions = list(range(first_failure + 1))
    if len(tokens) > first_failure + 1 + REFERENCE_BLOCK:
        # The logits came in blocks already: trace what position first_failure depends on, and a
        # block after it (a candidate that wrongly looks ahead must still be seen doing so), so a
        # trace costs what the failure needs, not what the run's length would.
        tokens = tokens[: first_failure + 1 + REFERENCE_BLOCK]
    trace_request, reference = _trace_reference(
        request, shim, reference_model, tokens, positions=positions, work_dir=work_dir
    )
    ref_tensors = [
        RefTensor(name=t.name, layer=t.layer, op=t.op, shape=t.shape, load=t.load) for t in reference.tensors
    ]
    filtered = request.trace_filtered
    if not ref_tensors and filtered:
        # Nothing to compare whatever the candidate writes: the filters are the answer, not the candidate.
        return TraceComparison(
            positions=positions,
            precision=precision,
            kl_max=thresholds.kl_max,
            filtered=True,
            compared=[],
            first_departure=None,
            last_agreement=None,
            unmatched_filter=describe_filters(request.trace_layers, request.trace_names),
        )
    traced = candidate.trace(model, np.asarray(tokens, dtype=np.int32), request=trace_request, work_dir=work_dir)
    if traced is not None:
        # cmd: and py: candidates are not told the filters: what they wrote outside them is not
        # a difference, so it is dropped here as the reference's trace dropped it.
        known = {t.name for t in ref_tensors}
        traced = {name: load for name, load in traced.items() if name in known or _wanted(name, trace_request)}
    return compare_traces(
        ref_tensors,
        traced,
        architecture=architecture,
        positions=positions,
        precision=precision,
        thresholds=thresholds,
        filtered=filtered,
    )


def _wanted(name: str, request: TraceRequest) -> bool:
    from bitnet_crossval.crossval.engine import split_key

    _base, layer = split_key(name)
    if request.layers is not None and not request.layers[0] <= layer <= request.layers[1]:
        return False  # an unlayered name (layer -1) is outside any layer range
    return request.names is None or re.fullmatch(request.names, name) is not None


def _pieces(shim: Shim, model: Path, tokens: list[int], pieces_hex: Any = None) -> list[str]:
    """Each token's text for the table: as the reference's ``logits`` reported them, else from
    its ``detokenize``."""
    if isinstance(pieces_hex, list) and len(pieces_hex) == len(tokens):
        raw = [bytes.fromhex(str(piece)) for piece in pieces_hex]
    else:
        raw = list(shim.detokenize(model, tokens).pieces)
    return [piece.decode("utf-8", errors="replace") for piece in raw]


class _Meter:
    """The candidate's progress on the run's bar: built with the candidate (before the number of
    positions is known), started when it evaluates."""

    def __init__(self, bar: ui.ProgressTask) -> None:
        self._bar = bar
        self._rate: ui.Rate | None = None

    def start(self, n_positions: int) -> None:
        self._rate = ui.Rate(self._bar, n_positions)

    def __call__(self, done: float) -> None:
        if self._rate is not None:
            self._rate(done)
