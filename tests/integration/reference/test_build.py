"""The C++ reference shim, built for real against the pinned llama.cpp and against a stub of
the 2024 C API, and driven through :class:`tasks.shim.Shim`."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bitnet_crossval.errors import BadInput, BuildFailed
from bitnet_crossval.reference.build import ShimBuild, build_shim
from bitnet_crossval.reference.client import Shim
from tests.gguf_models import (
    BOS_ID,
    TinyLlamaSpec,
    spm_vocabulary,
    write_llama_model,
    write_unknown_architecture_model,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

LEGACY_API_DIR = Path(__file__).resolve().parent.parent / "data" / "legacy_llama_api"
BUILD_FLAGS = '-DGGML_NATIVE=OFF;-DLLAMA_CURL=OFF "quoted value"'
BACKEND_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
UNICODE_TEXTS = ("héllo wörld — 你好 🙂", "Ünïcödé 🦙 llama.cpp\n\ttabs and  spaces", "日本語のテキスト")


@pytest.fixture(scope="module")
def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BITNET_", "LLAMA_CPP_"))}
    env["NO_COLOR"] = "1"
    return env


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shim")


def _build_against(install: Path, work: Path, env: dict[str, str], *, name: str, backend: str) -> ShimBuild:
    return build_shim(
        include_dirs=[install / "include"],
        lib_dir=install / "lib",
        build_dir=work / f"build-{name}",
        log_path=work / f"build-{name}.log",
        env=env,
        backend=backend,
        backend_commit=BACKEND_COMMIT,
        build_flags=BUILD_FLAGS,
    )


@pytest.fixture(scope="module")
def current_build(llama_install: Path, work: Path, child_env: dict[str, str]) -> ShimBuild:
    return _build_against(llama_install, work, child_env, name="current", backend="llama")


@pytest.fixture(scope="module")
def shim(current_build: ShimBuild, work: Path, child_env: dict[str, str]) -> Shim:
    return Shim(current_build.executable, env=child_env, log_dir=work / "logs")


@pytest.fixture(scope="module")
def tiny_model(work: Path) -> Path:
    return write_llama_model(work / "tiny-llama.gguf")


@pytest.fixture(scope="module")
def spm_vocab(llama_source: Path) -> Path:
    return llama_source / "models" / "ggml-vocab-llama-spm.gguf"


# ----- building and API generations ------------------------------------------------------------


def test_current_llama_cpp_selects_current_api(current_build: ShimBuild, shim: Shim) -> None:
    assert current_build.api == "current"
    info = shim.info()
    assert info["api"] == "current"
    assert info["api_features"]["flash_attn_control"] == "flash_attn_type"
    assert info["api_features"]["memory_clear"] == "llama_memory_clear"
    assert info["backend"] == "llama"
    assert info["backend_commit"] == BACKEND_COMMIT
    assert info["build_flags"] == BUILD_FLAGS  # quotes and ';' survive CMake and C escaping
    assert info["system_info"]


def test_second_build_with_nothing_changed_reconfigures_and_relinks_nothing(
    current_build: ShimBuild, llama_install: Path, work: Path, child_env: dict[str, str]
) -> None:
    mtime = current_build.executable.stat().st_mtime_ns
    again = _build_against(llama_install, work, child_env, name="current", backend="llama")
    assert again == current_build
    assert again.executable.stat().st_mtime_ns == mtime
    commands = [line for line in current_build.log_path.read_text().splitlines() if line.startswith("+ ")]
    assert sum(" -S " in c for c in commands) == 1, "the unchanged configure step ran twice"
    assert sum("--build" in c for c in commands) == 2


@pytest.fixture(scope="module")
def legacy_install(work: Path, child_env: dict[str, str]) -> Path:
    """The stub of the 2024 C API, built and installed as <prefix>/include + <prefix>/lib."""
    prefix = work / "legacy-prefix"
    build = work / "legacy-stub-build"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    for argv in (
        ["cmake", "-S", str(LEGACY_API_DIR), "-B", str(build), *generator, f"-DCMAKE_INSTALL_PREFIX={prefix}"],
        ["cmake", "--build", str(build)],
        ["cmake", "--install", str(build)],
    ):
        subprocess.run(argv, env=child_env, check=True, capture_output=True)
    return prefix


def test_2024_header_selects_legacy_api_and_runs_causally(
    legacy_install: Path, work: Path, child_env: dict[str, str], tiny_model: Path
) -> None:
    build = _build_against(legacy_install, work, child_env, name="legacy", backend="bitnet")
    assert build.api == "legacy"
    legacy = Shim(build.executable, env=child_env)
    info = legacy.info(tiny_model)
    assert info["api"] == "legacy"
    assert info["api_features"] == {
        "flash_attn_control": "flash_attn",
        "memory_clear": "llama_kv_cache_clear",
        "logits_all_param": True,
        "context_seed_param": True,
    }
    assert info["architecture"] == "legacy-stub"  # the stub answered, not a real llama.cpp

    # The stub refuses flash attention and returns no rows that were not requested, so this
    # passing means the legacy branch set both up as the current one does.
    tokens = legacy.tokenize(tiny_model, "abc", add_bos=True, parse_special=False).tokens
    full, meta = legacy.logits(tiny_model, tokens)
    prefix, _ = legacy.logits(tiny_model, tokens[:2])
    assert full.shape == (4, info["vocab_size"])
    np.testing.assert_array_equal(prefix, full[:2])
    assert meta["flash_attn"] is False
    assert meta["seed"] == 42


def test_header_with_neither_api_fails_the_build(work: Path, child_env: dict[str, str]) -> None:
    prefix = work / "no-api-prefix"
    (prefix / "include").mkdir(parents=True)
    (prefix / "lib").mkdir()
    (prefix / "include" / "llama.h").write_text("#pragma once\nint llama_nothing(void);\n")
    (prefix / "lib" / "libllama.so").write_bytes(b"")
    (prefix / "lib" / "libggml.so").write_bytes(b"")
    with pytest.raises(BuildFailed) as caught:
        _build_against(prefix, work, child_env, name="no-api", backend="llama")
    assert caught.value.exit_code == 5
    assert caught.value.log_path is not None
    log = " ".join(caught.value.log_path.read_text().split())  # CMake wraps its messages
    assert "declares neither the current llama.cpp C API" in log


# ----- info and tokenization ---------------------------------------------------------------------


def test_info_reports_the_synthetic_model(shim: Shim, tiny_model: Path) -> None:
    spec = TinyLlamaSpec()
    n_vocab = len(spm_vocabulary()[0])
    info = shim.info(tiny_model, load_weights=True)
    assert info["architecture"] == "llama"
    assert info["weights_loaded"] is True
    assert (info["vocab_size"], info["context_length"], info["n_layer"], info["n_embd"]) == (
        n_vocab,
        spec.context_length,
        spec.n_layer,
        spec.n_embd,
    )
    assert (info["n_head"], info["n_head_kv"]) == (spec.n_head, spec.n_head_kv)
    kv_dim = spec.head_dim * spec.n_head_kv
    per_layer = 2 * spec.n_embd + 2 * spec.n_embd**2 + 2 * kv_dim * spec.n_embd + 3 * spec.n_ff * spec.n_embd
    assert info["n_params"] == 2 * n_vocab * spec.n_embd + spec.n_embd + spec.n_layer * per_layer


def test_info_loads_a_vocabulary_only_file(shim: Shim, spm_vocab: Path) -> None:
    info = shim.info(spm_vocab)
    assert info["weights_loaded"] is False
    assert info["vocab_type"] == "spm"
    assert info["vocab_size"] == 32000
    assert info["bos"] == 1


def _expected_tokenizations(vocab: Path) -> list[tuple[str, list[int]]]:
    """llama.cpp's own tokenizer fixtures: texts separated by a marker line, one line of ids each."""
    separator = "\n__ggml_vocab_test__\n"
    raw = vocab.with_name(vocab.name + ".inp").read_text(encoding="utf-8")
    texts = raw.split(separator)
    if raw.endswith(separator):
        texts.pop()  # tests/test-tokenizer-0.cpp stops at the last separator
    lines = vocab.with_name(vocab.name + ".out").read_text(encoding="utf-8").splitlines()
    assert len(texts) == len(lines)
    return [(text, [int(t) for t in line.split()]) for text, line in zip(texts, lines, strict=True)]


