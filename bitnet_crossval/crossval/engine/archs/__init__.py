"""The architectures of the NumPy engine: one module each, registered here by name.

Each module satisfies :class:`~.base.Architecture` and declares, in one file, the
``general.architecture`` names it runs, its RoPE type, its own hyperparameters, its tensors
and their shapes, its forward pass, its synthetic model and the faults that apply to it. The
engine, the synthetic models, ``--model synthetic:ARCH`` and the self-check ask this registry
and never name an architecture::

    ALL_ARCHITECTURES["gemma3"].ROPE_TYPE       # "neox"
    architecture_of("bitnet-b1.58").NAME        # "bitnet"
    register(my_architecture)                   # a test's, or a third party's module
"""

from __future__ import annotations

from bitnet_crossval.crossval.engine.archs import bitnet, gemma3, llama
from bitnet_crossval.crossval.engine.archs.base import MEMBERS, Architecture
from bitnet_crossval.crossval.engine.faults import FaultName, FaultSpec
from bitnet_crossval.errors import BadInput

__all__ = [
    "ALL_ARCHITECTURES",
    "Architecture",
    "architecture_of",
    "families_of",
    "find_architecture",
    "register",
    "registered_faults",
    "synthetic_architectures",
    "unregister",
]

ALL_ARCHITECTURES: dict[str, Architecture] = {arch.NAME: arch for arch in (llama, bitnet, gemma3)}


def register(architecture: Architecture, *, replace: bool = False) -> Architecture:
    """Add an architecture (``replace``: instead of the registered one of the same name).

    Raises TypeError when it lacks a member of :class:`~.base.Architecture`, ValueError when its
    name or one of its GGUF names is taken, or when it declares a fault under a name another
    architecture uses for a different fault.
    """
    missing = [member for member in MEMBERS if not hasattr(architecture, member)]
    if missing:
        raise TypeError(f"{architecture!r} is no architecture: it lacks {', '.join(missing)}")
    name = architecture.NAME
    if name in ALL_ARCHITECTURES and not replace:
        raise ValueError(f"an architecture named {name!r} is registered already")
    for other in ALL_ARCHITECTURES.values():
        taken = set(other.GGUF_NAMES) & set(architecture.GGUF_NAMES)
        if name != other.NAME and taken:
            raise ValueError(f"{other.NAME!r} runs {', '.join(sorted(taken))} already")
    declared = registered_faults(excluding=name)
    for located in architecture.FAULTS:
        known = declared.get(located.spec.name)
        if known is not None and known != located.spec:
            raise ValueError(f"another architecture declares a different fault named {located.spec.name!r}")
    ALL_ARCHITECTURES[name] = architecture
    return architecture


def unregister(name: str) -> Architecture:
    """Remove and return the architecture registered as ``name``."""
    return ALL_ARCHITECTURES.pop(name)


def find_architecture(name: str) -> Architecture | None:
    """The architecture registered as ``name``, or the one that runs files of that ``general.architecture``."""
    found = ALL_ARCHITECTURES.get(name)
    if found is not None:
        return found
    return next((arch for arch in ALL_ARCHITECTURES.values() if name in arch.GGUF_NAMES), None)


def architecture_of(gguf_name: str) -> Architecture:
    """The architecture that runs a file whose ``general.architecture`` is ``gguf_name``."""
    found = next((arch for arch in ALL_ARCHITECTURES.values() if gguf_name in arch.GGUF_NAMES), None)
    if found is None:
        supported = ", ".join(sorted(n for arch in ALL_ARCHITECTURES.values() for n in arch.GGUF_NAMES))
        raise BadInput(
            f"the model's architecture {gguf_name or '(none)'!r} is not supported by the NumPy reference "
            f"engine (supported: {supported})",
            next_step="use a model of a supported architecture, or an external candidate (--candidate)",
        )
    return found


def synthetic_architectures() -> tuple[str, ...]:
    """Names of the registered architectures that have a synthetic model, in registration order."""
    return tuple(name for name, arch in ALL_ARCHITECTURES.items() if arch.SYNTHETIC is not None)


def registered_faults(*, excluding: str | None = None) -> dict[FaultName, FaultSpec]:
    """Every fault of a registered architecture (but ``excluding``), by name, in the order they are listed."""
    faults: dict[FaultName, FaultSpec] = {}
    for name, arch in ALL_ARCHITECTURES.items():
        if name == excluding:
            continue
        for located in arch.FAULTS:
            faults.setdefault(located.spec.name, located.spec)
    return faults


def families_of(fault: FaultName) -> frozenset[str]:
    """The registered architectures a fault applies to."""
    return frozenset(name for name, arch in ALL_ARCHITECTURES.items() if any(f.spec.name == fault for f in arch.FAULTS))
