"""Read-only collections whose contents are computed again on every access.

A module-level constant made from a registry when the module is imported misses whatever is
registered later (an architecture a test or a third party registers); these views do not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar, overload

K = TypeVar("K")
V = TypeVar("V")
T = TypeVar("T")


class LiveSequence(Sequence[T]):
    """A sequence that asks ``source`` for its items each time it is read."""

    def __init__(self, source: Callable[[], Sequence[T]]) -> None:
        self._source = source

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[T]: ...

    def __getitem__(self, index: int | slice) -> T | Sequence[T]:
        return self._source()[index]

    def __len__(self) -> int:
        return len(self._source())

    def __iter__(self) -> Iterator[T]:
        return iter(tuple(self._source()))

    def __contains__(self, item: object) -> bool:
        return item in self._source()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({tuple(self._source())!r})"


class LiveMapping(Mapping[K, V]):
    """A mapping that asks ``source`` for its items each time it is read."""

    def __init__(self, source: Callable[[], Mapping[K, V]]) -> None:
        self._source = source

    def __getitem__(self, key: K) -> V:
        return self._source()[key]

    def __iter__(self) -> Iterator[K]:
        return iter(tuple(self._source()))

    def __len__(self) -> int:
        return len(self._source())

    def __contains__(self, key: object) -> bool:
        return key in self._source()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self._source())!r})"
