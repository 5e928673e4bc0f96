"""The comparison of logits files a block of rows at a time: the same metrics as in memory, and
never an ``[n, vocab]`` array of its own (counted with tracemalloc, which sees numpy's buffers)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from bitnet_crossval.crossval.metrics import Thresholds, compare_logits, summarize
from bitnet_crossval.util.npy_rows import NpyWriter, row_blocks, rows_not_finite

N, VOCAB = 700, 6000  # 16.8 MB a file: several blocks of the comparison


@pytest.fixture(scope="module")
def logits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[int]]:
    directory = tmp_path_factory.mktemp("logits")
    rng = np.random.default_rng(3)
    ref = (rng.standard_normal((N, VOCAB)) * 3).astype(np.float32)
    cand = ref + (rng.standard_normal((N, VOCAB)) * 0.01).astype(np.float32)
    cand[400] = np.roll(cand[400], 11)  # one position that fails
    paths = []
    for name, array in (("ref", ref), ("cand", cand)):
        writer = NpyWriter(directory / f"{name}.npy", N, VOCAB)
        for start in range(0, N, 128):  # by pieces, a slab of columns at a time as the engine writes
            for col in range(0, VOCAB, 2500):
                writer.put(start, col, array[start : start + 128, col : col + 2500])
        writer.close()
        paths.append(directory / f"{name}.npy")
    tokens = [int(t) for t in rng.integers(0, VOCAB, N)]
    return paths[0], paths[1], tokens


def test_files_compared_in_blocks_give_the_in_memory_metrics(logits: tuple[Path, Path, list[int]]) -> None:
    ref_path, cand_path, tokens = logits
    thresholds = Thresholds(kl_max=0.002)
    in_memory = compare_logits(np.load(ref_path), np.load(cand_path), tokens, thresholds=thresholds)
    seen: list[int] = []
    streamed = compare_logits(
        np.load(ref_path, mmap_mode="r"),
        np.load(cand_path, mmap_mode="r"),
        tokens,
        thresholds=thresholds,
        progress=seen.append,
    )
    assert streamed == in_memory
    assert summarize(streamed) == summarize(in_memory) and summarize(streamed).failed_positions == [400]
    assert seen == sorted(seen) and seen[-1] == N and len(seen) > 1


def test_comparing_files_never_makes_an_n_by_vocab_array(logits: tuple[Path, Path, list[int]]) -> None:
    ref_path, cand_path, tokens = logits
    ref, cand = np.load(ref_path, mmap_mode="r"), np.load(cand_path, mmap_mode="r")
    tracemalloc.start()
    try:
        compare_logits(ref, cand, tokens, thresholds=Thresholds())
        assert rows_not_finite(ref, block_bytes=1 << 20) == []  # a block far smaller than the file
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    one_array = N * VOCAB * 4
    assert peak < one_array / 8, f"{peak} bytes traced at the peak, one array is {one_array}"


def test_the_check_can_fail_an_in_memory_copy_is_seen(logits: tuple[Path, Path, list[int]]) -> None:
    """The measure above sees an array of that size when one is made."""
    ref_path, _, _ = logits
    tracemalloc.start()
    try:
        np.array(np.load(ref_path, mmap_mode="r"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak >= N * VOCAB * 4


def test_non_finite_rows_are_found_a_block_at_a_time(tmp_path: Path) -> None:
    writer = NpyWriter(tmp_path / "l.npy", 50, 300)
    values = np.zeros((50, 300), dtype=np.float32)
    values[7, 3], values[41, 299] = np.nan, np.inf
    writer.put(0, 0, values)
    array = writer.rows()
    assert rows_not_finite(array, block_bytes=300 * 4 * 3) == [7, 41]
    assert [start for start, _ in row_blocks(array, 16)] == [0, 16, 32, 48]
