"""What a cross-validation shows and writes: the table, the JSON report, JUnit XML and the plot,
from results built here out of known logits (no backend, no engine)."""

from __future__ import annotations

import errno
import json
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bitnet_crossval.crossval.metrics import Thresholds, compare_logits, summarize
from bitnet_crossval.crossval.report import (
    FULL_TABLE_ROWS,
    HEAD_ROWS,
    MAX_FAILED_ROWS,
    check_output_path,
    print_table,
    rows_to_show,
    worst_positions,
    write_junit,
    write_outputs,
    write_plot,
    write_report,
)
from bitnet_crossval.crossval.result import CrossvalResult
from bitnet_crossval.crossval.tokens import TokenMismatch
from bitnet_crossval.errors import BadInput, PermissionDenied, SuiteError, UnclassifiedError
from bitnet_crossval.util.files import dump_json

N_VOCAB = 64


def result(n: int, failing: tuple[int, ...] = (), *, n_prompt: int | None = None) -> CrossvalResult:
    """A result of ``n`` positions whose candidate is wrong exactly at ``failing``."""
    rng = np.random.default_rng(n)
    ref = (rng.standard_normal((n, N_VOCAB)) * 3).astype(np.float32)
    cand = ref.copy()
    for i in failing:
        cand[i] = np.roll(cand[i], 7)
    tokens = [int(t) for t in rng.integers(0, N_VOCAB, n)]
    thresholds = Thresholds(kl_max=0.002)
    rows = compare_logits(ref, cand, tokens, thresholds=thresholds)
    summary = summarize(rows)
    assert summary.failed_positions == sorted(failing)
    return CrossvalResult(
        verdict="parity" if summary.passed else "divergence",
        model={"path": "/models/tiny.gguf", "precision": "float", "architecture": "llama"},
        reference={"backend": "llama", "commit": "abc"},
        candidate={"label": "numpy", "kind": "numpy"},
        tokens=tokens,
        n_prompt=n if n_prompt is None else n_prompt,
        pieces=[f"t{t}" for t in tokens],
        thresholds=thresholds,
        rows=rows,
        summary=summary,
        token_mismatch=None,
        timings={"reference": 0.5, "candidate": 0.25, "total": 1.25},
    )


def mismatch_result() -> CrossvalResult:
    mismatch = TokenMismatch(first_index=2, reference=(1, 5, 6, 7), candidate=(1, 5, 9, 7, 8))
    return CrossvalResult(
        verdict="token-mismatch",
        model={"path": "/models/tiny.gguf", "precision": "float"},
        reference={"backend": "llama"},
        candidate={"label": "numpy", "kind": "numpy"},
        tokens=[1, 5, 6, 7],
        n_prompt=4,
        pieces=["", "a", "b", "c"],
        thresholds=Thresholds(),
        rows=[],
        summary=None,
        token_mismatch=mismatch,
        timings={"tokenize": 0.1, "total": 0.2},
    )


def positions(shown: list[Any]) -> list[int | None]:
    return [None if r is None else r.position for r in shown]


# --- the table's rows ---------------------------------------------------------------------------------


def test_a_short_run_shows_every_row() -> None:
    r = result(FULL_TABLE_ROWS, failing=(3,))
    assert positions(rows_to_show(r.rows)) == list(range(FULL_TABLE_ROWS))


def test_a_long_run_shows_the_head_the_failures_and_the_last_row_with_gaps_marked() -> None:
    r = result(60, failing=(10, 11, 30))
    assert positions(rows_to_show(r.rows)) == [*range(HEAD_ROWS), None, 10, 11, None, 30, None, 59]


def test_a_long_run_that_agrees_shows_the_head_and_the_last_row() -> None:
    assert positions(rows_to_show(result(40).rows)) == [*range(HEAD_ROWS), None, 39]


def test_a_long_run_shows_its_rows_of_highest_kl_even_when_they_pass() -> None:
    r = result(4000, failing=(2500,))
    rows = [
        replace(row, kl=1e-4 * (row.position % 7) + (0.05 if row.position in (1800, 3100) else 0.0)) for row in r.rows
    ]
    rows[2500] = replace(rows[2500], kl=0.9, passed=False)
    worst = worst_positions(rows)
    assert worst == [2500, 3100, 1800]  # 3100 % 7 > 1800 % 7
    assert positions(rows_to_show(rows)) == [*range(HEAD_ROWS), None, 1800, None, 2500, None, 3100, None, 3999]


