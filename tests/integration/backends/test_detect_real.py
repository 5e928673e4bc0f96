"""Detection proves a build usable: marker, libraries, headers, a real load, the symbols."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bitnet_crossval.backends.detect import detect, probe
from bitnet_crossval.backends.specs import LLAMA
from bitnet_crossval.provision.cmake import preferred_generator
from bitnet_crossval.store.layout import CacheLayout
from bitnet_crossval.store.marker import MARKER_NAME as INSTALL_MARKER
from tests.helpers import FAKE_LLAMA, HANG_SECONDS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fake_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fake-install")
    build, prefix = root / "build", root / "prefix"
    generator = preferred_generator(os.environ)
    chosen = ["-G", generator] if generator else []
    subprocess.run(
        ["cmake", "-S", str(FAKE_LLAMA), "-B", str(build), *chosen, "-DCMAKE_INSTALL_RPATH=$ORIGIN"],
        check=True,
        capture_output=True,
        timeout=HANG_SECONDS,
    )
    subprocess.run(["cmake", "--build", str(build)], check=True, capture_output=True, timeout=HANG_SECONDS)
    install = ["cmake", "--install", str(build), "--prefix", str(prefix)]
    subprocess.run(install, check=True, capture_output=True, timeout=HANG_SECONDS)
    (prefix / INSTALL_MARKER).write_text(json.dumps({"backend": "llama", "source": {"kind": "local"}}))
    return prefix


@pytest.fixture
def install(fake_install: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "installs" / "llama"
    shutil.copytree(fake_install, copy, symlinks=True)
    return copy


def test_a_complete_install_is_available(install: Path) -> None:
    found = probe(LLAMA, install, origin="cache", require_marker=True)
    assert found.available, found.reason
    assert found.lib_dir == install / "lib"
    assert found.include_dirs == (install / "include",)
    assert set(found.libraries) == {"ggml-base", "ggml", "llama"}


def test_without_the_marker_a_cache_install_does_not_count(install: Path) -> None:
    (install / INSTALL_MARKER).unlink()
    found = probe(LLAMA, install, origin="cache", require_marker=True)
    assert not found.available and "install marker" in found.reason
    assert probe(LLAMA, install, origin="LLAMA_CPP_DIR", require_marker=False).available


def test_a_missing_library_is_named(install: Path) -> None:
    for lib in (install / "lib").glob("libllama.so*"):
        lib.unlink()
    found = probe(LLAMA, install, origin="cache", require_marker=True)
    assert not found.available and "libllama" in found.reason


def test_missing_headers_are_named(install: Path) -> None:
    (install / "include" / "llama.h").unlink()
    assert "llama.h" in probe(LLAMA, install, origin="cache", require_marker=True).reason


def test_a_library_that_does_not_load_is_caught(install: Path) -> None:
    real = (install / "lib" / "libllama.so").resolve()
    real.write_bytes(b"\x7fELF this is not a shared object")
    found = probe(LLAMA, install, origin="cache", require_marker=True)
    assert not found.available and "do not load" in found.reason


def test_a_missing_dependency_is_caught(install: Path) -> None:
    for lib in (install / "lib").glob("libggml-base.so*"):
        lib.unlink()
    found = probe(LLAMA, install, origin="cache", require_marker=True)
    assert not found.available and "do not load" in found.reason and "libggml-base" in found.reason


def test_the_directory_variable_is_honoured_first(install: Path, tmp_path: Path) -> None:
    cache = CacheLayout(tmp_path / "empty-cache")
    assert not detect(LLAMA, env={}, cache=cache).available
    found = detect(LLAMA, env={"LLAMA_CPP_DIR": str(install)}, cache=cache)
    assert found.available and found.origin == "LLAMA_CPP_DIR"
    missing = detect(LLAMA, env={"LLAMA_CPP_DIR": str(tmp_path / "nope")}, cache=cache)
    assert not missing.available and "is not a directory" in missing.reason
