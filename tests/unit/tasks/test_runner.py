"""How a task fails: one sentence, the next step, the contract's exit code, no traceback."""

from __future__ import annotations

from typing import Any

import pytest
from invoke.exceptions import Exit

from bitnet_crossval.errors import BuildFailed, NetworkError, SuiteError
from bitnet_crossval.tasks._runner import suite_task


@suite_task
def failing(c: Any, error: BaseException, verbose: bool = False) -> None:
    raise error


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (NetworkError("cannot reach the host"), 3),
        (BuildFailed("compile failed"), 5),
        (SuiteError("something"), 1),
        (ValueError("a bug"), 1),
        (KeyboardInterrupt(), 130),
    ],
)
def test_errors_become_exit_codes_without_traceback(
    error: BaseException, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(Exit) as info:
        failing(None, error)
    assert info.value.code == code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "error:" in err and "next:" in err
    assert len([line for line in err.splitlines() if line.startswith("error:")]) == 1


def test_verbose_shows_the_traceback_of_a_bug(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(Exit) as info:
        failing(None, ValueError("a bug"), verbose=True)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ValueError: a bug" in err
    assert "error: unexpected ValueError: a bug" in err


def test_verbose_suite_error_prints_traceback_and_keeps_the_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(Exit) as info:
        failing(None, BuildFailed("compile failed"), verbose=True)
    assert info.value.code == 5
    assert "Traceback" in capsys.readouterr().err
