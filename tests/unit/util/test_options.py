"""Options declared once: each kind parses the text typed into its type, refuses anything else
with one sentence (exit 6) naming the flag and a good value, and says in its help what it takes."""

from __future__ import annotations

from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import Any, Literal

import pytest

from bitnet_crossval.errors import BadInput
from bitnet_crossval.suite.options import SHARD
from bitnet_crossval.util.options import (
    FORMAT,
    VERBOSE,
    Choice,
    Flag,
    Integer,
    Number,
    Option,
    OptionalChoice,
    OptionalNumber,
    OptionValues,
    PathOption,
    Text,
)

COUNT = Integer(name="max_tokens", help="tokens", default=16, maximum=4096)
SECONDS = Number(name="timeout", help="limit", unit="seconds", minimum=0, minimum_exclusive=True, maximum=60,
                 default=10, example=5)  # fmt: skip
LIMIT = OptionalNumber(name="kl_max", help="limit", unit="nats", example=0.05, default_text="by the model")
Mode = Literal["auto", "never"]
MODE: Choice[Mode] = Choice(name="mode", help="how", choices=("auto", "never"), default="auto")
MAYBE: OptionalChoice[Mode] = OptionalChoice(name="repair", help="how", choices=("auto", "never"), default_text="x")


@pytest.mark.parametrize(("text", "value"), [(None, 16), ("", 16), ("  ", 16), ("0", 0), (" 7 ", 7), ("08", 8),
                                             ("4096", 4096)])  # fmt: skip
def test_an_integer_takes_ascii_whole_numbers_in_range(text: str | None, value: int) -> None:
    assert COUNT.parse(text) == value


@pytest.mark.parametrize("text", ["x", "-1", "+3", "1.5", "1e3", "4097", "1" * 40, "²", "٣", "0x10", "1_000"])
def test_an_integer_refuses_anything_else(text: str) -> None:
    with pytest.raises(BadInput) as info:
        COUNT.parse(text)
    assert info.value.message == f"--max-tokens {text!r} is not a whole number from 0 to 4096"
    assert info.value.next_step == "pass --max-tokens 16" and info.value.exit_code == 6


@pytest.mark.parametrize(("text", "value"), [(None, 10.0), ("", 10.0), ("0.5", 0.5), ("1e1", 10.0), ("60", 60.0)])
def test_a_number_within_its_bounds(text: str | None, value: float) -> None:
    assert SECONDS.parse(text) == value


@pytest.mark.parametrize("text", ["0", "-1", "60.5", "nan", "inf", "-inf", "abc", "1,5", "1e12"])
def test_a_number_out_of_bounds_or_not_a_number_is_refused(text: str) -> None:
    with pytest.raises(BadInput) as info:
        SECONDS.parse(text)
    assert info.value.message == f"--timeout {text!r} is not a number of seconds, more than 0 and at most 60"
    assert info.value.next_step == "pass --timeout 5"


def test_an_optional_number_is_none_when_not_given() -> None:
    assert LIMIT.parse(None) is None and LIMIT.parse(" ") is None and LIMIT.parse("0") == 0.0
    with pytest.raises(BadInput, match=r"--kl-max '-0.1' is not a number of nats, at least 0"):
        LIMIT.parse("-0.1")


def test_choices_parse_into_their_word_and_refuse_others() -> None:
    assert (MODE.parse(None), MODE.parse(" never ")) == ("auto", "never")
    assert (MAYBE.parse(None), MAYBE.parse(""), MAYBE.parse("never")) == (None, None, "never")
    for bad in ("NEVER", "sometimes", "auto,never"):
        with pytest.raises(BadInput, match=f"--mode '{bad}' is not one of auto, never"):
            MODE.parse(bad)
    assert FORMAT.parse("json") == "json"


def test_text_keeps_an_explicit_empty_value_and_paths_are_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompt = Text(name="prompt", help="text")
    assert (prompt.parse(None), prompt.parse("")) == (None, "")
    path = PathOption(name="report", help="file")
    monkeypatch.chdir(tmp_path)
    assert (path.parse(None), path.parse(" "), path.parse("r.json")) == (None, None, tmp_path / "r.json")
    with pytest.raises(BadInput, match="NUL"):
        path.parse("a\0b")


def test_the_help_says_the_type_and_the_default() -> None:
    assert COUNT.help_text() == "tokens (a whole number from 0 to 4096; default 16)"
    assert LIMIT.help_text() == "limit (a number of nats, at least 0; default by the model)"
    assert MODE.help_text() == "how (auto or never; default auto)"
    assert Flag(name="trace", help="trace it").help_text() == "trace it"
    assert (COUNT.flag_kind, SECONDS.flag_kind, Flag(name="x", help="").flag_kind) == ("int", "text", "flag")


def test_values_are_parsed_by_the_option_that_declares_them() -> None:
    values = OptionValues((COUNT, MODE), {"max_tokens": "3"})
    assert values[COUNT] == 3 and values[MODE] == "auto"
    assert values.given(COUNT) and not values.given(MODE)
    with pytest.raises(KeyError):
        values[SECONDS]
    with pytest.raises(ValueError, match="undeclared"):
        OptionValues((COUNT,), {"bogus": "1"})
    with pytest.raises(BadInput):
        OptionValues((COUNT, MODE), {"mode": "x"}).check_all()


@pytest.mark.parametrize("option", [VERBOSE, FORMAT, SHARD, Integer(name="n", help="h", default=1, maximum=3)])
def test_an_option_is_set_once_and_never_changed(option: Option[Any]) -> None:
    with pytest.raises(FrozenInstanceError):
        option.name = "other"
    with pytest.raises(FrozenInstanceError):
        del option.help
    with pytest.raises(FrozenInstanceError):
        option.hlep = "a misspelt field"
    assert option.name != "other" and option.help
