"""The flow tests' one-thread BLAS switch (blas_threads.py) sets OpenBLAS's thread count and
gives it back."""

from __future__ import annotations

import pytest

from tests.unit.crossval.blas_threads import _openblas_thread_controls, one_blas_thread


def test_one_blas_thread_sets_one_thread_and_restores_the_count() -> None:
    controls = _openblas_thread_controls()
    if controls is None:
        pytest.skip("numpy's BLAS here is not OpenBLAS")
    get_threads, _ = controls
    before = get_threads()

    with one_blas_thread():
        assert get_threads() == 1

    assert get_threads() == before
