from __future__ import annotations

import time
from pathlib import Path
from typing import Any, NoReturn

import pytest

from bitnet_crossval.backends.detect import Detection, Detector
from bitnet_crossval.backends.specs import LLAMA
from bitnet_crossval.context import SuiteContext
from bitnet_crossval.errors import BackendUnavailable, BadInput, BuildFailed, RevalidationFailed
from bitnet_crossval.provision.install import SetupResult
from bitnet_crossval.reference.sources import shim_source_digest
from bitnet_crossval.repair import preflight as pf
from bitnet_crossval.repair.answer import remembered_answer
from bitnet_crossval.repair.options import REPAIR
from bitnet_crossval.repair.rebuild import RebuildResult
from bitnet_crossval.store.constants import BackendRecord, Constants
from bitnet_crossval.store.layout import CacheLayout


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "auto"),
        ({"CI": "true"}, "never"),
        ({"CI": "1"}, "never"),
        ({"CI": "false"}, "auto"),
        ({"CI": ""}, "auto"),
        ({"GITHUB_ACTIONS": "true"}, "never"),
        ({"GITLAB_CI": "true"}, "never"),
        ({"JENKINS_URL": "http://ci"}, "never"),
    ],
)
def test_default_repair_mode(env: dict[str, str], expected: str) -> None:
    assert pf.repair_mode_from(None, env) == expected


def test_explicit_mode_wins_over_ci() -> None:
    assert pf.repair_mode_from("auto", {"CI": "true"}) == "auto"
    assert pf.repair_mode_from("always", {}) == "always"


def test_bad_mode_is_bad_input() -> None:
    with pytest.raises(BadInput) as info:
        REPAIR.parse("sometimes")
    assert info.value.exit_code == 6
    assert info.value.message == "--repair 'sometimes' is not one of auto, never, always"


def _ctx(tmp_path: Path, *, env: dict[str, str] | None = None, constants: Constants | None = None) -> SuiteContext:
    cache = CacheLayout(tmp_path / "cache")
    return SuiteContext(
        cache=cache,
        env=env or {},
        constants=constants or Constants(path=tmp_path / "c.json", status="missing", problem="none"),
        detector=Detector(env=env or {}, cache=cache),
    )


def _detection(available: bool, *, origin: str = "cache", root: Path | None = None) -> Detection:
    return Detection(
        backend="llama",
        available=available,
        reason="" if available else "not installed",
        origin=origin,
        root=root,
        lib_dir=(root / "lib") if (available and root) else None,
    )


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []


