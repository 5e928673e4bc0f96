"""Fixtures for the shim client's and build_shim's unit tests (a fake ``bitnet-shim``), and the synthetic
models of the float copy's."""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bitnet_crossval.crossval.synthetic import Arch, write_synthetic_model
from bitnet_crossval.reference.client import Shim
from tests.unit.reference.fakes import FAKE_SHIM, Plan


@pytest.fixture
def fake_shim(tmp_path: Path) -> Path:
    path = tmp_path / "bin" / "bitnet-shim"
    path.parent.mkdir()
    path.write_text(f"#!{sys.executable}\n{FAKE_SHIM}", encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def plan(fake_shim: Path, tmp_path: Path) -> Plan:
    """Configure what the fake shim does next; returns a client for it."""

    def configure(*, log_dir: Path | None = None, **behaviour: Any) -> Shim:
        plan_path = tmp_path / "plan.json"
        plan_path.write_text(json.dumps(behaviour), encoding="utf-8")
        env = dict(os.environ)
        env["FAKE_SHIM_PLAN"] = str(plan_path)
        env["FAKE_SHIM_RECORD"] = str(tmp_path / "record.jsonl")
        return Shim(fake_shim, env=env, log_dir=log_dir)

    return configure


# --- synthetic models for the float copy's unit tests --------------------------------------

ModelMaker = Callable[..., Path]


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> ModelMaker:
    """``make(arch, tensor_type)``: a synthetic model with a tiny vocabulary, written once per session."""
    from tests.unit.crossval.conftest import write_vocab

    directory = tmp_path_factory.mktemp("float-copy-models")
    vocab = write_vocab(directory / "vocab.gguf")
    made: dict[tuple[str, str], Path] = {}

    def make(arch: Arch, tensor_type: str = "F32") -> Path:
        key = (arch, tensor_type)
        if key not in made:
            made[key] = write_synthetic_model(
                directory / f"{arch}-{tensor_type}.gguf",
                arch=arch,
                tensor_type=tensor_type,
                vocab=vocab,
            )
        return made[key]

    return make
