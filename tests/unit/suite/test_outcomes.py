"""Shards, outcomes, the suite's exit code, its JSON document, the merge of shards and the JUnit
file, on outcomes made here (no process runs)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from bitnet_crossval.crossval.statistics import PositionValues, kl_statistics
from bitnet_crossval.errors import BadInput, CandidateFailed, ParityFailed, UnclassifiedError, error_class_for
from bitnet_crossval.suite.cases import Case
from bitnet_crossval.suite.junit import junit_xml
from bitnet_crossval.suite.outcome import CaseOutcome, Status, outcome_from_child, suite_exit_code
from bitnet_crossval.suite.resources import job_limit
from bitnet_crossval.suite.result import SuiteResult, merge_results, read_report
from bitnet_crossval.suite.shard import Shard, parse_shard

GB = 1 << 30


def case(index: int) -> Case:
    return Case(index=index, id=f"case {index}", options=(("model", "synthetic:llama"), ("max-tokens", str(index))))


def outcome(index: int, status: Status = "parity", *, code: int | None = None, cached: bool = False) -> CaseOutcome:
    codes = {"parity": 0, "divergence": 10, "token-mismatch": 10, "candidate-failed": 11, "bad-input": 6}
    values = None
    summary: dict[str, Any] | None = None
    if status in ("parity", "divergence"):
        kl = tuple(0.001 * (index + 1) * (p + 1) for p in range(4))
        values = PositionValues(kl=kl, same_top1=(True, True, status == "parity", True), delta_p=(0.01, -0.02, 0.0))
        summary = {"n_positions": 4, "n_failed": 0 if status == "parity" else 1, "failed_positions": [2]}
        summary.update({**kl_statistics(values).to_json(), "top1_agreement": 1.0})
    return CaseOutcome(
        case=case(index),
        key=f"{index:064x}",
        status=status,
        exit_code=codes.get(status, 1) if code is None else code,
        sentence=f"{status} here",
        seconds=1.5 + index,
        cached=cached,
        summary=summary,
        values=values,
        log=f"/logs/{index}.txt",
    )


def result(outcomes: list[CaseOutcome], *, shard: Shard | None = None, n: int | None = None) -> SuiteResult:
    return SuiteResult(
        name="unit",
        cases_file="/x/cases.toml",
        cases_digest="d" * 64,
        n_cases_in_file=n if n is not None else len(outcomes),
        shard=shard,
        outcomes=tuple(outcomes),
        wall_seconds=12.0,
        jobs=2,
    )


# --- shards -------------------------------------------------------------------------------------------


def test_shards_split_every_case_once_and_evenly() -> None:
    for count in (1, 2, 3, 7):
        owners = [[i for i in range(1, count + 1) if Shard(index=i, count=count).holds(k)] for k in range(23)]
        assert all(len(o) == 1 for o in owners)
        sizes = [sum(o == [i] for o in owners) for i in range(1, count + 1)]
        assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("text", ["0/2", "3/2", "1/0", "a/b", "1", "1/2/3", "-1/2", "", "1/10001", " 2 /"])
def test_a_bad_shard_is_one_sentence(text: str) -> None:
    with pytest.raises(BadInput) as caught:
        parse_shard(text)
    assert caught.value.message == f"--shard {text!r} is not I/N with 1 <= I <= N <= 10000"
    assert caught.value.next_step == "pass --shard 1/4 (the first of four shards)"


def test_a_good_shard() -> None:
    assert parse_shard(" 2 / 3 ") == Shard(index=2, count=3)


# --- outcomes and the exit code ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statuses", "code"),
    [
        (["parity", "parity"], 0),
        (["parity", "divergence", "token-mismatch"], 10),
        (["divergence", "candidate-failed"], 11),
        (["divergence", "killed"], 11),
        (["timeout", "parity"], 11),
        (["killed", "error"], 1),
        (["divergence", "bad-input", "error"], 6),
    ],
)
def test_the_suites_exit_code_ranks_its_cases(statuses: list[Status], code: int) -> None:
    assert suite_exit_code([outcome(i, s) for i, s in enumerate(statuses)]) == code


def test_an_error_passes_on_the_first_environment_code() -> None:
    assert suite_exit_code([outcome(0, "error", code=130), outcome(1, "error", code=3)]) == 1
    assert suite_exit_code([outcome(0, "error", code=4), outcome(1, "error", code=3)]) == 4
    assert error_class_for(4).exit_code == 4 and error_class_for(10) is ParityFailed
    assert error_class_for(11) is CandidateFailed and error_class_for(77) is UnclassifiedError


def test_outcomes_round_trip_through_json() -> None:
    for status in ("parity", "divergence", "killed", "bad-input"):
        before = outcome(3, status)
        after = CaseOutcome.from_json(json.loads(json.dumps(before.to_json())))
        assert after == before


def _report(path: Path, verdict: str) -> Path:
    rows = [
        {"kl": 0.0, "top1_agree": True, "p_next_ref": 0.5, "p_next_cand": 0.5, "reasons": []},
        {"kl": 0.3, "top1_agree": False, "p_next_ref": None, "p_next_cand": None, "reasons": ["KL 0.3 > 0.002"]},
    ]
    summary = {
        "n_positions": 2,
        "n_failed": int(verdict != "parity"),
        "first_failure": 1 if verdict != "parity" else None,
    }
    document = {"schema": "bitnet-crossval/report", "verdict": verdict, "summary": summary, "rows": rows, "model": {}}
    path.write_text(json.dumps(document))
    return path


def test_a_child_is_read_by_its_exit_code_and_documents(tmp_path: Path) -> None:
    stdout, log = tmp_path / "stdout.json", tmp_path / "log.txt"
    args: dict[str, Any] = {"key": "k", "seconds": 1.0, "stdout": stdout, "log": log}
    parity = outcome_from_child(case(0), exit_code=0, report=_report(tmp_path / "p.json", "parity"), **args)
    assert parity.status == "parity" and parity.sentence == "parity at every one of 2 positions"
    assert parity.values == PositionValues(kl=(0.0, 0.3), same_top1=(True, False), delta_p=(0.0,))
    diverged = outcome_from_child(case(0), exit_code=10, report=_report(tmp_path / "d.json", "divergence"), **args)
    assert diverged.status == "divergence"
    assert diverged.sentence == "1 of 2 positions diverge, first at position 1 (KL 0.3 > 0.002)"
    error = {"type": "CandidateFailed", "message": "the candidate cmd:x exited with code 3", "next_step": "fix it"}
    stdout.write_text(json.dumps({"command": "crossval-per-token", "ok": False, "error": {**error, "exit_code": 11}}))
    failed = outcome_from_child(case(0), exit_code=11, report=tmp_path / "none.json", **args)
    assert failed.status == "candidate-failed" and failed.sentence == error["message"] and not failed.cacheable
    stdout.write_text("")
    killed = outcome_from_child(case(0), exit_code=137, report=tmp_path / "none.json", **args)
    assert killed.status == "killed" and killed.sentence == "the case's process was killed by signal 9 (SIGKILL)"
    odd = outcome_from_child(case(0), exit_code=0, report=tmp_path / "none.json", **args)
    assert odd.status == "error" and "ended without its report" in odd.sentence
    bad = outcome_from_child(case(0), exit_code=6, report=tmp_path / "none.json", **args)
    assert bad.status == "bad-input" and "exited with code 6 and printed no error document" in bad.sentence


# --- the document and the merge -------------------------------------------------------------------------


def test_the_summary_pools_every_position_in_case_order() -> None:
    outcomes = [outcome(0), outcome(1, "divergence"), outcome(2, "candidate-failed"), outcome(3)]
    summary = result(outcomes).summary()
    pooled = PositionValues.pooled([o.values for o in outcomes if o.values is not None])
    assert summary["statistics"] == kl_statistics(pooled).to_json()
    assert summary["statistics"]["n_positions"] == 12
    assert (summary["n_passed"], summary["n_diverged"], summary["n_failed"], summary["exit_code"]) == (2, 1, 1, 11)
    assert summary["statuses"]["candidate-failed"] == 1


def test_merged_shards_give_the_unsharded_summary_and_junit(tmp_path: Path) -> None:
    statuses: list[Status] = ["parity", "divergence", "parity", "killed", "parity", "bad-input", "parity"]
    outcomes = [outcome(i, s) for i, s in enumerate(statuses)]
    whole = result(outcomes)
    shards = []
    for index in (1, 2, 3):
        shard = Shard(index=index, count=3)
        part = result([o for o in outcomes if shard.holds(o.case.index)], shard=shard, n=len(outcomes))
        path = tmp_path / f"shard-{index}.json"
        path.write_text(json.dumps(part.to_json()))
        read = read_report(path)
        assert read is not None
        shards.append((str(path), read))
    merged = merge_results(list(reversed(shards)))
    assert merged.to_json()["summary"] == whole.to_json()["summary"]
    assert [c["id"] for c in merged.to_json()["cases"]] == [c["id"] for c in whole.to_json()["cases"]]
    assert junit_xml(merged) == junit_xml(whole)
    assert merged.exit_code == 6 and [m["shard"]["index"] for m in merged.to_json()["merged_from"]] == [1, 2, 3]


def test_a_merge_refuses_missing_doubled_and_foreign_shards() -> None:
    outcomes = [outcome(i) for i in range(4)]

    def shard(index: int, count: int = 2, digest: str = "d" * 64) -> tuple[str, SuiteResult]:
        s = Shard(index=index, count=count)
        part = result([o for o in outcomes if s.holds(o.case.index)], shard=s, n=4)
        return f"s{index}of{count}.json", SuiteResult(**{**part.__dict__, "cases_digest": digest})

    with pytest.raises(BadInput, match=r"^shard 2/2 is missing from the reports to merge$"):
        merge_results([shard(1)])
    with pytest.raises(BadInput, match=r"^s1of2\.json and s1of2\.json are both shard 1/2$"):
        merge_results([shard(1), shard(1)])
    with pytest.raises(BadInput, match=r"^s2of3\.json is shard 2/3, while s1of2\.json is one of 2$"):
        merge_results([shard(1), shard(2, 3)])
    with pytest.raises(BadInput, match=r"^s2of2\.json is a report of other cases than s1of2\.json"):
        merge_results([shard(1), shard(2, digest="e" * 64)])
    with pytest.raises(BadInput, match="there are no shard reports to merge"):
        merge_results([])


def test_reading_a_report_refuses_what_is_not_one(tmp_path: Path) -> None:
    (tmp_path / "case.json").write_text(json.dumps({"schema": "bitnet-crossval/report"}))
    assert read_report(tmp_path / "case.json") is None
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(BadInput, match=r"broken\.json is not JSON"):
        read_report(tmp_path / "broken.json")
    (tmp_path / "old.json").write_text(json.dumps({"schema": "bitnet-crossval/suite", "version": 99}))
    with pytest.raises(BadInput, match="of version 99, not 1"):
        read_report(tmp_path / "old.json")
    (tmp_path / "cut.json").write_text(json.dumps({"schema": "bitnet-crossval/suite", "version": 1, "suite": {}}))
    with pytest.raises(BadInput, match="is a damaged crossval-suite report"):
        read_report(tmp_path / "cut.json")


def test_the_junit_file_has_a_test_case_per_case() -> None:
    outcomes = [outcome(0), outcome(1, "divergence"), outcome(2, "candidate-failed")]
    root = ET.fromstring(junit_xml(result(outcomes)))
    assert root.tag == "testsuites" and root.get("tests") == "3"
    (suite,) = root
    assert (suite.get("name"), suite.get("failures"), suite.get("errors")) == ("unit", "1", "1")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["case 0", "case 1", "case 2"]
    assert cases[0].find("failure") is None and cases[0].find("error") is None
    failure = cases[1].find("failure")
    assert failure is not None and failure.get("message") == "divergence here" and failure.get("type") == "divergence"
    assert cases[2].find("error") is not None
    properties = {p.get("name"): p.get("value") for p in cases[1].iter("property")}
    assert properties["status"] == "divergence" and properties["option.max-tokens"] == "1"
    assert properties["position-0002"] == "KL 0.006, top-1 differs"
    assert float(properties["p99_kl"] or "nan") == pytest.approx(outcomes[1].summary["p99_kl"])  # type: ignore[index]


# --- how many at once ---------------------------------------------------------------------------------


def test_jobs_stay_within_the_cores_and_the_memory() -> None:
    assert job_limit(1, largest_model=0, cores=2, memory=24 * GB).jobs == 1
    assert job_limit(0, largest_model=0, cores=2, memory=24 * GB).jobs == 2
    capped = job_limit(8, largest_model=0, cores=2, memory=24 * GB)
    assert capped.jobs == 2 and capped.capped and capped.reason.startswith("2 cores, 24.0 GB available")
    by_memory = job_limit(4, largest_model=GB, cores=8, memory=12 * GB)
    assert by_memory.jobs == 1 and by_memory.capped  # 300 MB + 9 GB per case
    assert job_limit(3, largest_model=0, cores=4, memory=None).jobs == 3
    assert job_limit(2, largest_model=10 * GB, cores=4, memory=GB).jobs == 1  # never fewer than one


def test_cases_running_at_once_get_their_share_of_the_cores_unless_they_set_it() -> None:
    from bitnet_crossval.suite.cases import Case
    from bitnet_crossval.suite.runner import command_line

    plain = Case(index=0, id="plain", options=(("model", "m.gguf"),))
    own = Case(index=1, id="own", options=(("model", "m.gguf"), ("cores", "3")))
    assert "--cores=1" in command_line(plain, program=("x",), cores=1)
    assert not any(a.startswith("--cores") for a in command_line(plain, program=("x",)))  # alone: every core
    assert [a for a in command_line(own, program=("x",), cores=1) if a.startswith("--cores")] == ["--cores=3"]
