from __future__ import annotations

import pytest

from bitnet_crossval.errors import BadInput
from bitnet_crossval.util.envnum import env_float, env_int

NAME = "BITNET_SOME_SECONDS"


def read_float(raw: str | None, **kwargs) -> float:
    env = {} if raw is None else {NAME: raw}
    options = {"default": 7.5, "example": "30", **kwargs}
    return env_float(env, NAME, **options)


def read_int(raw: str | None, **kwargs) -> int:
    env = {} if raw is None else {NAME: raw}
    options = {"default": 3, "minimum": 1, "example": "4", "unit": "attempts", **kwargs}
    return env_int(env, NAME, **options)


@pytest.mark.parametrize("raw", [None, "", "   ", "\t\n"])
def test_unset_or_empty_float_means_the_default(raw: str | None) -> None:
    assert read_float(raw) == 7.5


@pytest.mark.parametrize(("raw", "value"), [("0", 0.0), ("12", 12.0), (" 2.5 ", 2.5), ("1e3", 1000.0), ("\t4\n", 4.0)])
def test_float_values_in_range_are_read(raw: str, value: float) -> None:
    assert read_float(raw) == value


@pytest.mark.parametrize(
    "raw", ["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1", "-0.001", "ten", "1,5", "0x10"]
)
def test_bad_floats_are_bad_input_naming_the_variable(raw: str) -> None:
    with pytest.raises(BadInput) as caught:
        read_float(raw)
    assert caught.value.exit_code == 6
    assert NAME in caught.value.message
    assert NAME in caught.value.next_step
    assert "30" in caught.value.next_step  # the example


def test_float_minimum_is_inclusive_by_default() -> None:
    assert read_float("5", minimum=5) == 5.0
    with pytest.raises(BadInput, match="at least 5"):
        read_float("4.99", minimum=5)


def test_float_exclusive_minimum_refuses_the_bound_itself() -> None:
    assert read_float("0.001", exclusive_minimum=True) == 0.001
    with pytest.raises(BadInput, match="greater than 0"):
        read_float("0", exclusive_minimum=True)
    with pytest.raises(BadInput, match="greater than 0"):
        read_float("-0", exclusive_minimum=True)


def test_an_exclusive_minimum_does_not_apply_to_the_default() -> None:
    # The default is the caller's own value, never validated against the bound.
    assert read_float("", default=0.0, exclusive_minimum=True) == 0.0


@pytest.mark.parametrize("raw", [None, "", "  "])
def test_unset_or_empty_int_means_the_default(raw: str | None) -> None:
    assert read_int(raw) == 3


@pytest.mark.parametrize(("raw", "value"), [("1", 1), (" 12 ", 12), ("1_000", 1000), ("+5", 5)])
def test_int_values_in_range_are_read(raw: str, value: int) -> None:
    assert read_int(raw) == value


@pytest.mark.parametrize("raw", ["0", "-3", "2.0", "1e3", "nan", "inf", "three", "9" * 5000])
def test_bad_ints_are_bad_input_naming_the_variable_and_unit(raw: str) -> None:
    with pytest.raises(BadInput) as caught:
        read_int(raw)
    assert caught.value.exit_code == 6
    assert NAME in caught.value.message
    assert "attempts" in caught.value.message
    assert "at least 1" in caught.value.message
    assert NAME in caught.value.next_step


def test_int_minimum_zero_accepts_zero() -> None:
    assert read_int("0", minimum=0) == 0
    with pytest.raises(BadInput, match="at least 0"):
        read_int("-1", minimum=0)


@pytest.mark.parametrize("raw", ["1\n2", "abc\r\ndef", "\x1b[31mred", "x\u2028y"])
def test_messages_carry_no_line_break_even_for_hostile_values(raw: str) -> None:
    for reader in (read_float, read_int):
        with pytest.raises(BadInput) as caught:
            reader(raw)
        rendered = caught.value.render()
        first_line = rendered.splitlines()[0]
        assert NAME in first_line
        assert "\n" not in caught.value.message and "\r" not in caught.value.message
        assert "\u2028" not in caught.value.message
        assert "\x1b" not in caught.value.message
