"""crossval-per-token's option values: parsed and checked before anything runs, every problem
one BadInput sentence (exit 6)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bitnet_crossval.crossval.candidates.numpy_engine import NumpySpec
from bitnet_crossval.crossval.defaults import (
    DEFAULT_CANDIDATE_TIMEOUT,
    DEFAULT_MAX_TOKENS,
    DEFAULT_PROMPT,
    DEFAULT_TIE_MARGIN,
)
from bitnet_crossval.crossval.options import (
    MAX_GENERATED,
    OUTPUT_OPTIONS,
    REQUEST_OPTIONS,
    build_request,
    output_paths,
)
from bitnet_crossval.crossval.request import CrossvalRequest
from bitnet_crossval.errors import BadInput
from bitnet_crossval.util.options import OptionValues, RawValue


def request(**raw: RawValue) -> CrossvalRequest:
    return build_request(OptionValues(REQUEST_OPTIONS, raw))


def outputs(**raw: RawValue) -> dict[str, Path]:
    return {option.name: path for option, path in output_paths(OptionValues(OUTPUT_OPTIONS, raw)).items()}


# --- output files -------------------------------------------------------------------------------------


def test_output_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert outputs() == {}
    assert outputs(report="  ") == {}
    monkeypatch.chdir(tmp_path)
    assert outputs(report="r.json") == {"report": tmp_path / "r.json"}
    (tmp_path / "exists.json").write_text("old")
    assert outputs(junit=str(tmp_path / "exists.json")) == {"junit": tmp_path / "exists.json"}
    monkeypatch.setenv("HOME", str(tmp_path))
    assert outputs(plot="~/r.png") == {"plot": tmp_path / "r.png"}


def test_output_paths_refuse_a_missing_directory_a_directory_and_a_fifo(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=r"the directory of the --plot file .* does not exist"):
        outputs(plot=str(tmp_path / "no" / "plot.png"))
    with pytest.raises(BadInput, match="is a directory, not a regular file"):
        outputs(junit=str(tmp_path))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(BadInput, match=r"the --report file .* not a regular file"):
        outputs(report=str(fifo))


# --- the whole request ----------------------------------------------------------------------------------


def test_defaults() -> None:
    r = request()
    assert r.model.kind == "synthetic" and r.model.text == "synthetic:llama:F32"
    assert r.backend == "llama" and r.prompt == DEFAULT_PROMPT and r.tokens_file is None and r.tokenizer is None
    assert r.max_tokens == DEFAULT_MAX_TOKENS == 16
    assert r.candidate.kind == "numpy" and r.add_bos is None and not r.parse_special
    assert r.kl_max is None and r.tie_margin == DEFAULT_TIE_MARGIN
    assert r.candidate_timeout == DEFAULT_CANDIDATE_TIMEOUT == 600 and r.threads == 1
    assert r.bitnet_activation is None
    assert r == CrossvalRequest()  # the task's defaults are the scripting API's


def test_values_are_carried_over(tmp_path: Path) -> None:
    r = request(
        model="synthetic:gemma3:q8_0", prompt="Hi", max_tokens="3", backend="bitnet", candidate="numpy:norm_eps",
        add_bos="no", parse_special=True, kl_max="0", tie_margin="1.5", candidate_timeout="2", threads="4",
        bitnet_activation="relu2", tokenizer=str(tmp_path / "tokenizer.json"),
    )  # fmt: skip
    assert (r.model.arch, r.model.tensor_type) == ("gemma3", "Q8_0")
    assert (r.prompt, r.max_tokens, r.backend, r.add_bos, r.parse_special) == ("Hi", 3, "bitnet", False, True)
    assert (r.kl_max, r.tie_margin, r.candidate_timeout, r.threads) == (0.0, 1.5, 2.0, 4)
    assert isinstance(r.candidate, NumpySpec) and r.candidate.fault == "norm_eps" and r.bitnet_activation == "relu2"
    assert r.tokenizer == tmp_path / "tokenizer.json"
    assert request(add_bos="yes").add_bos is True


def test_paths_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = request(tokens_file="ids.txt", tokenizer="tok.json")
    assert r.tokens_file == tmp_path / "ids.txt" and r.tokenizer == tmp_path / "tok.json"


def test_tokens_file_replaces_the_default_prompt_but_not_an_explicit_one() -> None:
    assert request(tokens_file="ids.txt").tokens_file is not None
    with pytest.raises(BadInput, match="--prompt and --tokens-file both give the tokens"):
        request(tokens_file="ids.txt", prompt="Hello")


def test_an_explicit_empty_prompt_is_kept_for_the_run_to_report() -> None:
    assert request(prompt="").prompt == ""


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"max_tokens": str(MAX_GENERATED + 1)}, "--max-tokens"),
        ({"threads": "0"}, "--threads '0' is not a whole number from 1 to 512"),
        ({"threads": "513"}, "--threads"),
        ({"kl_max": "-1"}, "--kl-max '-1'"),
        ({"tie_margin": "inf"}, "--tie-margin 'inf'"),
        ({"candidate_timeout": "-5"}, "--candidate-timeout '-5'"),
        ({"add_bos": "true"}, "--add-bos 'true' is not one of auto, yes, no"),
        ({"candidate_timeout": "0"}, "--candidate-timeout '0' is not a number of seconds, more than 0"),
        ({"candidate_timeout": "1e12"}, "--candidate-timeout '1e12'"),
        ({"bitnet_activation": "gelu"}, "--bitnet-activation 'gelu'"),
        ({"backend": "gpt"}, "gpt"),
        ({"candidate": "torch"}, "--candidate 'torch' is not a candidate"),
        ({"model": "synthetic:gpt2"}, "is not a synthetic model the suite can write"),
        ({"model": "synthetic:llama:Q4_K_M"}, "is not a synthetic model the suite can write"),
        ({"model": "synthetic:"}, "is not a synthetic model the suite can write"),
    ],
)
def test_every_bad_value_is_bad_input(changes: dict[str, str], fragment: str) -> None:
    with pytest.raises(BadInput) as info:
        request(**changes)
    assert fragment in info.value.message
    assert info.value.exit_code == 6 and info.value.next_step


@pytest.mark.parametrize(
    ("content", "fragment"),
    [(None, "does not exist"), (b"", "is empty"), (b"GGUX" + bytes(100), "is not a GGUF file"), ("dir", "is not a")],
)
def test_a_model_path_is_checked_at_once(tmp_path: Path, content: bytes | str | None, fragment: str) -> None:
    path = tmp_path / "model.gguf"
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(BadInput, match=fragment):
        request(model=str(path))


def test_a_gguf_path_and_the_named_models(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    r = request(model=str(path))
    assert r.model.kind == "file" and r.model.path == path and r.model.label == str(path)
    assert request(model="gemma3-270m").model.kind == "gemma3-270m"
    assert request(model="synthetic:bitnet:tq2_0").model.text == "synthetic:bitnet:TQ2_0"


def test_checking_a_model_path_reads_only_its_header(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.gguf"
    with path.open("wb") as f:
        f.write(b"GGUF" + bytes(60))
        f.truncate(64 << 20)  # sparse: 64 MiB that cost nothing to write
    real_read = os.read
    read = [0]

    def counting_read(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        read[0] += len(data)
        return data

    monkeypatch.setattr(os, "read", counting_read)
    request(model=str(path))
    assert read[0] <= 1 << 20


def test_the_task_declares_exactly_the_table() -> None:
    """The task's flags and their help come from the option tables, nothing else."""
    from bitnet_crossval.tasks.crossval import crossval_per_token

    arguments = {argument.name: argument for argument in crossval_per_token.get_arguments()}
    assert set(REQUEST_OPTIONS) | set(OUTPUT_OPTIONS) <= set(crossval_per_token.options)
    assert set(arguments) == {option.name for option in crossval_per_token.options}
    for option in crossval_per_token.options:
        assert arguments[option.name].help == option.help_text()
    assert arguments["max_tokens"].kind is int and arguments["kl_max"].kind is str
    assert arguments["trace"].kind is bool


@pytest.mark.parametrize(
    ("prompt", "offset"),
    [("\udcff\udcfe hi", 0), ("caf\udcc3", 3), ("é\udcff", 2), ("ok \ud800", 3)],
    ids=["first-byte", "after-ascii", "after-two-byte-char", "lone-surrogate"],
)
def test_a_prompt_that_is_not_utf8_is_bad_input_naming_the_offset(prompt: str, offset: int) -> None:
    """Bytes that are not UTF-8 reach Python's argv as surrogate escapes (`--prompt $'\\xff\\xfe hi'`)."""
    with pytest.raises(BadInput) as caught:
        request(prompt=prompt)
    assert caught.value.message == f"--prompt is not UTF-8 text: the byte at offset {offset} does not decode"
    assert "--tokens-file" in caught.value.next_step