@pytest.mark.parametrize("vocab_name", ["ggml-vocab-llama-spm.gguf", "ggml-vocab-gpt-2.gguf"])
def test_tokenize_matches_llama_cpp_fixtures(shim: Shim, llama_source: Path, vocab_name: str) -> None:
    vocab = llama_source / "models" / vocab_name
    cases = _expected_tokenizations(vocab)
    assert len(cases) > 20
    mismatches = []
    for text, expected in cases:
        got = shim.tokenize(vocab, text, add_bos=False, parse_special=False).tokens
        if list(got) != expected:
            mismatches.append((text, expected, got))
    assert not mismatches


@pytest.mark.parametrize("text", UNICODE_TEXTS)
def test_unicode_round_trips_through_tokenize_and_detokenize(shim: Shim, spm_vocab: Path, text: str) -> None:
    plain = shim.tokenize(spm_vocab, text, add_bos=False, parse_special=False)
    assert shim.detokenize(spm_vocab, plain.tokens).text == text

    with_bos = shim.tokenize(spm_vocab, text, add_bos=True, parse_special=False)
    assert with_bos.tokens[0] == 1
    assert with_bos.tokens[1:] == plain.tokens
    assert with_bos.pieces[0] == b"<s>"
    # Pieces are exact bytes, even where a token is part of a character.
    joined = b"".join(plain.pieces).decode("utf-8")
    assert joined.strip() == text.strip()


