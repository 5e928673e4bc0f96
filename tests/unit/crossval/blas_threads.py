"""One OpenBLAS thread in this process, for the tests that run the NumPy engine many times.

numpy's OpenBLAS starts a thread per core. On a 2-core machine that other work keeps busy, the
threads spin while they wait for each other, and the engine's small products take far longer
than on one thread: 300 products [76, 256] x [256, 512] took 6.8 s on two threads and 0.35 s on
one at a load average of 10. The flow tests' reference (the fake shim's server) runs with one
thread, as the shim does by default; this gives the candidate in the test process the same.
Their exact-agreement checks pass either way: OpenBLAS splits a product's output between its
threads, not the sums.

The library is found among the shared objects this process has loaded, as threadpoolctl finds
it; where numpy's BLAS is not OpenBLAS, nothing changes.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """OpenBLAS on one thread inside the block, on as many as before after it."""
    controls = _openblas_thread_controls()
    if controls is None:
        yield
        return
    get_threads, set_threads = controls
    before = int(get_threads())
    set_threads(1)
    try:
        yield
    finally:
        set_threads(before)


def _openblas_thread_controls() -> tuple[Callable[[], int], Callable[[int], None]] | None:
    import numpy  # noqa: F401  (loads its BLAS)

    try:
        maps = Path("/proc/self/maps").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    paths = sorted({line.split()[-1] for line in maps.splitlines() if "openblas" in line.split()[-1].lower()})
    for path in paths:
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        # scipy-openblas (numpy's wheels) prefixes its symbols and adds 64_ for 64-bit integers.
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                getter = getattr(library, f"{prefix}_get_num_threads{suffix}", None)
                setter = getattr(library, f"{prefix}_set_num_threads{suffix}", None)
                if getter is not None and setter is not None:
                    return getter, setter
    return None
