"""Fixtures of the crossval unit tests: a tiny vocabulary, cached synthetic models, and the fake
reference shim (fake_shim.py) recorded in a cache.

No C++ here: models are written with gguf-py and only the NumPy engine runs them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bitnet_crossval.crossval.synthetic import default_spec, write_synthetic_model
from tests.gguf_models import BOS_ID, EOS_ID, UNK_ID, spm_vocabulary
from tests.unit.crossval.blas_threads import one_blas_thread
from tests.unit.crossval.fake_reference import (
    FakeCache,
    FakeShim,
    fake_shim_server,
    install_fake_shim,
    make_fake_cache,
)

ModelFactory = Callable[..., Path]


def write_vocab(path: Path) -> Path:
    """A vocabulary-only GGUF (the tokenizer keys of a small SPM vocabulary, no tensors)."""
    import gguf

    tokens, scores, types = spm_vocabulary()
    writer = gguf.GGUFWriter(path, "llama")
    try:
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_bos_token_id(BOS_ID)
        writer.add_eos_token_id(EOS_ID)
        writer.add_unk_token_id(UNK_ID)
        writer.add_add_bos_token(True)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


@pytest.fixture(scope="session")
def tiny_vocab(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_vocab(tmp_path_factory.mktemp("vocab") / "tiny-vocab.gguf")


@pytest.fixture(scope="session")
def model_factory(tmp_path_factory: pytest.TempPathFactory, tiny_vocab: Path) -> ModelFactory:
    """``make(arch, tensor_type="F32", seed=0, **spec_changes)``: a synthetic model, written once."""
    directory = tmp_path_factory.mktemp("models")
    made: dict[str, Path] = {}

    def make(arch: str, tensor_type: str = "F32", seed: int = 0, **changes: Any) -> Path:
        key = f"{arch}-{tensor_type}-{seed}-" + "-".join(f"{k}={v}" for k, v in sorted(changes.items()))
        if key not in made:
            spec = replace(default_spec(arch), **changes)
            path = directory / f"m{len(made)}.gguf"
            made[key] = write_synthetic_model(
                path,
                arch=arch,
                tensor_type=tensor_type,
                vocab=tiny_vocab,
                seed=seed,
                spec=spec,
            )
        return made[key]

    return make


@pytest.fixture(scope="session")
def fake_shim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeShim]:
    """The fake reference shim installed as an executable, with its server running."""
    directory = tmp_path_factory.mktemp("fake-shim")
    script = install_fake_shim(directory / "bin")
    shim = FakeShim(script=script, socket=directory / "server.sock", server_log=directory / "server.log")
    with fake_shim_server(shim.socket, shim.server_log):
        yield shim


@pytest.fixture(scope="session")
def fake_cache(tmp_path_factory: pytest.TempPathFactory, fake_shim: FakeShim, tiny_vocab: Path) -> FakeCache:
    """One cache for the session whose constants record the fake shim as the llama backend's (the
    synthetic models are written into it once and shared)."""
    return make_fake_cache(tmp_path_factory.mktemp("fake-cache") / "cache", fake_shim, tiny_vocab)


@pytest.fixture
def one_blas_thread_here() -> Iterator[None]:
    """numpy's OpenBLAS on one thread during the test, like the fake reference (blas_threads.py)."""
    with one_blas_thread():
        yield
