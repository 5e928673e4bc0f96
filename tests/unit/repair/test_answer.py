"""A clean preflight's remembered answer: served while nothing it checked changed, never after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bitnet_crossval.backends.detect import Detection, paths_checked
from bitnet_crossval.backends.specs import LLAMA
from bitnet_crossval.errors import BadInput
from bitnet_crossval.repair import answer
from bitnet_crossval.store.layout import CacheLayout

REPORT = {"backend": "llama", "available": True, "repaired": False}
SUMMARY = "llama.cpp is available (cache: /x, commit abc)"


@pytest.fixture
def install(tmp_path: Path) -> Path:
    root = tmp_path / "inst"
    (root / "lib").mkdir(parents=True)
    (root / "lib" / "libllama.so").write_bytes(b"\x7fELF library")
    (root / "marker.json").write_text("{}")
    return root


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"BITNET_CACHE_DIR": str(tmp_path / "cache"), "HOME": "/home/someone", **extra}


def _remember(env: dict[str, str], install: Path, *, summary: str = SUMMARY) -> None:
    cache = CacheLayout(Path(env["BITNET_CACHE_DIR"]))
    checked = [install, install / "marker.json", install / "lib", install / "lib" / "libllama.so", install / "include"]
    answer.remember_answer(env, cache, "llama", checked=checked, summary=summary, report=REPORT)


def test_an_unchanged_check_is_served_from_the_answer(tmp_path: Path, install: Path) -> None:
    env = _env(tmp_path)
    assert answer.remembered_answer(env, "llama") is None
    _remember(env, install)
    assert answer.remembered_answer(env, "llama") == {"summary": SUMMARY, "report": REPORT}
    assert answer.remembered_answer(env, "bitnet") is None


def _same_size_and_mtime(path: Path) -> None:
    before = path.stat()
    path.write_bytes(b"x" * before.st_size)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda root: (root / "lib" / "libllama.so").write_bytes(b"other"), id="library rewritten"),
        pytest.param(lambda root: _same_size_and_mtime(root / "lib" / "libllama.so"), id="same size and mtime"),
        pytest.param(lambda root: (root / "lib" / "libllama.so").unlink(), id="library deleted"),
        pytest.param(lambda root: (root / "lib" / "libggml.so").write_bytes(b""), id="file added where searched"),
        pytest.param(lambda root: (root / "include").mkdir(), id="a searched directory appears"),
        pytest.param(lambda root: (root / "marker.json").chmod(0o600), id="permissions changed"),
    ],
)
def test_any_change_to_what_was_checked_is_a_miss(tmp_path: Path, install: Path, change: object) -> None:
    env = _env(tmp_path)
    _remember(env, install)
    assert callable(change)
    change(install)
    assert answer.remembered_answer(env, "llama") is None


def test_the_constants_file_and_the_shim_sources_are_checked_too(tmp_path: Path, install: Path) -> None:
    env = _env(tmp_path)
    constants = tmp_path / "cache" / "constants.json"
    constants.parent.mkdir(parents=True)
    constants.write_text("{}")
    _remember(env, install)
    document = json.loads(CacheLayout(tmp_path / "cache").preflight_answer("llama").read_text())
    paths = [f[0] for f in document["answers"][0]["files"]]
    assert str(constants) in paths
    assert any(p.endswith("cpp/CMakeLists.txt") for p in paths) and any(p.endswith("cmd_logits.cpp") for p in paths)
    constants.write_text("{} ")
    assert answer.remembered_answer(env, "llama") is None


def test_each_setting_keeps_its_own_answer(tmp_path: Path, install: Path) -> None:
    plain, other = _env(tmp_path), _env(tmp_path, LD_LIBRARY_PATH="/opt/lib")
    _remember(plain, install, summary="plain")
    assert answer.remembered_answer(other, "llama") is None  # the loader's path is part of the setting
    _remember(other, install, summary="other")
    assert answer.remembered_answer(plain, "llama") == {"summary": "plain", "report": REPORT}
    assert answer.remembered_answer(other, "llama") == {"summary": "other", "report": REPORT}
    for n in range(answer.KEPT_SETTINGS - 1):
        _remember(_env(tmp_path, BITNET_SEED=str(n)), install)
    assert answer.remembered_answer(plain, "llama") is None  # the oldest setting made room
    assert answer.remembered_answer(other, "llama") is not None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[]",
        '{"format": 99, "answers": []}',
        '{"format": 2, "answers": [1]}',
        '{"format": 2, "answers": [{"files": [[1]]}]}',
    ],
)
def test_a_foreign_or_damaged_answer_file_is_a_miss_and_is_replaced(tmp_path: Path, install: Path, text: str) -> None:
    env = _env(tmp_path)
    target = CacheLayout(tmp_path / "cache").preflight_answer("llama")
    target.parent.mkdir(parents=True)
    target.write_text(text)
    assert answer.remembered_answer(env, "llama") is None
    _remember(env, install)
    assert answer.remembered_answer(env, "llama") is not None


def test_an_entry_with_the_wrong_shape_is_a_miss(tmp_path: Path, install: Path) -> None:
    env = _env(tmp_path)
    _remember(env, install)
    target = CacheLayout(tmp_path / "cache").preflight_answer("llama")
    document = json.loads(target.read_text())
    document["answers"][0]["summary"] = 42
    target.write_text(json.dumps(document))
    assert answer.remembered_answer(env, "llama") is None


def test_no_usable_cache_root_is_a_miss_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_root(env: object) -> Path:
        raise BadInput("no home directory", next_step="set BITNET_CACHE_DIR")

    monkeypatch.setattr(answer, "cache_root_from", no_root)
    assert answer.remembered_answer({"HOME": "relative"}, "llama") is None


def test_looking_up_an_answer_loads_none_of_the_checking_code() -> None:
    code = (
        "import sys, bitnet_crossval.repair.answer as a;"
        " a.remembered_answer({'BITNET_CACHE_DIR': '/nonexistent'}, 'llama');"
        " print(sorted(m for m in sys.modules if m.startswith('bitnet_crossval') or m == 'hashlib'))"
    )
    loaded = json.loads(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.replace(
            "'", '"'
        )
    )
    for heavy in (
        "hashlib",
        "bitnet_crossval.backends.detect",
        "bitnet_crossval.store.constants",
        "bitnet_crossval.context",
    ):
        assert heavy not in loaded


def test_every_deciding_module_exists() -> None:
    """A renamed module would drop out of the fingerprint without a word."""
    package = Path(answer.__file__).parent.parent
    assert all((package / name).is_file() for name in answer._DECIDING_MODULES)


def test_a_file_changed_after_the_check_started_is_not_remembered(tmp_path: Path, install: Path) -> None:
    env = _env(tmp_path)
    (tmp_path / "cache" / "checks").mkdir(parents=True)
    time.sleep(0.05)  # the install's files and the cache are now older than the check
    started = time.time_ns()
    cache = CacheLayout(tmp_path / "cache")
    checked = [install / "lib" / "libllama.so"]
    answer.remember_answer(env, cache, "llama", checked=checked, summary=SUMMARY, report=REPORT, started_ns=started)
    assert answer.remembered_answer(env, "llama") is not None
    started = time.time_ns()
    (install / "lib" / "libllama.so").write_bytes(b"changed while the check read it")
    answer.remember_answer(env, cache, "llama", checked=checked, summary="new", report=REPORT, started_ns=started)
    assert answer.remembered_answer(env, "llama") is None  # neither the new answer nor the old


def test_a_relative_constants_file_is_another_file_in_another_directory(
    tmp_path: Path, install: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _env(tmp_path, BITNET_CONSTANTS_FILE="constants.json")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    _remember(env, install)
    assert answer.remembered_answer(env, "llama") is not None
    monkeypatch.chdir(tmp_path / "b")
    assert answer.remembered_answer(env, "llama") is None


def test_something_foreign_in_the_cache_root_is_a_miss(tmp_path: Path, install: Path) -> None:
    env = _env(tmp_path)
    _remember(env, install)
    (tmp_path / "cache" / "holiday-photos").mkdir()
    assert answer.remembered_answer(env, "llama") is None


def test_a_dangling_link_earlier_in_the_search_is_watched(tmp_path: Path) -> None:
    """lib/libllama.so points at nothing, so detection takes build/bin's; when the link's target
    appears, no directory changes, but the full check would now take another library."""
    root = tmp_path / "inst"
    (root / "build" / "bin").mkdir(parents=True)
    (root / "lib").mkdir()
    (root / "build" / "bin" / "libllama.so").write_bytes(b"library")
    target = tmp_path / "elsewhere" / "libllama.so"
    (root / "lib" / "libllama.so").symlink_to(target)
    found = Detection(
        backend="llama",
        available=True,
        root=root,
        lib_dir=root / "build" / "bin",
        libraries={"llama": root / "build" / "bin" / "libllama.so"},
    )
    env = _env(tmp_path)
    answer.remember_answer(
        env,
        CacheLayout(tmp_path / "cache"),
        "llama",
        checked=paths_checked(LLAMA, found),
        summary=SUMMARY,
        report=REPORT,
    )
    assert answer.remembered_answer(env, "llama") is not None
    target.parent.mkdir()
    target.write_bytes(b"another library")
    assert answer.remembered_answer(env, "llama") is None


def test_an_answer_already_remembered_is_not_written_again(tmp_path: Path, install: Path) -> None:
    env = _env(tmp_path)
    _remember(env, install)
    target = CacheLayout(tmp_path / "cache").preflight_answer("llama")
    before = target.stat()
    _remember(env, install)
    assert target.stat().st_ino == before.st_ino  # an atomic write would have replaced the file
    _remember(env, install, summary="another sentence")
    assert target.stat().st_ino != before.st_ino
    assert answer.remembered_answer(env, "llama") == {"summary": "another sentence", "report": REPORT}
