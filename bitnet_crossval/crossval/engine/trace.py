"""Recording the intermediate tensors of a forward pass under llama.cpp's names.

llama.cpp names graph nodes with ``cb(cur, "name", il)``, rendered ``name-<il>`` (``name`` alone
when il is -1); a cb_eval callback sees them in execution order. Several nodes can carry the
same name (``Qcur-0`` after the matmul, after the reshape, after RoPE): the convention shared
with the C++ side is that a trace keeps the LAST one, at the place of that last occurrence in
execution order. :meth:`TraceRecorder.record` implements exactly that, so the engine may
report a name more than once.

Arrays are float32 with the token axis first (ggml's ``ne`` reversed). The filters (layers,
name patterns, positions) are applied as values arrive, so memory stays bounded by what was
asked for.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F32Array = npt.NDArray[np.float32]

_KEY = re.compile(r"^(?P<name>.+?)-(?P<layer>\d+)$")


def trace_key(name: str, layer: int) -> str:
    """llama.cpp's rendering of ``cb(cur, name, layer)``."""
    return f"{name}-{layer}" if layer >= 0 else name


def split_key(key: str) -> tuple[str, int]:
    """``"Qcur-3"`` -> ``("Qcur", 3)``; ``"result_norm"`` -> ``("result_norm", -1)``."""
    match = _KEY.match(key)
    if match is None:
        return key, -1
    return match.group("name"), int(match.group("layer"))


@dataclass(frozen=True)
class TraceSite:
    """One named tensor of the graph: ``name`` as passed to cb, ``layer`` -1 for none."""

    name: str
    layer: int

    @property
    def key(self) -> str:
        return trace_key(self.name, self.layer)

    def __str__(self) -> str:
        return self.key


class TraceRecorder:
    """Collects intermediates of :meth:`Engine.forward` (pass it as ``trace=``).

    ``layers``: layer indices to keep (tensors outside any layer, such as ``result_output``,
    are kept unless ``include_global`` is false). ``names``: shell-style patterns matched
    against the name without its layer suffix or against the full key (``"attn_*"``,
    ``"Qcur-0"``). ``name_regex``: a regular expression the whole key must match, as the
    shim's ``trace --names`` takes it. ``positions``: token positions to keep (indices into
    the token axis).
    """

    def __init__(
        self,
        *,
        layers: Iterable[int] | None = None,
        names: Sequence[str] | None = None,
        name_regex: str | None = None,
        positions: Sequence[int] | slice | None = None,
        include_global: bool = True,
    ) -> None:
        self._layers = frozenset(layers) if layers is not None else None
        self._names = tuple(names) if names is not None else None
        self._regex = re.compile(name_regex) if name_regex is not None else None
        self._positions: list[int] | slice | None = list(positions) if isinstance(positions, Sequence) else positions
        self._include_global = include_global
        self._entries: dict[str, F32Array] = {}

    def wants(self, name: str, layer: int) -> bool:
        if layer < 0:
            if not self._include_global:
                return False
        elif self._layers is not None and layer not in self._layers:
            return False
        key = trace_key(name, layer)
        if self._regex is not None and self._regex.fullmatch(key) is None:
            return False
        if self._names is None:
            return True
        return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(key, p) for p in self._names)

    def record(self, name: str, layer: int, value: npt.NDArray[np.floating]) -> None:
        """Store ``value`` under ``name-layer``, replacing and moving after any earlier one."""
        if not self.wants(name, layer):
            return
        key = trace_key(name, layer)
        selected = value if self._positions is None else value[self._positions]
        self._entries.pop(key, None)
        self._entries[key] = np.array(selected, dtype=np.float32, copy=True)

    def clear(self) -> None:
        self._entries.clear()

    @property
    def entries(self) -> dict[str, F32Array]:
        """Recorded tensors by key, in execution order."""
        return dict(self._entries)

    def keys(self) -> list[str]:
        return list(self._entries)

    def __getitem__(self, key: str) -> F32Array:
        return self._entries[key]

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self._entries.values())
