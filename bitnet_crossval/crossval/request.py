"""What one cross-validation is asked to do (the parsed command line, or a script's request)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from bitnet_crossval.crossval.candidates import CandidateSpec, parse_candidate
from bitnet_crossval.crossval.defaults import (
    DEFAULT_CANDIDATE_TIMEOUT,
    DEFAULT_MAX_TOKENS,
    DEFAULT_PROMPT,
    DEFAULT_TIE_MARGIN,
    FloatTypeChoice,
    ReferenceMode,
)
from bitnet_crossval.crossval.models import ModelChoice, parse_model

if TYPE_CHECKING:
    from bitnet_crossval.backends.specs import BackendName
    from bitnet_crossval.reference.client import KvType


@dataclass(frozen=True, kw_only=True)
class CrossvalRequest:
    model: ModelChoice = field(default_factory=lambda: parse_model(None))
    backend: BackendName = "llama"
    prompt: str = DEFAULT_PROMPT
    prompt_set: str | None = None
    """The built-in text set ``prompt`` was taken from (``classics/moby-dick``), for the report."""
    prompt_file: Path | None = None
    """The file ``prompt`` was read from (``--prompt-file``), for the report."""
    prompt_tokens: int | None = None
    """Keep only the first N tokens of the prompt (of ``tokens_file`` too); None keeps them all.
    With ``prompt_set``, exactly N: the set's texts are joined, and repeated, until there are N."""
    tokens_file: Path | None = None
    tokenizer: Path | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    add_bos: bool | None = None
    """None: as the model's metadata says (``tokenizer.ggml.add_bos_token``)."""
    parse_special: bool = False
    candidate: CandidateSpec = field(default_factory=lambda: parse_candidate("numpy"))
    reference: ReferenceMode = "auto"
    """On a quantised model: the model as given, its float copy, or both (the candidate follows one)."""
    dequantize_to: FloatTypeChoice = "auto"
    """The float type of the copy (auto: F32, F16 when F32 does not fit)."""
    kl_max: float | None = None
    """None: by the reference followed (float limit), or the model's weight types with ``native``."""
    tie_margin: float = DEFAULT_TIE_MARGIN
    candidate_timeout: float = DEFAULT_CANDIDATE_TIMEOUT
    threads: int = 1
    cores: int = 0
    """Cores the run may keep busy at once (0: every core the process may use): what decides
    whether the two references are evaluated side by side, and whether the candidate prepares
    while the continuation is generated."""
    kv_type: KvType = "auto"
    bitnet_activation: Literal["silu", "relu2"] | None = None
    trace: bool = False
    """On a divergence, compare both sides' intermediates to find the first tensor that departs."""
    trace_layers: tuple[int, int] | None = None
    trace_names: str | None = None

    @property
    def trace_filtered(self) -> bool:
        """Whether ``--trace-layers`` or ``--trace-names`` narrowed the trace."""
        return self.trace_layers is not None or self.trace_names is not None
