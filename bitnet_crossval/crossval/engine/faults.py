"""The deliberate faults of the self-check: what each does, where it applies, where it first shows.

The self-check (``invoke crossval-selfcheck``) runs the engine with one fault at a time and
proves the cross-validation catches it and locates it. So every fault is named, documented,
and knows the first traced tensor it changes (:func:`fault_site`): a checker that bisects a
trace against the reference must stop exactly there.

A fault is declared once, by the module that implements it: the faults any graph can suffer
(RoPE, norms, the FFN, the attention and its mask) in :mod:`.graph`, the faults of one
architecture in that architecture's module under :mod:`.archs`. Each architecture lists the
faults that apply to it, each with the tensor it first changes in that graph
(:class:`LocatedFault`); :data:`FAULTS` is the union over the registered architectures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NewType

import numpy as np
import numpy.typing as npt

from bitnet_crossval.crossval.engine.hparams import HParams
from bitnet_crossval.crossval.engine.trace import TraceSite
from bitnet_crossval.errors import BadInput
from bitnet_crossval.util.views import LiveMapping, LiveSequence

F32Array = npt.NDArray[np.float32]

FaultName = NewType("FaultName", str)
"""The name of a declared fault (``numpy:NAME`` on the command line)."""

SiteRule = Callable[[HParams], TraceSite]
"""Where a fault first shows on a model with these hyperparameters."""

WeightChange = Callable[[str, F32Array, float | None], F32Array | None]
"""(weight name, its values, the fault's magnitude) -> the faulty values, or None to leave it alone."""


@dataclass(frozen=True, kw_only=True)
class FaultSpec:
    """What a fault does and the magnitude used when none is given.

    ``check`` raises :class:`BadInput` when the fault cannot change a model with these
    hyperparameters (so a self-check cannot pass by accident). ``change_weight`` is for faults
    in the weights themselves; the engine applies it to every weight it reads. ``positions``
    is for faults that leave the first positions of a run alone: how many positions a run of a
    model with these hyperparameters needs for the fault to show (None: any run shows it).
    """

    name: FaultName
    description: str
    default_value: float | None = None
    value_meaning: str = "unused"
    check: Callable[[HParams], None] | None = None
    change_weight: WeightChange | None = None
    positions: Callable[[HParams], int] | None = None

    @property
    def families(self) -> frozenset[str]:
        """The registered architectures this fault applies to."""
        from bitnet_crossval.crossval.engine.archs import families_of

        return families_of(self.name)


@dataclass(frozen=True)
class LocatedFault:
    """A fault as one architecture applies it: the fault, and the first traced tensor it changes there."""

    spec: FaultSpec
    site: SiteRule


def at(name: str, layer: int = 0) -> SiteRule:
    """A site that does not depend on the model: ``at("Qcur")`` is ``Qcur-0``."""
    site = TraceSite(name, layer)

    def rule(_hp: HParams) -> TraceSite:
        return site

    return rule


def _registered_faults() -> dict[FaultName, FaultSpec]:
    # The architecture modules import this one, so the registry is imported when it is read.
    from bitnet_crossval.crossval.engine.archs import registered_faults

    return registered_faults()


FAULTS: LiveMapping[FaultName, FaultSpec] = LiveMapping(_registered_faults)
"""Every fault of the registered architectures, by name (a live view: registering adds to it)."""

FAULT_NAMES: LiveSequence[FaultName] = LiveSequence(lambda: tuple(_registered_faults()))


@dataclass(frozen=True, kw_only=True)
class Fault:
    """One deliberate fault; ``value`` overrides its default magnitude (see :data:`FAULTS`)."""

    name: FaultName
    value: float | None = None

    def __post_init__(self) -> None:
        if self.name not in FAULTS:
            raise BadInput(
                f"unknown fault {self.name!r}",
                next_step=f"use one of: {', '.join(FAULT_NAMES)}",
            )

    @property
    def spec(self) -> FaultSpec:
        return FAULTS[self.name]

    @property
    def magnitude(self) -> float | None:
        return self.value if self.value is not None else self.spec.default_value


def check_fault_applies(fault: Fault, hp: HParams) -> LocatedFault:
    """BadInput when ``fault`` cannot change this model's results; else how its architecture applies it."""
    from bitnet_crossval.crossval.engine.archs import ALL_ARCHITECTURES

    spec = fault.spec
    located = next((f for f in ALL_ARCHITECTURES[hp.family].FAULTS if f.spec.name == fault.name), None)
    if located is None:
        raise BadInput(
            f"the fault {fault.name!r} applies to {', '.join(sorted(spec.families))} models, not to {hp.architecture}",
            next_step="pick a fault listed for this architecture",
        )
    if spec.check is not None:
        spec.check(hp)
    return located


def positions_needed(fault: Fault, hp: HParams) -> int | None:
    """How many positions a run needs for ``fault`` to show on this model (None: any run shows it)."""
    rule = fault.spec.positions
    return rule(hp) if rule is not None else None


def fault_site(fault: Fault, hp: HParams) -> TraceSite:
    """The first tensor, in llama.cpp's execution order, whose value the fault changes.

    Only the tensor is named: some faults leave early positions alone (RoPE is the identity at
    position 0; a window fault shows only past the window), so compare whole sequences.
    """
    return check_fault_applies(fault, hp).site(hp)
