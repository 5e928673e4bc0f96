"""The hf candidate's parent side: its command line, its checks, how a child's failure reads.

No torch here: the parent never imports it (the real child runs in tests/integration).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from pathlib import Path

import pytest

from bitnet_crossval.crossval.hf import api, availability
from bitnet_crossval.crossval.hf.candidate import checkpoint_of
from bitnet_crossval.errors import BadInput, CandidateFailed, CommandFailed, PermissionDenied
from bitnet_crossval.store.layout import CacheLayout


def test_the_child_command_line_names_every_input(tmp_path: Path) -> None:
    argv = api.hf_argv(
        model=tmp_path / "m.gguf",
        tokens=tmp_path / "t.npy",
        out=tmp_path / "o.npy",
        trace_dir=tmp_path / "trace",
        trace_positions=[0, 1, 2],
        trace_layers=(1, 3),
        trace_names="attn_.*",
        cache_root=tmp_path / "cache",
        details=tmp_path / "d.json",
        threads=2,
    )
    assert argv[:3] == [sys.executable, "-m", "bitnet_crossval.crossval.hf"]
    pairs = dict(zip(argv[3::2], argv[4::2], strict=True))
    assert pairs == {
        "--model": str(tmp_path / "m.gguf"),
        "--tokens": str(tmp_path / "t.npy"),
        "--out": str(tmp_path / "o.npy"),
        "--trace": str(tmp_path / "trace"),
        "--trace-positions": "0,1,2",
        "--trace-layers": "1-3",
        "--trace-names": "attn_.*",
        "--cache-root": str(tmp_path / "cache"),
        "--details": str(tmp_path / "d.json"),
        "--threads": "2",
    }
    bare = api.hf_argv(model=Path("m"), tokens=Path("t"), out=Path("o"), trace_positions=[1], python="py")
    assert bare == ["py", "-m", "bitnet_crossval.crossval.hf", "--model", "m", "--tokens", "t", "--out", "o"]


def test_the_child_runs_offline_without_progress_bars_unless_told_otherwise() -> None:
    env = api.child_env({"PATH": "/bin", "TQDM_DISABLE": "0"})
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["TQDM_DISABLE"] == "0" and env["PATH"] == "/bin"


def test_a_refusal_of_the_child_is_bad_input_with_its_own_sentence() -> None:
    tail = (
        "hf: importing torch\n"
        "error: transformers 5.25.0 cannot read GGUF models of architecture 'bitnet'\n"
        "  next: compare a checkpoint\n"
    )
    error = api._child_error("hf", CommandFailed(["python"], 6, tail))
    assert isinstance(error, BadInput)
    assert error.message == "the candidate hf: transformers 5.25.0 cannot read GGUF models of architecture 'bitnet'"
    assert error.next_step == "compare a checkpoint"
    unwritable = api._child_error("hf", CommandFailed(["python"], 4, "error: /c is not writable\n  next: fix it\n"))
    assert isinstance(unwritable, PermissionDenied) and unwritable.message == "the candidate hf: /c is not writable"


def test_a_crash_of_the_child_is_a_candidate_failure_with_its_output() -> None:
    failed = api._child_error("hf", CommandFailed(["python"], 1, "Traceback ...\nerror: transformers failed: X\n"))
    assert isinstance(failed, CandidateFailed) and failed.message == "the candidate hf failed: transformers failed: X"
    killed = api._child_error("hf", CommandFailed(["python"], 137, "hf: forward pass over 9 positions\n"))
    assert isinstance(killed, CandidateFailed) and killed.message == "the candidate hf exited with code 137"
    assert "hf: forward pass" in killed.detail


def test_missing_packages_are_named_with_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name in {"torch", "accelerate"} else real("json")
    )
    with pytest.raises(BadInput) as caught:
        availability.require_hf()
    assert caught.value.message == (
        "the hf candidate needs torch, transformers, accelerate, and torch and accelerate are not installed"
    )
    assert "pip install 'bitnet-crossval-suite[hf]'" in caught.value.next_step


def test_an_old_transformers_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "4.57.1")
    assert (
        availability.missing_requirement() == "the hf candidate needs transformers 5 or newer, and 4.57.1 is installed"
    )


def test_hf_path_must_be_a_checkpoint_directory(tmp_path: Path) -> None:
    assert checkpoint_of("hf") is None
    with pytest.raises(BadInput, match="is not a directory"):
        checkpoint_of(f"hf:{tmp_path / 'nowhere'}")
    with pytest.raises(BadInput, match=r"holds no config\.json"):
        checkpoint_of(f"hf:{tmp_path}")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(BadInput, match="holds no weights"):
        checkpoint_of(f"hf:{tmp_path}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert checkpoint_of(f"hf:{tmp_path}") == tmp_path.absolute()
    with pytest.raises(BadInput, match=r"is not hf or hf:PATH"):
        checkpoint_of("hf:")


def test_cache_entries_are_per_model_and_transformers_version(tmp_path: Path) -> None:
    cache = CacheLayout(tmp_path)
    a = cache.hf_weights_entry("ab" * 32, "5.25.0")
    assert a == tmp_path / "hf-weights" / f"{'ab' * 8}-transformers-5.25.0"
    assert a != cache.hf_weights_entry("ab" * 32, "5.26.0") != cache.hf_weights_entry("cd" * 32, "5.25.0")
    assert cache.hf_weights_entry("ab" * 32, "5.0/../x").parent == cache.hf_weights
    staging = cache.hf_weights_staging(a, 42)
    assert staging.parent == a.parent and staging.name.startswith(".staging-") and staging != a
    assert cache.hf_weights_lock(a).parent == cache.locks
