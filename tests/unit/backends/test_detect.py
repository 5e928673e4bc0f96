from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

from bitnet_crossval.backends import detect as detect_mod
from bitnet_crossval.backends.detect import (
    Detection,
    Detector,
    check_loadable,
    detect,
    detect_at,
    find_include_dirs,
    find_libraries,
)
from bitnet_crossval.backends.specs import BITNET, LLAMA, BackendSpec
from bitnet_crossval.store.layout import CacheLayout
from bitnet_crossval.store.marker import MARKER_NAME, write_marker

ALL_LIBS = ("ggml-base", "ggml-cpu", "ggml", "llama")


def touch(path: Path, content: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


def lay_out(root: Path, libs: Mapping[str, str], headers: Mapping[str, str]) -> Path:
    """Put lib<name>.so under ``libs[name]`` and each header under ``headers[name]``."""
    for name, sub in libs.items():
        touch(root / sub / f"lib{name}.so", f"not really {name}")
    for header, sub in headers.items():
        touch(root / sub / header, f"// {header}")
    return root


def install_prefix(root: Path, libs: Iterable[str] = ALL_LIBS) -> Path:
    return lay_out(root, dict.fromkeys(libs, "lib"), {"llama.h": "include", "ggml.h": "include"})


def cache_install(cache: CacheLayout, spec: BackendSpec = LLAMA) -> Path:
    root = install_prefix(cache.install_dir(spec.name))
    write_marker(root, backend=spec.name, source={"kind": "git", "commit": spec.commit}, build_flags=[], build_dir=root)
    return root


@pytest.fixture(autouse=True)
def _linux_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """The trees below use Linux library names."""
    monkeypatch.setattr(sys, "platform", "linux")


@pytest.fixture
def cache(tmp_path: Path) -> CacheLayout:
    return CacheLayout(tmp_path / "cache")


class ProbeCounter:
    """Stands in for the load check: counts calls, answers with ``problem``."""

    def __init__(self, problem: str = "") -> None:
        self.problem = problem
        self.calls: list[tuple[str, dict[str, Path]]] = []

    def __call__(
        self,
        spec: BackendSpec,
        libraries: Mapping[str, Path],
        *,
        python: str | None = None,
        record: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> str:
        self.calls.append((spec.name, dict(libraries)))
        return self.problem


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> ProbeCounter:
    counter = ProbeCounter()
    monkeypatch.setattr(detect_mod, "check_loadable", counter)
    return counter


# --- finding libraries and headers -----------------------------------------------------------


def test_find_libraries_in_an_install_prefix(tmp_path: Path) -> None:
    root = install_prefix(tmp_path / "prefix")
    assert find_libraries(LLAMA, root) == {name: root / "lib" / f"lib{name}.so" for name in ALL_LIBS}


def test_find_libraries_in_lib64(tmp_path: Path) -> None:
    root = lay_out(tmp_path / "prefix", dict.fromkeys(ALL_LIBS, "lib64"), {})
    assert find_libraries(LLAMA, root)["llama"] == root / "lib64" / "libllama.so"


def test_find_libraries_in_a_llama_cpp_build_tree(tmp_path: Path) -> None:
    root = lay_out(
        tmp_path / "llama.cpp",
        {"llama": "build/src", "ggml": "build/ggml/src", "ggml-base": "build/ggml/src", "ggml-cpu": "build/ggml/src"},
        {"llama.h": "include", "ggml.h": "ggml/include"},
    )
    found = find_libraries(LLAMA, root)
    assert found["llama"] == root / "build" / "src" / "libllama.so"
    assert found["ggml"] == root / "build" / "ggml" / "src" / "libggml.so"
    assert find_include_dirs(root) == (root / "include", root / "ggml" / "include")


def test_find_libraries_in_a_newer_llama_cpp_build_tree_with_bin(tmp_path: Path) -> None:
    root = lay_out(tmp_path / "llama.cpp", dict.fromkeys(ALL_LIBS, "build/bin"), {})
    assert set(find_libraries(LLAMA, root)) == set(ALL_LIBS)


def test_find_libraries_in_a_bitnet_cpp_build_tree(tmp_path: Path) -> None:
    sub = "build/3rdparty/llama.cpp"
    root = lay_out(
        tmp_path / "BitNet",
        {"llama": f"{sub}/src", "ggml": f"{sub}/ggml/src"},  # an older tree: no ggml-base, ggml-cpu
        {
            "llama.h": "3rdparty/llama.cpp/include",
            "ggml.h": "3rdparty/llama.cpp/ggml/include",
            "ggml-bitnet.h": "include",
        },
    )
    assert find_libraries(BITNET, root) == {
        "llama": root / sub / "src" / "libllama.so",
        "ggml": root / sub / "ggml" / "src" / "libggml.so",
    }
    assert find_include_dirs(root) == (
        root / "3rdparty" / "llama.cpp" / "include",
        root / "3rdparty" / "llama.cpp" / "ggml" / "include",
    )


def test_an_install_prefix_wins_over_a_build_directory_in_the_same_root(tmp_path: Path) -> None:
    root = install_prefix(tmp_path / "prefix")
    touch(root / "build" / "src" / "libllama.so")
    assert find_libraries(LLAMA, root)["llama"] == root / "lib" / "libllama.so"


def test_find_libraries_uses_the_platforms_suffix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = install_prefix(tmp_path / "prefix")  # .so files only
    touch(root / "lib" / "libllama.dylib")
    monkeypatch.setattr(sys, "platform", "darwin")
    assert find_libraries(LLAMA, root) == {"llama": root / "lib" / "libllama.dylib"}


def test_find_libraries_in_an_empty_tree(tmp_path: Path) -> None:
    assert find_libraries(LLAMA, tmp_path) == {}


def test_one_include_dir_when_both_headers_share_it(tmp_path: Path) -> None:
    root = install_prefix(tmp_path / "prefix")
    assert find_include_dirs(root) == (root / "include",)


def test_no_include_dirs_without_llama_h(tmp_path: Path) -> None:
    root = lay_out(tmp_path / "prefix", {}, {"ggml.h": "include"})
    assert find_include_dirs(root) == ()


def test_llama_h_without_ggml_h_is_one_dir(tmp_path: Path) -> None:
    root = lay_out(tmp_path / "prefix", {}, {"llama.h": "include"})
    assert find_include_dirs(root) == (root / "include",)


# --- detect_at: the reasons ------------------------------------------------------------------


def test_a_missing_cache_install_is_not_installed(cache: CacheLayout, probes: ProbeCounter) -> None:
    found = detect_at(LLAMA, cache.install_dir("llama"), origin="cache")
    assert not found.available
    assert found.origin == "cache"
    assert "llama.cpp is not installed in the cache" in found.reason
    assert probes.calls == []


def test_a_directory_variable_naming_a_file_is_not_a_directory(tmp_path: Path, probes: ProbeCounter) -> None:
    not_dir = touch(tmp_path / "file")
    found = detect_at(LLAMA, not_dir, origin="LLAMA_CPP_DIR")
    assert not found.available
    assert found.reason == f"LLAMA_CPP_DIR={not_dir} is not a directory"


def test_a_cache_install_without_a_marker_does_not_count(cache: CacheLayout, probes: ProbeCounter) -> None:
    root = install_prefix(cache.install_dir("llama"))  # complete but for the marker
    found = detect_at(LLAMA, root, origin="cache")
    assert not found.available
    assert "install marker is missing" in found.reason
    assert probes.calls == []


def test_a_cache_install_with_another_backends_marker_does_not_count(cache: CacheLayout, probes: ProbeCounter) -> None:
    root = install_prefix(cache.install_dir("llama"))
    write_marker(root, backend="bitnet", source={}, build_flags=[], build_dir=root)
    assert "install marker is missing" in detect_at(LLAMA, root, origin="cache").reason


def test_a_directory_from_the_environment_needs_no_marker(tmp_path: Path, probes: ProbeCounter) -> None:
    root = install_prefix(tmp_path / "prefix")
    found = detect_at(LLAMA, root, origin="LLAMA_CPP_DIR")
    assert found.available, found.reason
    assert found.origin == "LLAMA_CPP_DIR"
    assert found.marker is None
    assert found.lib_dir == root / "lib"
    assert found.include_dirs == (root / "include",)
    assert len(probes.calls) == 1


def test_missing_libraries_are_named(tmp_path: Path, probes: ProbeCounter) -> None:
    root = install_prefix(tmp_path / "prefix", libs=("ggml-base", "ggml-cpu"))
    found = detect_at(LLAMA, root, origin="LLAMA_CPP_DIR")
    assert not found.available
    assert found.reason == f"no libllama, libggml under {root}"
    assert probes.calls == []


def test_one_missing_library_is_named(tmp_path: Path, probes: ProbeCounter) -> None:
    root = install_prefix(tmp_path / "prefix", libs=("ggml", "ggml-base"))
    assert detect_at(LLAMA, root, origin="LLAMA_CPP_DIR").reason == f"no libllama under {root}"


def test_missing_llama_h_is_named(tmp_path: Path, probes: ProbeCounter) -> None:
    root = lay_out(tmp_path / "prefix", dict.fromkeys(ALL_LIBS, "lib"), {"ggml.h": "include"})
    found = detect_at(LLAMA, root, origin="LLAMA_CPP_DIR")
    assert not found.available
    assert found.reason == f"no llama.h under {root}"
    assert "llama" in found.libraries  # what was found is still reported
    assert probes.calls == []


def test_a_failed_load_check_is_the_reason(cache: CacheLayout, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detect_mod, "check_loadable", ProbeCounter("the libraries do not load: nope"))
    root = cache_install(cache)
    found = detect_at(LLAMA, root, origin="cache")
    assert not found.available
    assert found.reason == "the libraries do not load: nope"
    assert found.marker is not None and found.marker.backend == "llama"


def test_a_complete_cache_install_is_available(cache: CacheLayout, probes: ProbeCounter) -> None:
    root = cache_install(cache)
    found = detect_at(LLAMA, root, origin="cache")
    assert found.available, found.reason
    assert found.reason == ""
    assert found.marker is not None and found.marker.commit == LLAMA.commit
    assert found.libraries == {name: root / "lib" / f"lib{name}.so" for name in ALL_LIBS}
    assert probes.calls == [("llama", found.libraries)]


def test_detect_honours_the_directory_variable_first(tmp_path: Path, cache: CacheLayout, probes: ProbeCounter) -> None:
    cache_install(cache)
    elsewhere = install_prefix(tmp_path / "elsewhere")
    found = detect(LLAMA, env={"LLAMA_CPP_DIR": str(elsewhere)}, cache=cache)
    assert found.origin == "LLAMA_CPP_DIR" and found.root == elsewhere
    assert detect(LLAMA, env={"LLAMA_CPP_DIR": ""}, cache=cache).origin == "cache"
    assert detect(LLAMA, env={"BITNET_CPP_DIR": str(elsewhere)}, cache=cache).origin == "cache"


def test_detect_expands_a_tilde(tmp_path: Path, cache: CacheLayout, probes: ProbeCounter, monkeypatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    install_prefix(tmp_path / "llama-prefix")
    found = detect(LLAMA, env={"LLAMA_CPP_DIR": "~/llama-prefix"}, cache=cache)
    assert found.available and found.root == tmp_path / "llama-prefix"


# --- check_loadable with a fake interpreter ------------------------------------------------------


def fake_python(tmp_path: Path, verdict: str, *, exit_code: int = 0) -> tuple[str, Path]:
    """An executable that prints ``verdict`` as the probe would, and keeps the library list it got."""
    answer = touch(tmp_path / "answer.txt", verdict)
    got = tmp_path / "libraries-given.json"
    script = touch(
        tmp_path / "fake-python",
        f"#!/bin/sh\nprintf '%s' \"$5\" > '{got}'\ncat '{answer}'\nexit {exit_code}\n",
    )
    script.chmod(0o755)
    return str(script), got


def libraries_at(root: Path, names: Iterable[str] = ALL_LIBS) -> dict[str, Path]:
    return {name: touch(root / f"lib{name}.so") for name in names}


def test_check_loadable_passes_when_the_probe_finds_everything(tmp_path: Path) -> None:
    python, got = fake_python(tmp_path, '{"missing": []}\n')
    libs = libraries_at(tmp_path / "lib")
    assert check_loadable(LLAMA, dict(reversed(list(libs.items()))), python=python) == ""
    # The libraries go to the probe in load order, whatever order they were found in.
    assert json.loads(got.read_text()) == [str(libs[name]) for name in LLAMA.libraries]


def test_check_loadable_reports_a_load_error(tmp_path: Path) -> None:
    python, _ = fake_python(tmp_path, json.dumps({"error": "libggml.so: cannot open shared object file"}))
    problem = check_loadable(LLAMA, libraries_at(tmp_path / "lib"), python=python)
    assert problem == "the libraries do not load: libggml.so: cannot open shared object file"


def test_check_loadable_reports_missing_symbols(tmp_path: Path) -> None:
    python, _ = fake_python(tmp_path, json.dumps({"missing": ["quantize_i2_s"]}))
    problem = check_loadable(BITNET, libraries_at(tmp_path / "lib"), python=python)
    assert "do not export quantize_i2_s" in problem
    assert "not a usable bitnet.cpp build" in problem


def test_check_loadable_uses_the_last_line_of_output(tmp_path: Path) -> None:
    python, _ = fake_python(tmp_path, 'some chatter from a library\n{"missing": []}\n')
    assert check_loadable(LLAMA, libraries_at(tmp_path / "lib"), python=python) == ""


@pytest.mark.parametrize(("verdict", "exit_code"), [("", 0), ("not json\n", 0), ('{"missing": []}', 3)])
def test_a_probe_that_cannot_run_is_a_problem_not_a_crash(tmp_path: Path, verdict: str, exit_code: int) -> None:
    python, _ = fake_python(tmp_path, verdict, exit_code=exit_code)
    problem = check_loadable(LLAMA, libraries_at(tmp_path / "lib"), python=python)
    assert problem.startswith("the library load check could not run")


def test_a_missing_interpreter_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    problem = check_loadable(LLAMA, libraries_at(tmp_path / "lib"), python=str(tmp_path / "no-such-python"))
    assert problem.startswith("the library load check could not run")


def test_the_real_probe_reports_files_that_are_not_libraries(tmp_path: Path) -> None:
    libs = {name: touch(tmp_path / "lib" / f"lib{name}.so", "this is text, not ELF") for name in ALL_LIBS}
    problem = check_loadable(LLAMA, libs, python=sys.executable)
    assert problem.startswith("the libraries do not load: ")
    assert str(tmp_path / "lib") in problem


# --- Detection.relocated ---------------------------------------------------------------------


def test_relocated_moves_paths_under_the_root_only(tmp_path: Path) -> None:
    old, new = tmp_path / ".staging-llama-1", tmp_path / "llama"
    outside = tmp_path / "system" / "include"
    found = Detection(
        backend="llama",
        available=True,
        origin="cache",
        root=old,
        lib_dir=old / "lib",
        include_dirs=(old / "include", outside),
        libraries={"llama": old / "lib" / "libllama.so", "ggml": outside.parent / "lib" / "libggml.so"},
    )
    moved = found.relocated(new)
    assert moved.root == new
    assert moved.lib_dir == new / "lib"
    assert moved.include_dirs == (new / "include", outside)
    assert moved.libraries == {"llama": new / "lib" / "libllama.so", "ggml": outside.parent / "lib" / "libggml.so"}
    assert (moved.available, moved.origin, moved.backend) == (True, "cache", "llama")
    assert found.root == old  # the original is unchanged


def test_relocated_keeps_a_missing_lib_dir_missing(tmp_path: Path) -> None:
    found = Detection(backend="llama", available=False, reason="x", root=tmp_path / "a")
    moved = found.relocated(tmp_path / "b")
    assert moved.lib_dir is None and moved.root == tmp_path / "b" and moved.reason == "x"


# --- Detector ----------------------------------------------------------------------------------


def test_an_unchanged_install_is_checked_once(cache: CacheLayout, probes: ProbeCounter) -> None:
    cache_install(cache)
    detector = Detector(env={}, cache=cache)
    first = detector.detect(LLAMA)
    second = detector.detect(LLAMA)
    assert first.available and second == first
    assert len(probes.calls) == 1


def test_each_detector_checks_for_itself(cache: CacheLayout, probes: ProbeCounter) -> None:
    cache_install(cache)
    Detector(env={}, cache=cache).detect(LLAMA)
    Detector(env={}, cache=cache).detect(LLAMA)
    assert len(probes.calls) == 2


def test_a_rewritten_library_is_checked_again(cache: CacheLayout, probes: ProbeCounter) -> None:
    root = cache_install(cache)
    detector = Detector(env={}, cache=cache)
    detector.detect(LLAMA)
    (root / "lib" / "libggml.so").write_text("a different, longer library than before")
    assert detector.detect(LLAMA).available
    assert len(probes.calls) == 2


def test_a_library_touched_in_place_is_checked_again(cache: CacheLayout, probes: ProbeCounter) -> None:
    root = cache_install(cache)
    detector = Detector(env={}, cache=cache)
    detector.detect(LLAMA)
    lib = root / "lib" / "libllama.so"
    before = lib.stat()
    os.utime(lib, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))  # same size, new mtime
    detector.detect(LLAMA)
    assert len(probes.calls) == 2


def test_a_deleted_library_is_noticed_and_its_return_checked_again(cache: CacheLayout, probes: ProbeCounter) -> None:
    root = cache_install(cache)
    detector = Detector(env={}, cache=cache)
    assert detector.detect(LLAMA).available
    lib = root / "lib" / "libllama.so"
    lib.unlink()
    gone = detector.detect(LLAMA)
    assert not gone.available and "libllama" in gone.reason
    touch(lib, "back again")
    assert detector.detect(LLAMA).available
    assert len(probes.calls) == 2


def test_a_rewritten_marker_is_checked_again(cache: CacheLayout, probes: ProbeCounter) -> None:
    root = cache_install(cache)
    detector = Detector(env={}, cache=cache)
    detector.detect(LLAMA)
    write_marker(root, backend="llama", source={"kind": "git", "commit": "f" * 40}, build_flags=[], build_dir=root)
    found = detector.detect(LLAMA)
    assert len(probes.calls) == 2
    assert found.marker is not None and found.marker.commit == "f" * 40


def test_a_removed_marker_is_noticed(cache: CacheLayout, probes: ProbeCounter) -> None:
    root = cache_install(cache)
    detector = Detector(env={}, cache=cache)
    assert detector.detect(LLAMA).available
    (root / MARKER_NAME).unlink()
    assert "install marker is missing" in detector.detect(LLAMA).reason


def test_a_replaced_install_is_checked_again(cache: CacheLayout, probes: ProbeCounter) -> None:
    root = cache_install(cache)
    detector = Detector(env={}, cache=cache)
    detector.detect(LLAMA)
    root.rename(root.with_name("old"))
    cache_install(cache)  # a new tree in its place
    detector.detect(LLAMA)
    assert len(probes.calls) == 2


def test_an_install_appearing_later_is_found(cache: CacheLayout, probes: ProbeCounter) -> None:
    detector = Detector(env={}, cache=cache)
    assert not detector.detect(LLAMA).available
    cache_install(cache)
    assert detector.detect(LLAMA).available


def test_remember_is_taken_as_is(cache: CacheLayout, probes: ProbeCounter) -> None:
    root = cache_install(cache)
    detector = Detector(env={}, cache=cache)
    told = Detection(backend="llama", available=True, origin="cache", root=root, reason="", lib_dir=root / "lib")
    detector.remember(LLAMA, told)
    assert detector.detect(LLAMA) is told
    assert detector.detect_cache_install(LLAMA) is told
    assert probes.calls == []


def test_a_remembered_tree_that_then_changes_is_checked_again(cache: CacheLayout, probes: ProbeCounter) -> None:
    root = cache_install(cache)
    detector = Detector(env={}, cache=cache)
    told = Detection(backend="llama", available=False, origin="cache", root=root, reason="told so")
    detector.remember(LLAMA, told)
    (root / "lib" / "libllama.so").write_text("rebuilt, and longer than before")
    found = detector.detect(LLAMA)
    assert found is not told and found.available
    assert len(probes.calls) == 1


def test_detect_honours_the_variable_and_detect_cache_install_does_not(
    tmp_path: Path, cache: CacheLayout, probes: ProbeCounter
) -> None:
    elsewhere = install_prefix(tmp_path / "elsewhere")
    detector = Detector(env={"LLAMA_CPP_DIR": str(elsewhere)}, cache=cache)
    pointed = detector.detect(LLAMA)
    assert pointed.available and pointed.origin == "LLAMA_CPP_DIR" and pointed.root == elsewhere
    in_cache = detector.detect_cache_install(LLAMA)
    assert not in_cache.available and in_cache.origin == "cache"
    assert in_cache.root == cache.install_dir("llama")


def test_backends_are_kept_apart(cache: CacheLayout, probes: ProbeCounter) -> None:
    cache_install(cache, LLAMA)
    detector = Detector(env={}, cache=cache)
    assert detector.detect(LLAMA).available
    assert not detector.detect(BITNET).available
    assert [name for name, _ in probes.calls] == ["llama"]


def test_detect_all_covers_every_backend(cache: CacheLayout, probes: ProbeCounter) -> None:
    cache_install(cache, BITNET)
    results = dict((spec.name, found) for spec, found in Detector(env={}, cache=cache).detect_all())
    assert set(results) == {"llama", "bitnet"}
    assert results["bitnet"].available and not results["llama"].available


def test_the_detector_passes_its_interpreter_to_the_load_check(tmp_path: Path, cache: CacheLayout) -> None:
    python, got = fake_python(tmp_path, '{"missing": []}')
    cache_install(cache)
    found = Detector(env={}, cache=cache, python=python).detect(LLAMA)
    assert found.available, found.reason
    assert got.exists()  # our fake interpreter ran the check


# --- the load check's answer, remembered across processes -------------------------------------


class FreshChecks:
    """Stands in for the interpreter that loads the libraries: counts the loads, answers ``problem``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, problem: str = "") -> None:
        self.problem = problem
        self.count = 0
        monkeypatch.setattr(detect_mod, "_load_in_fresh_interpreter", self)

    def __call__(self, spec: BackendSpec, libraries: Mapping[str, Path], *, python: str | None) -> str:
        self.count += 1
        return self.problem


def test_a_passed_load_check_is_taken_from_its_record_while_the_libraries_are_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = install_prefix(tmp_path / "prefix")
    libraries = find_libraries(LLAMA, root)
    record = tmp_path / "cache" / "checks" / "load-llama.json"
    fresh = FreshChecks(monkeypatch)
    assert check_loadable(LLAMA, libraries, record=record, env={}) == ""
    assert fresh.count == 1 and record.is_file()
    for _ in range(3):  # later processes: the record answers
        assert check_loadable(LLAMA, libraries, record=record, env={}) == ""
    assert fresh.count == 1


@pytest.mark.parametrize("change", ["rewritten", "touched", "replaced", "loader path"])
def test_a_changed_library_is_checked_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    root = install_prefix(tmp_path / "prefix")
    libraries = find_libraries(LLAMA, root)
    record = tmp_path / "checks" / "load-llama.json"
    fresh = FreshChecks(monkeypatch)
    check_loadable(LLAMA, libraries, record=record, env={})
    ggml = libraries["ggml"]
    env: dict[str, str] = {}
    if change == "rewritten":
        ggml.write_bytes(ggml.read_bytes() + b"\0")
    elif change == "touched":
        st = ggml.stat()
        os.utime(ggml, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    elif change == "replaced":
        replacement = ggml.with_name("new.so")
        replacement.write_bytes(ggml.read_bytes())
        os.replace(replacement, ggml)
    else:
        env = {"LD_LIBRARY_PATH": str(tmp_path)}
    fresh.problem = "the libraries do not load: libggml.so: invalid ELF header"
    assert check_loadable(LLAMA, libraries, record=record, env=env) == fresh.problem
    assert fresh.count == 2


def test_a_failed_load_check_is_not_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = install_prefix(tmp_path / "prefix")
    libraries = find_libraries(LLAMA, root)
    record = tmp_path / "checks" / "load-llama.json"
    fresh = FreshChecks(monkeypatch, problem="the libraries do not load: boom")
    assert check_loadable(LLAMA, libraries, record=record, env={}) == "the libraries do not load: boom"
    assert check_loadable(LLAMA, libraries, record=record, env={}) == "the libraries do not load: boom"
    assert fresh.count == 2 and not record.exists()


def test_a_detector_in_a_new_process_takes_the_cache_s_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: CacheLayout
) -> None:
    cache_install(cache)
    fresh = FreshChecks(monkeypatch)
    assert Detector(env={}, cache=cache).detect(LLAMA).available
    assert Detector(env={}, cache=cache).detect(LLAMA).available  # another process, the same cache
    assert fresh.count == 1 and cache.load_check("llama").is_file()
