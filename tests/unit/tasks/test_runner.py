"""How a task fails: one sentence, the next step, the documented exit code, no traceback; with
--format json, one document of the same shape for every task."""

from __future__ import annotations

import json
from typing import Any

import pytest
from invoke.context import Context
from invoke.exceptions import Exit

from bitnet_crossval.errors import BadInput, BuildFailed, CandidateFailed, NetworkError, SelfcheckFailed, SuiteError
from bitnet_crossval.tasks._runner import print_json, suite_task
from bitnet_crossval.util.options import FORMAT, VERBOSE, Integer, OptionValues

COUNT = Integer(name="count", help="how many", default=1, maximum=9)
RAISE: list[BaseException] = []


@suite_task(options=(COUNT, FORMAT, VERBOSE), json_error=lambda raw: {"extra": raw.get("count")})
def failing(values: OptionValues) -> None:
    if values[COUNT] == 2:
        print_json({"command": "failing", "ok": True})
    raise RAISE[0]


def run(error: BaseException, **kwargs: Any) -> int:
    RAISE[:] = [error]
    with pytest.raises(Exit) as info:
        failing(Context(), **kwargs)
    return int(info.value.code)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (NetworkError("cannot reach the host"), 3),
        (BuildFailed("compile failed"), 5),
        (CandidateFailed("the candidate crashed"), 11),
        (SelfcheckFailed("a fault was not caught"), 12),
        (SuiteError("something"), 1),
        (ValueError("a bug"), 1),
        (KeyboardInterrupt(), 130),
    ],
)
def test_errors_become_exit_codes_without_traceback(
    error: BaseException, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(error) == code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.out == ""
    assert "error:" in captured.err and "next:" in captured.err
    assert len([line for line in captured.err.splitlines() if line.startswith("error:")]) == 1


def test_verbose_shows_the_traceback_of_a_bug(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(ValueError("a bug"), verbose=True) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ValueError: a bug" in err
    assert "error: unexpected ValueError: a bug" in err


def test_verbose_suite_error_prints_traceback_and_keeps_the_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(BuildFailed("compile failed"), verbose=True) == 5
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("error", "kind", "code"),
    [(BuildFailed("compile failed"), "BuildFailed", 5), (ValueError("a bug"), "UnclassifiedError", 1),
     (KeyboardInterrupt(), "Interrupted", 130)],
)  # fmt: skip
def test_json_mode_prints_one_error_document_of_one_shape(
    error: BaseException, kind: str, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(error, format="json", count="3") == code
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["command"] == "failing" and document["ok"] is False and document["extra"] == "3"
    assert document["error"]["type"] == kind and document["error"]["exit_code"] == code
    assert document["error"]["message"] and document["error"]["next_step"]
    assert "error:" in captured.err  # the sentence still reaches a person


def test_a_bad_value_in_json_mode_is_a_json_document_too(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(BadInput("unused"), format="json", count="x") == 6
    document = json.loads(capsys.readouterr().out)
    assert document["error"]["message"] == "--count 'x' is not a whole number from 0 to 9"


def test_no_second_document_after_the_task_printed_its_own(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(BuildFailed("late"), format="json", count="2") == 5
    assert json.loads(capsys.readouterr().out) == {"command": "failing", "ok": True}


def test_a_bad_format_is_reported_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(BuildFailed("unused"), format="yaml") == 6
    captured = capsys.readouterr()
    assert captured.out == "" and "--format 'yaml' is not one of text, json" in captured.err