def test_the_table_of_a_long_run_stays_short_and_marks_the_highest_kl(capfd: pytest.CaptureFixture[str]) -> None:
    r = result(3000)
    rows = [replace(row, kl=1e-6 + 1e-9 * row.position) for row in r.rows]  # the last rows are the worst
    print_table(replace(r, rows=rows))
    err = capfd.readouterr().err
    table = [line for line in err.splitlines() if line.startswith("│")]
    assert len(table) == HEAD_ROWS + 1 + 3  # 0-3, a gap, 2997-2999 (the three worst, the last among them)
    assert err.count("(highest KL)") == 3


def test_many_failures_are_cut_at_the_limit() -> None:
    failing = tuple(range(5, 45))
    r = result(50, failing=failing)
    shown = positions(rows_to_show(r.rows))
    beyond = [p for p in shown if p is not None and p in failing[MAX_FAILED_ROWS:]]
    assert [p for p in shown if p is not None and p in failing[:MAX_FAILED_ROWS]] == list(failing[:MAX_FAILED_ROWS])
    assert set(beyond) <= set(worst_positions(r.rows))  # past the limit, only the worst ones
    assert shown[-1] == 49


def test_the_last_row_is_shown_even_when_it_fails_beyond_the_limit() -> None:
    shown = positions(rows_to_show(result(50, failing=tuple(range(50))).rows))
    assert shown[-1] == 49 and shown[-2] is None


# --- the table itself ------------------------------------------------------------------------------------


def test_the_table_and_summary_of_a_parity(capfd: pytest.CaptureFixture[str]) -> None:
    print_table(result(5, n_prompt=3))
    out, err = capfd.readouterr()
    assert out == ""
    assert "numpy vs llama (tiny.gguf)" in err
    assert "5 positions (3 prompt + 2 generated)" in err and "(gen)" in err
    assert "limit 0.002, float weights" in err
    assert "parity: the candidate agrees with the reference at every position" in err


def test_the_table_of_a_divergence_names_the_first_failure(capfd: pytest.CaptureFixture[str]) -> None:
    print_table(result(6, failing=(2, 4)))
    err = capfd.readouterr().err
    assert "divergence: 2 of 6 positions fail; the first is position 2 (KL" in err
    assert "FAIL" in err


def test_a_token_mismatch_is_shown_around_its_index(capfd: pytest.CaptureFixture[str]) -> None:
    print_table(mismatch_result())
    err = capfd.readouterr().err
    assert "token mismatch at index 2" in err
    assert "[1, 5, 6, 7]" in err and "[1, 5, 9, 7, 8]" in err and "4 vs 5 tokens" in err


# --- JSON -------------------------------------------------------------------------------------------------


def test_the_json_report(tmp_path: Path) -> None:
    r = result(7, failing=(5,))
    path = tmp_path / "report.json"
    write_report(r, path)
    doc = json.loads(path.read_text())
    assert doc == json.loads(dump_json(r.to_json())) == json.loads(json.dumps(r.to_json(), allow_nan=False))
    assert doc["schema"] == "bitnet-crossval/report" and doc["version"] == 1
    assert doc["verdict"] == "divergence" and doc["passed"] is False
    assert doc["summary"]["first_failure"] == 5 and len(doc["rows"]) == 7
    assert doc["token_mismatch"] is None
    assert r.failure_sentence().startswith("parity failed: 1 of 7 positions diverge, first at position 5 (KL")


def test_json_never_holds_nan_or_infinity() -> None:
    r = result(3)
    r.rows[0] = replace(r.rows[0], nmse=math.inf, cosine=math.nan)
    text = dump_json(r.to_json()).decode()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["rows"][0]["nmse"] is None


def test_the_json_of_a_token_mismatch() -> None:
    r = mismatch_result()
    doc = json.loads(dump_json(r.to_json()))
    assert doc["verdict"] == "token-mismatch" and doc["rows"] == [] and doc["summary"] is None
    assert doc["token_mismatch"]["first_index"] == 2
    assert "at token index 2" in r.failure_sentence()
    assert "--tokens-file" in r.next_step()


# --- JUnit ---------------------------------------------------------------------------------------------


def test_junit_has_one_case_per_position_and_the_failures_carry_their_metrics(tmp_path: Path) -> None:
    r = result(5, failing=(1, 3))
    path = tmp_path / "junit.xml"
    write_junit(r, path)
    assert path.read_bytes().startswith(b"<?xml")
    suite = ET.parse(path).getroot()
    assert (suite.tag, suite.get("name"), suite.get("tests"), suite.get("failures")) == (
        "testsuite", "crossval-per-token", "5", "2",
    )  # fmt: skip
    assert suite.get("time") == "1.250"
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [f"position-{i:04d}" for i in range(5)]
    assert {c.get("classname") for c in cases} == {"crossval"}
    failures = {c.get("name", ""): c.find("failure") for c in cases if c.find("failure") is not None}
    assert sorted(failures) == ["position-0001", "position-0003"]
    failure = failures["position-0001"]
    assert failure is not None and failure.get("message", "").startswith("KL")
    assert json.loads(failure.text or "")["position"] == 1