def test_pieces_can_be_partial_utf8(shim: Shim, spm_vocab: Path) -> None:
    result = shim.tokenize(spm_vocab, "🙂", add_bos=False, parse_special=False)
    partial = [p for p in result.pieces if p and not _is_utf8(p)]
    assert partial, "the emoji should be split into byte tokens"
    assert b"".join(result.pieces).strip() == "🙂".encode()
    assert "\ufffd" in result.metadata["pieces"]  # the JSON string form stays valid


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# ----- logits and generation ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def prompt(shim: Shim, tiny_model: Path) -> tuple[int, ...]:
    tokens = shim.tokenize(tiny_model, "hello world, the cat is in it", add_bos=True, parse_special=False).tokens
    assert tokens[0] == BOS_ID
    assert len(tokens) >= 8
    return tokens


def test_logits_cover_every_position(shim: Shim, tiny_model: Path, prompt: tuple[int, ...]) -> None:
    logits, meta = shim.logits(tiny_model, prompt)
    n_vocab = len(spm_vocabulary()[0])
    assert logits.shape == (len(prompt), n_vocab)
    assert logits.dtype == np.float32
    assert np.isfinite(logits).all()
    for i in range(1, len(prompt)):
        assert not np.allclose(logits[i], logits[i - 1]), f"rows {i - 1} and {i} are the same"
    assert meta["n_tokens"] == len(prompt)
    assert meta["flash_attn"] is False
    assert meta["causal"] is True
    assert meta["kv_type"] == "f32"
    assert meta["threads"] == 1
    assert meta["n_decode_calls"] == 1
    assert meta["n_ubatch"] >= len(prompt)
    assert meta["api"] == "current"


def test_logits_are_causal(shim: Shim, tiny_model: Path, prompt: tuple[int, ...]) -> None:
    full, _ = shim.logits(tiny_model, prompt)
    k = len(prompt) // 2
    prefix, _ = shim.logits(tiny_model, prompt[:k])
    np.testing.assert_allclose(prefix, full[:k], rtol=0, atol=1e-6)

    changed_last = (*prompt[:-1], (prompt[-1] + 1) % full.shape[1])
    other, _ = shim.logits(tiny_model, changed_last)
    np.testing.assert_allclose(other[:-1], full[:-1], rtol=0, atol=1e-6)
    assert not np.allclose(other[-1], full[-1])


def test_logits_are_deterministic(shim: Shim, tiny_model: Path, prompt: tuple[int, ...], work: Path) -> None:
    first, _ = shim.logits(tiny_model, prompt)
    second, _ = shim.logits(tiny_model, prompt, out_dir=work / "arrays")
    assert isinstance(second, np.memmap)
    assert Path(str(second.filename)).parent == work / "arrays"
    np.testing.assert_array_equal(first, second)


def test_logits_with_f16_kv_cache_are_recorded_and_close(shim: Shim, tiny_model: Path, prompt: tuple[int, ...]) -> None:
    f32, _ = shim.logits(tiny_model, prompt, kv_type="f32")
    f16, meta = shim.logits(tiny_model, prompt, kv_type="f16", threads=2)
    assert (meta["kv_type"], meta["threads"]) == ("f16", 2)
    np.testing.assert_allclose(f16, f32, rtol=0, atol=0.05)


def test_generate_follows_the_argmax_chain(shim: Shim, tiny_model: Path, prompt: tuple[int, ...]) -> None:
    n = 6
    generation = shim.generate(tiny_model, prompt, n=n)
    assert len(generation.tokens) == n
    assert generation.logits.shape[0] == n
    assert list(generation.tokens) == [int(i) for i in generation.logits.argmax(axis=1)]

    # Each step's row equals the batched evaluation of the same prefix.
    batched, _ = shim.logits(tiny_model, (*prompt, *generation.tokens[:-1]))
    np.testing.assert_allclose(generation.logits, batched[len(prompt) - 1 :], rtol=0, atol=1e-4)


# ----- error mapping -------------------------------------------------------------------------------


def test_missing_model_is_bad_input(shim: Shim, work: Path) -> None:
    with pytest.raises(BadInput) as caught:
        shim.info(work / "no-such-model.gguf")
    assert caught.value.exit_code == 6
    assert "not found" in caught.value.message


@pytest.fixture
def random_bytes_model(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "random.gguf"
    path.write_bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    yield path


def test_corrupt_model_is_bad_input(shim: Shim, random_bytes_model: Path) -> None:
    with pytest.raises(BadInput) as caught:
        shim.logits(random_bytes_model, [1, 2, 3])
    assert caught.value.exit_code == 6


def test_truncated_gguf_is_bad_input(shim: Shim, tiny_model: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(tiny_model.read_bytes()[:5000])
    with pytest.raises(BadInput) as caught:
        shim.logits(truncated, [1, 2, 3])
    assert caught.value.exit_code == 6


def test_unknown_architecture_is_bad_input(shim: Shim, tmp_path: Path) -> None:
    model = write_unknown_architecture_model(tmp_path / "unknown.gguf")
    with pytest.raises(BadInput) as caught:
        shim.info(model)
    assert "architecture" in caught.value.message


def test_token_outside_the_vocabulary_is_bad_input(shim: Shim, tiny_model: Path) -> None:
    with pytest.raises(BadInput) as caught:
        shim.logits(tiny_model, [1, 100_000])
    assert "outside the vocabulary" in caught.value.message
