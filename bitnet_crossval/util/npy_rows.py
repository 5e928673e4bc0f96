"""Two-dimensional ``.npy`` arrays on disk, written and read a block of rows at a time through a
memory map, with the pages of each block handed back to the kernel once it is done.

A page of a memory-mapped file that a process has touched counts in its resident set until the
mapping goes away, so reading a 4 GiB logits file row by row through ``np.load(mmap_mode="r")``
would end with 4 GiB resident. :func:`release_rows` gives the pages of some rows back
(``madvise(MADV_DONTNEED)``; the file, and for a shared writable mapping what was written, stay in
the page cache), and :func:`row_blocks` does so after each block it hands out, so a pass over any
number of rows keeps about one block resident.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

F32Rows = npt.NDArray[np.float32]

# Rows of float32 handed out at once by row_blocks unless told otherwise: 16 MiB of them.
DEFAULT_BLOCK_BYTES = 16 << 20


def create_rows(path: Path, n_rows: int, n_cols: int) -> F32Rows:
    """A new ``.npy`` file of float32 ``[n_rows, n_cols]`` (zeros, sparse on disk), mapped for
    writing; what is written to the array is in the file."""
    array: F32Rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n_rows, n_cols))
    return array


def rows_per_block(n_cols: int, *, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    """How many float32 rows of ``n_cols`` fit in ``block_bytes`` (at least one)."""
    return max(1, block_bytes // max(1, 4 * n_cols))


def row_blocks(array: npt.NDArray[Any], block: int) -> Iterator[tuple[int, npt.NDArray[Any]]]:
    """``(start, rows)`` for each block of ``block`` rows, in order; a memory-mapped array's pages
    of a block are given back when the next one is asked for (and after the last)."""
    n = array.shape[0]
    for start in range(0, n, max(1, block)):
        stop = min(n, start + max(1, block))
        try:
            yield start, array[start:stop]
        finally:
            release_rows(array, start, stop)


def release_rows(array: npt.NDArray[Any], start: int, stop: int) -> None:
    """Hand the pages of rows ``[start, stop)`` of ``array`` back to the kernel when ``array`` views
    a shared memory map (``np.load(mmap_mode="r")``, ``open_memmap``, :func:`create_rows`); nothing
    otherwise. Later reads of those rows fault them in again from the file."""
    mapping = _mapping_of(array)
    if mapping is None or stop <= start or not hasattr(mmap, "MADV_DONTNEED"):
        return
    if not array.flags.c_contiguous:
        return
    row_bytes = int(array.strides[0]) if array.ndim > 1 else array.itemsize
    base = np.frombuffer(mapping, dtype=np.uint8).__array_interface__["data"][0]
    offset = int(array.__array_interface__["data"][0]) - int(base)
    page = mmap.PAGESIZE
    # Whole pages inside the rows only: a neighbouring row may share the first or last page.
    first = (offset + start * row_bytes + page - 1) // page * page
    last = (offset + stop * row_bytes) // page * page
    if last > first:
        try:
            mapping.madvise(mmap.MADV_DONTNEED, first, last - first)
        except (OSError, ValueError):  # an optimisation only: a refusal costs memory, not results
            return


def _mapping_of(array: npt.NDArray[Any]) -> mmap.mmap | None:
    """The shared memory map ``array`` is a view of, if any (numpy keeps it as the base)."""
    base: Any = array
    for _ in range(8):  # views of views: a short chain
        if isinstance(base, mmap.mmap):
            return base
        mapping = getattr(base, "_mmap", None)  # np.memmap keeps its map here as well
        if isinstance(mapping, mmap.mmap):
            return mapping
        base = getattr(base, "base", None)
        if base is None:
            return None
    return None


def rows_not_finite(array: npt.NDArray[np.floating[Any]], *, block_bytes: int = DEFAULT_BLOCK_BYTES) -> list[int]:
    """The rows of a 2-D array that hold a NaN or an infinity, found a block at a time (no mask of
    the whole array is ever made)."""
    bad: list[int] = []
    for start, rows in row_blocks(array, rows_per_block(array.shape[1], block_bytes=block_bytes)):
        finite = np.isfinite(rows).all(axis=1)
        if not finite.all():
            bad += [start + int(i) for i in np.flatnonzero(~finite)]
    return bad


class NpyWriter:
    """A new float32 ``[n_rows, n_cols]`` ``.npy`` file filled by pieces with ``pwrite``.

    Nothing is mapped, so what is written never counts in the resident set (it goes to the page
    cache). Writing through a memory map instead, a narrow column range of every row (a slab of
    the vocabulary at a time) made the kernel map far more than was written: with large page
    cache folios a 16 KiB write into a row of 1 MiB mapped the whole row.
    """

    def __init__(self, path: Path, n_rows: int, n_cols: int) -> None:
        self.path = path
        self.shape = (n_rows, n_cols)
        with path.open("wb") as file:
            np.lib.format.write_array_header_1_0(
                file,
                {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": self.shape},
            )
            self._data_offset = file.tell()
            file.truncate(self._data_offset + 4 * n_rows * n_cols)
        self._fd = os.open(path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))

    def put(self, row: int, col: int, values: npt.NDArray[np.float32]) -> None:
        """Write ``values`` (2-D) at rows ``row..`` and columns ``col..``."""
        block = np.ascontiguousarray(values, dtype="<f4")
        n_rows, n_cols = block.shape
        row_bytes = 4 * self.shape[1]
        offset = self._data_offset + row * row_bytes + 4 * col
        if n_cols == self.shape[1]:
            self._write(block, offset)
            return
        for i in range(n_rows):
            self._write(block[i], offset + i * row_bytes)

    def _write(self, data: npt.NDArray[Any], offset: int) -> None:
        view = memoryview(data.data).cast("B")
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def rows(self) -> F32Rows:
        """The file as a read-only memory map (read it with :func:`row_blocks`)."""
        self.close()
        array: F32Rows = np.load(self.path, mmap_mode="r")
        return array
