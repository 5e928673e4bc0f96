"""crossval-per-token's option values: parsed and checked before anything runs, every problem
one BadInput sentence (exit 6)."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import pytest

from bitnet_crossval.crossval.candidates import DEFAULT_CANDIDATE_TIMEOUT
from bitnet_crossval.crossval.metrics import DEFAULT_TIE_MARGIN
from bitnet_crossval.crossval.options import (
    MAX_GENERATED,
    build_request,
    parse_choice,
    parse_float,
    parse_format,
    parse_int,
    parse_optional_float,
    parse_output,
)
from bitnet_crossval.crossval.run import DEFAULT_MAX_TOKENS, DEFAULT_PROMPT, CrossvalRequest
from bitnet_crossval.errors import BadInput

DEFAULTS: dict[str, Any] = {
    "model": "",
    "tokenizer": "",
    "prompt": None,
    "tokens_file": "",
    "max_tokens": "",
    "backend": "llama",
    "candidate": "numpy",
    "add_bos": "auto",
    "parse_special": False,
    "kl_max": "",
    "tie_margin": "",
    "candidate_timeout": "",
    "threads": "",
    "bitnet_activation": "auto",
}


def request(**changes: Any) -> CrossvalRequest:
    return build_request(**{**DEFAULTS, **changes})


# --- numbers and choices ----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "value"), [("", 16), ("  ", 16), ("0", 0), (" 7 ", 7), ("08", 8), ("4096", 4096)])
def test_parse_int_accepts_ascii_whole_numbers_in_range(text: str, value: int) -> None:
    assert parse_int(text, option="--max-tokens", default=16, minimum=0, maximum=4096) == value


@pytest.mark.parametrize("text", ["x", "-1", "+3", "1.5", "1e3", "4097", "12345678", "²", "٣", "0x10", "1_000"])
def test_parse_int_refuses_anything_else(text: str) -> None:
    with pytest.raises(BadInput) as info:
        parse_int(text, option="--max-tokens", default=16, minimum=0, maximum=4096)
    assert info.value.message == f"--max-tokens {text!r} is not a whole number from 0 to 4096"
    assert "--max-tokens" in info.value.next_step


@pytest.mark.parametrize(("text", "value"), [("", None), ("0", 0.0), (" 0.5 ", 0.5), ("1e-3", 0.001), ("2", 2.0)])
def test_parse_optional_float(text: str, value: float | None) -> None:
    assert parse_optional_float(text, option="--kl-max", example=0.05) == value


@pytest.mark.parametrize("text", ["-1", "-0.001", "nan", "NaN", "inf", "-inf", "abc", "1,5", "0.1.2"])
def test_parse_optional_float_refuses_negative_and_non_finite(text: str) -> None:
    with pytest.raises(BadInput, match=r"is not a number of at least 0"):
        parse_optional_float(text, option="--kl-max", example=0.05)


def test_parse_float_falls_back_to_its_default() -> None:
    assert parse_float("", option="--tie-margin", default=0.5, example=0.5) == 0.5
    assert parse_float("0.25", option="--tie-margin", default=0.5, example=0.5) == 0.25


def test_parse_choice_and_format() -> None:
    assert parse_choice("", option="--add-bos", choices=("auto", "yes", "no"), default="auto") == "auto"
    assert parse_choice(" yes ", option="--add-bos", choices=("auto", "yes", "no"), default="auto") == "yes"
    assert (parse_format(""), parse_format("text"), parse_format("json")) == ("text", "text", "json")
    for bad in ("yaml", "JSON", "jsonl"):
        with pytest.raises(BadInput, match=f"--format '{bad}' is not one of text, json"):
            parse_format(bad)


# --- output files -------------------------------------------------------------------------------------


def test_parse_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_output("", what="the report") is None
    assert parse_output("  ", what="the report") is None
    monkeypatch.chdir(tmp_path)
    assert parse_output("r.json", what="the report") == tmp_path / "r.json"
    (tmp_path / "exists.json").write_text("old")
    assert parse_output(str(tmp_path / "exists.json"), what="the report") == tmp_path / "exists.json"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert parse_output("~/r.json", what="the report") == tmp_path / "r.json"


def test_parse_output_refuses_a_missing_directory_a_directory_and_a_fifo(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match=r"the directory of the plot .* does not exist"):
        parse_output(str(tmp_path / "no" / "plot.png"), what="the plot")
    with pytest.raises(BadInput, match="is a directory, not a regular file"):
        parse_output(str(tmp_path), what="the JUnit file")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(BadInput, match=r"the report .* not a regular file"):
        parse_output(str(fifo), what="the report")


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
    assert r.candidate.function == "norm_eps" and r.bitnet_activation == "relu2"
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


def test_the_task_passes_every_option_and_documents_it() -> None:
    """Every keyword of build_request is a parameter of the invoke task, with help text."""
    from tasks.crossval import crossval_per_token

    body = crossval_per_token.body
    parameters = set(inspect.signature(body).parameters) - {"c"}
    assert set(DEFAULTS) <= parameters
    assert set(crossval_per_token.help) == {name.replace("_", "-") for name in parameters}
    for name, value in DEFAULTS.items():
        default = inspect.signature(body).parameters[name].default
        assert default == value or (default == "" and value == ""), name
