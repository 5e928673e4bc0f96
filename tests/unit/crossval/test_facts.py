"""The reference's facts about a model, remembered between runs while neither file changes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from bitnet_crossval.crossval.facts import model_facts
from bitnet_crossval.store.layout import CacheLayout
from bitnet_crossval.util.files import file_sha256


class Asker:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> dict[str, Any]:
        self.calls += 1
        return {"vocab_size": 32000, "call": self.calls}


@pytest.fixture
def files(tmp_path: Path) -> tuple[CacheLayout, Path, Path]:
    shim, model = tmp_path / "bitnet-shim", tmp_path / "m.gguf"
    shim.write_bytes(b"\x7fELF shim")
    model.write_bytes(b"GGUF" + bytes(1000))
    return CacheLayout(tmp_path / "cache"), shim, model


def test_the_facts_are_asked_once_while_the_files_are_unchanged(files: tuple[CacheLayout, Path, Path]) -> None:
    cache, shim, model = files
    ask = Asker()
    first = model_facts(cache, shim, model, ask=ask)
    again = model_facts(cache, shim, model, ask=ask)
    assert ask.calls == 1 and again == first
    assert first.sha256 == file_sha256(model) and first.info["vocab_size"] == 32000


@pytest.mark.parametrize("change", ["model rewritten", "model touched", "shim rebuilt"])
def test_a_changed_file_is_asked_again(files: tuple[CacheLayout, Path, Path], change: str) -> None:
    cache, shim, model = files
    ask = Asker()
    model_facts(cache, shim, model, ask=ask)
    if change == "model rewritten":
        model.write_bytes(b"GGUF" + bytes(2000))
    elif change == "model touched":
        st = model.stat()
        os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    else:
        shim.write_bytes(b"\x7fELF another shim")
    facts = model_facts(cache, shim, model, ask=ask)
    assert ask.calls == 2 and facts.sha256 == file_sha256(model)


def test_a_damaged_record_is_asked_again(files: tuple[CacheLayout, Path, Path]) -> None:
    cache, shim, model = files
    ask = Asker()
    model_facts(cache, shim, model, ask=ask)
    for record in cache.checks.glob("model-*.json"):
        record.write_text("{not json")
    model_facts(cache, shim, model, ask=ask)
    assert ask.calls == 2