def test_junit_of_a_token_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "junit.xml"
    write_junit(mismatch_result(), path)
    suite = ET.parse(path).getroot()
    assert (suite.get("tests"), suite.get("failures")) == ("1", "1")
    case = suite.find("testcase")
    assert case is not None and case.get("name") == "tokenization"
    failure = case.find("failure")
    assert failure is not None and failure.get("message") == "token mismatch at index 2"


# --- the plot ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("failing", [(), (2,)], ids=["parity", "divergence"])
def test_the_plot_is_a_png(tmp_path: Path, failing: tuple[int, ...]) -> None:
    r = result(8, failing=failing, n_prompt=5)
    r.rows[0] = replace(r.rows[0], nmse=math.inf)  # drawn as a gap, no crash
    path = tmp_path / "plot.png"
    write_plot(r, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]


# --- output paths -------------------------------------------------------------------------------------------


def test_check_output_path(tmp_path: Path) -> None:
    check_output_path(tmp_path / "new.json", what="the report")
    (tmp_path / "old.json").write_text("x")
    check_output_path(tmp_path / "old.json", what="the report")
    with pytest.raises(BadInput, match="the directory of the report"):
        check_output_path(tmp_path / "missing" / "r.json", what="the report")
    with pytest.raises(BadInput, match="is a directory"):
        check_output_path(tmp_path, what="the report")


def test_plot_without_matplotlib_is_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from bitnet_crossval.crossval.report import check_plot_available
    from bitnet_crossval.errors import BadInput

    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: object, **kwargs: object) -> object:
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(BadInput, match="--plot needs matplotlib") as caught:
        check_plot_available()
    assert caught.value.exit_code == 6 and "pip install" in caught.value.next_step


@pytest.mark.parametrize("planted", ["symlink", "directory", "fifo"])
def test_the_plot_never_uses_a_fixed_temporary_name(tmp_path: Path, planted: str) -> None:
    """A link, a directory or a FIFO at the plot's old temporary name (`.NAME.tmp.png`) is left
    alone: the plot goes through a fresh, exclusive temporary file."""
    victim = tmp_path / "victim.txt"
    victim.write_text("mine\n")
    trap = tmp_path / ".plot.png.tmp.png"
    {"symlink": lambda: trap.symlink_to(victim), "directory": trap.mkdir, "fifo": lambda: os.mkfifo(trap)}[planted]()
    write_plot(result(4), tmp_path / "plot.png")
    assert victim.read_text() == "mine\n"
    assert (tmp_path / "plot.png").read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".plot.png.tmp.png", "plot.png", "victim.txt"]


def test_a_read_only_output_is_refused_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    existing = tmp_path / "r.json"
    existing.write_text("{}")
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != existing)
    with pytest.raises(PermissionDenied) as caught:
        check_output_path(existing, what="the --report file")
    assert (
        caught.value.message
        == f"the --report file {existing} is read-only or immutable, so the suite will not replace it"
    )
    assert str(existing) in caught.value.next_step and "BITNET_CACHE_DIR" not in caught.value.next_step


@pytest.mark.parametrize(
    ("code", "kind", "next_fragment"),
    [
        (
            errno.EPERM,
            PermissionDenied,
            "make {path} and its directory writable (chattr -i, or -a, when it is immutable or append-only)",
        ),
        (errno.ENOSPC, UnclassifiedError, "free space on the file system that holds {path}"),
        (errno.EIO, UnclassifiedError, "rerun with --verbose"),
    ],
)
def test_an_output_that_cannot_be_written_names_the_file_and_its_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, kind: type[SuiteError], next_fragment: str
) -> None:
    path = tmp_path / "r.json"

    def refuse(src: object, dst: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(SuiteError) as caught:
        write_outputs(result(3), {"report": path})
    assert type(caught.value) is kind
    assert caught.value.message == f"cannot write to {path}: {os.strerror(code)}"
    assert next_fragment.format(path=path) in caught.value.next_step
    assert caught.value.next_step.endswith("or name another file with --report")
    assert "BITNET_CACHE_DIR" not in caught.value.next_step
    assert sorted(p.name for p in tmp_path.iterdir()) == []