@pytest.fixture
def flow(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Recorder:
    rec = Recorder()
    state: dict[str, Any] = {"available": False}

    def fake_detect(self: Detector, spec: Any) -> Detection:
        rec.calls.append(("detect", None))
        return _detection(state["available"], root=tmp_path / "inst")

    def fake_setup(spec: Any, *, cache: Any, env: Any, force: bool, detector: Detector) -> SetupResult:
        rec.calls.append(("setup", force))
        return SetupResult(
            backend="llama", action="installed", install_dir=tmp_path / "inst", lib_dir=tmp_path / "inst" / "lib"
        )

    def fake_rebuild(ctx: Any, **kwargs: Any) -> RebuildResult:
        rec.calls.append(("rebuild", None))
        return RebuildResult(path=tmp_path / "c.json", records={}, written=True, shim_failures=state["shim_failures"])

    state["shim_failures"] = {}
    monkeypatch.setattr(Detector, "detect", fake_detect)
    monkeypatch.setattr("bitnet_crossval.provision.install.setup_backend", fake_setup)
    monkeypatch.setattr("bitnet_crossval.repair.rebuild.rebuild", fake_rebuild)
    rec.state = state  # type: ignore[attr-defined]
    return rec


class Reexeced(Exception):
    pass


def _fake_reexec(rec: Recorder) -> Any:
    def reexec(*, env_updates: dict[str, str]) -> NoReturn:
        rec.calls.append(("reexec", env_updates))
        raise Reexeced

    return reexec


def _listed(tmp_path: Path, *, shim_sha256: str | None = None) -> dict[str, BackendRecord]:
    """Constants listing llama.cpp with a shim that exists (a stand-in executable)."""
    shim = tmp_path / "bitnet-shim"
    if not shim.exists():
        shim.write_text("#!/bin/sh\n")
        shim.chmod(0o755)
    record = BackendRecord(
        available=True,
        lib_dir=str(tmp_path / "inst" / "lib"),
        shim=str(shim),
        shim_sha256=shim_sha256,
        shim_source=shim_source_digest(),
    )
    return {"llama": record}


def test_available_and_recorded_backend_needs_no_repair(flow: Recorder, tmp_path: Path) -> None:
    flow.state["available"] = True  # type: ignore[attr-defined]
    constants = Constants(path=tmp_path / "c.json", status="ok", backends=_listed(tmp_path))
    report = pf.run_preflight(_ctx(tmp_path, constants=constants), LLAMA, mode="auto", reexec=_fake_reexec(flow))
    assert report.available and not report.repaired
    assert [c[0] for c in flow.calls] == ["detect"]


def test_a_clean_pass_is_remembered_and_a_changed_shim_is_not_served(flow: Recorder, tmp_path: Path) -> None:
    flow.state["available"] = True  # type: ignore[attr-defined]
    env = {"BITNET_CACHE_DIR": str(tmp_path / "cache")}
    constants = Constants(path=tmp_path / "c.json", status="ok", backends=_listed(tmp_path))
    (tmp_path / "cache" / "checks").mkdir(parents=True)
    # Files written just before a check starts are "racily clean" (their times may be those of
    # a change during the check) and never remembered: let the clock move past them first.
    time.sleep(0.05)
    report = pf.run_preflight(_ctx(tmp_path, env=env, constants=constants), LLAMA, mode="auto")
    assert remembered_answer(env, "llama") == {"summary": report.summary(), "report": report.to_json()}
    (tmp_path / "bitnet-shim").write_text("#!/bin/sh\n# rebuilt\n")
    assert remembered_answer(env, "llama") is None


def test_a_pass_over_files_changed_as_it_started_is_not_remembered(flow: Recorder, tmp_path: Path) -> None:
    flow.state["available"] = True  # type: ignore[attr-defined]
    env = {"BITNET_CACHE_DIR": str(tmp_path / "cache")}
    constants = Constants(path=tmp_path / "c.json", status="ok", backends=_listed(tmp_path))
    pf.run_preflight(_ctx(tmp_path, env=env, constants=constants), LLAMA, mode="auto")
    assert remembered_answer(env, "llama") is None


def test_a_pass_with_stale_constants_is_not_remembered(flow: Recorder, tmp_path: Path) -> None:
    flow.state["available"] = True  # type: ignore[attr-defined]
    env = {"BITNET_CACHE_DIR": str(tmp_path / "cache")}
    report = pf.run_preflight(_ctx(tmp_path, env=env), LLAMA, mode="never")
    assert report.available
    assert remembered_answer(env, "llama") is None


def test_available_but_unrecorded_backend_is_repaired_by_a_rebuild_only(flow: Recorder, tmp_path: Path) -> None:
    flow.state["available"] = True  # type: ignore[attr-defined]
    with pytest.raises(Reexeced):
        pf.run_preflight(_ctx(tmp_path), LLAMA, mode="auto", reexec=_fake_reexec(flow))
    assert [c[0] for c in flow.calls] == ["detect", "rebuild", "reexec"]


def test_never_accepts_an_available_but_unrecorded_backend(
    flow: Recorder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flow.state["available"] = True  # type: ignore[attr-defined]
    report = pf.run_preflight(_ctx(tmp_path), LLAMA, mode="never", reexec=_fake_reexec(flow))
    assert report.available
    assert "invoke rebuild" in capsys.readouterr().err


def test_auto_repairs_then_rebuilds_then_reexecs_with_the_library_dir(flow: Recorder, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, env={"LD_LIBRARY_PATH": "/opt/x"})
    with pytest.raises(Reexeced):
        pf.run_preflight(ctx, LLAMA, mode="auto", reexec=_fake_reexec(flow))
    assert [c[0] for c in flow.calls] == ["detect", "setup", "rebuild", "reexec"]
    assert flow.calls[1][1] is False  # not forced
    assert flow.calls[3][1] == {"LD_LIBRARY_PATH": f"{tmp_path / 'inst' / 'lib'}:/opt/x"}


def test_always_forces_a_reinstall_even_when_available(flow: Recorder, tmp_path: Path) -> None:
    flow.state["available"] = True  # type: ignore[attr-defined]
    with pytest.raises(Reexeced):
        pf.run_preflight(_ctx(tmp_path), LLAMA, mode="always", reexec=_fake_reexec(flow))
    assert ("setup", True) in flow.calls


def test_never_reports_and_stops(flow: Recorder, tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable) as info:
        pf.run_preflight(_ctx(tmp_path), LLAMA, mode="never", reexec=_fake_reexec(flow))
    assert "--repair auto" in info.value.next_step
    assert [c[0] for c in flow.calls] == ["detect"]


def test_the_child_never_repairs(flow: Recorder, tmp_path: Path) -> None:
    ctx = _ctx(tmp_path, env={"BITNET_REPAIR_PARENT": "1"})
    with pytest.raises(RevalidationFailed) as info:
        pf.run_preflight(ctx, LLAMA, mode="always", reexec=_fake_reexec(flow))
    assert info.value.exit_code == 8
    assert [c[0] for c in flow.calls] == ["detect"]


def test_the_child_needs_the_constants_to_list_the_backend(flow: Recorder, tmp_path: Path) -> None:
    flow.state["available"] = True  # type: ignore[attr-defined]
    env = {"BITNET_REPAIR_PARENT": "1"}
    with pytest.raises(RevalidationFailed):
        pf.run_preflight(_ctx(tmp_path, env=env), LLAMA, mode="auto", reexec=_fake_reexec(flow))
    listed = Constants(path=tmp_path / "c.json", status="ok", backends=_listed(tmp_path))
    report = pf.run_preflight(_ctx(tmp_path, env=env, constants=listed), LLAMA, mode="auto")
    assert report.repaired and report.available


def test_a_repair_whose_shim_did_not_build_fails_instead_of_reexecuting(flow: Recorder, tmp_path: Path) -> None:
    flow.state["shim_failures"] = {"llama": BuildFailed("compiling the shim failed", next_step="read the log")}  # type: ignore[attr-defined]
    with pytest.raises(BuildFailed) as info:
        pf.run_preflight(_ctx(tmp_path), LLAMA, mode="auto", reexec=_fake_reexec(flow))
    assert info.value.exit_code == 5
    assert "the shim for llama.cpp did not build" in info.value.message
    assert [c[0] for c in flow.calls] == ["detect", "setup", "rebuild"]  # no re-exec, no "(auto-repaired)"


@pytest.mark.parametrize("damage", ["missing", "changed"])
def test_a_dead_shim_is_repaired_with_auto_and_reported_with_never(flow: Recorder, tmp_path: Path, damage: str) -> None:
    flow.state["available"] = True  # type: ignore[attr-defined]
    backends = _listed(tmp_path, shim_sha256="0" * 64)
    shim = tmp_path / "bitnet-shim"
    if damage == "missing":
        shim.unlink()
    constants = Constants(path=tmp_path / "c.json", status="ok", backends=backends)
    with pytest.raises(BackendUnavailable) as info:
        pf.run_preflight(_ctx(tmp_path, constants=constants), LLAMA, mode="never", reexec=_fake_reexec(flow))
    assert info.value.exit_code == 1
    assert "shim" in info.value.message and "invoke rebuild" in info.value.next_step
    with pytest.raises(Reexeced):
        pf.run_preflight(_ctx(tmp_path, constants=constants), LLAMA, mode="auto", reexec=_fake_reexec(flow))
    assert [c[0] for c in flow.calls][-2:] == ["rebuild", "reexec"]


def test_the_child_refuses_a_shim_that_does_not_match(flow: Recorder, tmp_path: Path) -> None:
    flow.state["available"] = True  # type: ignore[attr-defined]
    constants = Constants(path=tmp_path / "c.json", status="ok", backends=_listed(tmp_path, shim_sha256="0" * 64))
    ctx = _ctx(tmp_path, env={"BITNET_REPAIR_PARENT": "1"}, constants=constants)
    with pytest.raises(RevalidationFailed, match="shim"):
        pf.run_preflight(ctx, LLAMA, mode="auto")
