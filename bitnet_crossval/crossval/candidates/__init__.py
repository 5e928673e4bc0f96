"""Candidates: the implementations compared against the C++ reference, one module per kind.

``--candidate`` names one; the word before its first ``:`` picks the kind:

- ``numpy`` (the default): the built-in engine; ``numpy:FAULT`` the same with a deliberate bug;
- ``llama`` / ``bitnet``: a C++ backend through its shim (the backend names of
  :mod:`bitnet_crossval.backends.specs`);
- ``cmd:<command line>``: any program (:mod:`.command`);
- ``py:module:function``: a Python callable (:mod:`.python`);
- ``hf`` / ``hf:PATH``: Hugging Face transformers on the same model, or on a checkpoint (:mod:`.hf`).

Every kind satisfies :class:`~.base.CandidateKind`: it parses its own syntax and builds its
candidates. A new kind is a module with a ``KIND`` object and a line in :data:`KINDS` (or
:func:`register` from outside the package); nothing else in the suite names the kinds.
"""

from __future__ import annotations

from bitnet_crossval.crossval.candidates import backend, command, hf, numpy_engine, python
from bitnet_crossval.crossval.candidates.base import (
    Candidate,
    CandidateKind,
    CandidateOutput,
    CandidateSetting,
    CandidateSpec,
    Prepares,
    ReferenceFacts,
    Traced,
    TraceRequest,
    check_logits,
)
from bitnet_crossval.crossval.defaults import DEFAULT_CANDIDATE_TIMEOUT
from bitnet_crossval.errors import BadInput

DEFAULT_CANDIDATE = "numpy"

KINDS: list[CandidateKind] = [numpy_engine.KIND, backend.KIND, command.KIND, python.KIND, hf.KIND]


def register(kind: CandidateKind) -> None:
    """Add a kind (its heads must be new)."""
    taken = {head for known in KINDS for head in known.heads}
    clash = sorted(taken & set(kind.heads))
    if clash:
        raise ValueError(f"candidate kind heads already taken: {', '.join(clash)}")
    KINDS.append(kind)


def kind_for(head: str) -> CandidateKind | None:
    return next((kind for kind in KINDS if head in kind.heads), None)


def syntaxes() -> str:
    """Every kind's syntax, for help and error messages."""
    return ", ".join(kind.syntax for kind in KINDS)


def parse_candidate(text: str) -> CandidateSpec:
    """``--candidate``'s value; every problem is bad input found before anything runs."""
    raw = text.strip() or DEFAULT_CANDIDATE
    kind = kind_for(raw.split(":", 1)[0])
    if kind is None:
        raise BadInput(f"--candidate {text!r} is not a candidate", next_step=f"use {syntaxes()}")
    return kind.parse(raw)


def make_candidate(spec: CandidateSpec, setting: CandidateSetting) -> Candidate:
    """The candidate ``spec`` describes, built by its kind (it may load and check the model)."""
    kind = kind_for(spec.kind)
    assert kind is not None, f"no kind {spec.kind!r}: specs come from parse_candidate"
    return kind.build(spec, setting)


__all__ = [
    "DEFAULT_CANDIDATE",
    "DEFAULT_CANDIDATE_TIMEOUT",
    "KINDS",
    "Candidate",
    "CandidateKind",
    "CandidateOutput",
    "CandidateSetting",
    "CandidateSpec",
    "Prepares",
    "ReferenceFacts",
    "TraceRequest",
    "Traced",
    "check_logits",
    "kind_for",
    "make_candidate",
    "parse_candidate",
    "register",
    "syntaxes",
]
