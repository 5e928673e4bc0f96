"""Loading the model under test into transformers: from its GGUF (through the cache) or a checkpoint.

Three ways, one result (a float32 causal LM in eval mode with eager attention, and what the
configuration check found):

- the GGUF, first time: transformers reads it itself (``from_pretrained(dir, gguf_file=name)``),
  after its configuration was checked against the file (:mod:`.config_check`); the weights are
  then written to the cache (:mod:`.weights_cache`);
- the GGUF, again: the cache entry, a plain transformers checkpoint, with the same check;
- ``hf:PATH``: a Hugging Face checkpoint directory, its configuration compared with the GGUF
  under test and never changed.

Weights transformers finds no value for would be random: they make the model unusable here.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitnet_crossval.crossval.engine.gguf_file import GGUFModelFile
from bitnet_crossval.crossval.engine.hparams import read_hparams
from bitnet_crossval.crossval.hf.config_check import MODEL_TYPES, ConfigFinding, Expectation, check, expectations
from bitnet_crossval.crossval.hf.weights_cache import CacheEntry, entry_for, write_entry, writing
from bitnet_crossval.errors import BadInput
from bitnet_crossval.store.layout import CacheLayout
from bitnet_crossval.util.files import file_sha256

Say = Callable[[str], None]

HEARTBEAT_SECONDS = 15.0
_NEXT_STEP_REFUSED = (
    "compare a Hugging Face checkpoint of the model instead (--candidate hf:PATH), or use another candidate"
)


@dataclass(frozen=True, kw_only=True)
class LoadRequest:
    model: Path
    """The GGUF under test (its metadata is what the configuration is checked against)."""
    checkpoint: Path | None = None
    """A Hugging Face checkpoint directory to run instead of the GGUF (``hf:PATH``)."""
    cache: CacheLayout | None = None
    """Where the GGUF's dequantised weights are kept; None: convert every time."""
    lock_timeout: float = 3600.0


@dataclass(kw_only=True)
class Loaded:
    model: Any
    findings: list[ConfigFinding]
    facts: dict[str, Any] = field(default_factory=dict)


def load_model(request: LoadRequest, *, say: Say) -> Loaded:
    started = time.monotonic()
    file = GGUFModelFile(request.model)
    expected, notes = _expected(file)
    if request.checkpoint is not None:
        loaded = _load_checkpoint(request.checkpoint, file, expected, say=say)
    else:
        loaded = _load_gguf(request, file, expected, say=say)
    loaded.facts["notes"] = notes + loaded.facts.get("notes", [])
    loaded.facts["load_seconds"] = round(time.monotonic() - started, 3)
    loaded.model.eval()
    return loaded


def _expected(file: GGUFModelFile) -> tuple[list[Expectation], list[str]]:
    """llama.cpp's reading of the file, as settings a transformers configuration must have."""
    if file.architecture not in MODEL_TYPES:
        return [], [f"the configuration is not checked for architecture {file.architecture!r}"]
    try:
        hp = read_hparams(file)
    except BadInput as exc:
        return [], [f"the configuration is not checked: {exc.message}"]
    return expectations(hp, file), []


# --- the GGUF ---------------------------------------------------------------------------------------


def _load_gguf(request: LoadRequest, file: GGUFModelFile, expected: list[Expectation], *, say: Say) -> Loaded:
    import transformers

    _check_gguf_architecture(file)
    if request.cache is None:
        loaded = _convert(request.model, expected, say=say)
        loaded.facts["cache"] = {"state": "off"}
        return loaded
    say(f"hashing {request.model.name} (the cache is keyed by the model's sha256)")
    sha256 = file_sha256(request.model)
    entry = entry_for(request.cache, model_sha256=sha256, transformers_version=transformers.__version__)
    if entry.is_complete():
        return _load_entry(entry, request.model, expected, say=say)
    with writing(entry, timeout=request.lock_timeout):
        if entry.is_complete():  # another process wrote it while this one waited for the lock
            return _load_entry(entry, request.model, expected, say=say)
        loaded = _convert(request.model, expected, say=say)
        say(f"writing the dequantised weights to the cache ({entry.path})")
        write_entry(
            entry,
            model=loaded.model,
            raw_config=loaded.facts.pop("raw_config"),
            record={
                "model": str(request.model),
                "model_sha256": sha256,
                "transformers": transformers.__version__,
                "convert_seconds": loaded.facts["convert_seconds"],
            },
        )
    loaded.facts["cache"] = {"state": "written", "entry": str(entry.path)}
    return loaded


def _check_gguf_architecture(file: GGUFModelFile) -> None:
    import transformers

    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:  # another layout of transformers: its own loader will say it
        return
    if file.architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        raise BadInput(
            f"transformers {transformers.__version__} cannot read GGUF models of architecture "
            f"{file.architecture!r} ({file.path.name})",
            next_step=f"compare a Hugging Face checkpoint of the model (--candidate hf:PATH); {_NEXT_STEP_REFUSED}",
        )


def _convert(path: Path, expected: list[Expectation], *, say: Say) -> Loaded:
    """transformers reads the GGUF: its configuration, then every tensor, dequantised."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    started = time.monotonic()
    say(
        f"transformers reads {path.name} (the first load of a model parses its whole metadata, "
        "a large vocabulary included: about a minute for 262k tokens)"
    )
    with _one_gguf_reader(), _heartbeat(say, "reading the GGUF's metadata") as step:
        raw_config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
        config = copy.deepcopy(raw_config)
        findings = _corrected(config, expected, model=path, say=say)
        step("dequantising the weights")
        model, info = AutoModelForCausalLM.from_pretrained(
            str(path.parent),
            gguf_file=path.name,
            config=config,
            dtype=torch.float32,
            attn_implementation="eager",
            local_files_only=True,
            output_loading_info=True,
        )
    _check_loading_info(info, source=path)
    seconds = round(time.monotonic() - started, 3)
    say(f"transformers loaded {path.name} in {seconds:.1f}s")
    return Loaded(
        model=model,
        findings=findings,
        facts={"source": {"kind": "gguf", "path": str(path)}, "convert_seconds": seconds, "raw_config": raw_config},
    )


def _load_entry(entry: CacheEntry, model_path: Path, expected: list[Expectation], *, say: Say) -> Loaded:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    say(f"loading the dequantised weights from the cache ({entry.path})")
    config = AutoConfig.from_pretrained(str(entry.path), local_files_only=True)
    findings = _corrected(config, expected, model=model_path, say=say)
    model, info = AutoModelForCausalLM.from_pretrained(
        str(entry.path),
        config=config,
        dtype=torch.float32,
        attn_implementation="eager",
        local_files_only=True,
        output_loading_info=True,
    )
    _check_loading_info(info, source=entry.path)
    return Loaded(
        model=model,
        findings=findings,
        facts={
            "source": {"kind": "gguf", "path": str(model_path)},
            "cache": {"state": "hit", "entry": str(entry.path)},
        },
    )


def _corrected(config: Any, expected: list[Expectation], *, model: Path, say: Say) -> list[ConfigFinding]:
    findings = check(config, expected, correct=True)
    refused = [f for f in findings if f.action == "refused"]
    if refused:
        raise BadInput(
            f"transformers cannot run {model.name} as the file describes it: "
            + "; ".join(f.sentence() for f in refused),
            next_step=_NEXT_STEP_REFUSED,
        )
    for finding in findings:
        say(f"config: {finding.sentence()}")
    return findings


# --- a Hugging Face checkpoint --------------------------------------------------------------------------


def _load_checkpoint(directory: Path, file: GGUFModelFile, expected: list[Expectation], *, say: Say) -> Loaded:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    say(f"loading the checkpoint {directory}")
    config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
    notes: list[str] = []
    model_type = str(getattr(config, "model_type", ""))
    wanted = MODEL_TYPES.get(file.architecture)
    if wanted is not None and model_type != wanted:
        notes.append(
            f"the checkpoint is a {model_type!r} model and the file a {file.architecture!r} one: "
            "their settings were not compared"
        )
        expected = []
    findings = check(config, expected, correct=False)
    for finding in findings:
        say(f"config differs: {finding.sentence()}")
    with _heartbeat(say, "loading the checkpoint"):
        model, info = AutoModelForCausalLM.from_pretrained(
            str(directory),
            config=config,
            dtype=torch.float32,
            attn_implementation="eager",
            local_files_only=True,
            output_loading_info=True,
        )
    _check_loading_info(info, source=directory)
    return Loaded(
        model=model,
        findings=findings,
        facts={"source": {"kind": "checkpoint", "path": str(directory)}, "cache": {"state": "off"}, "notes": notes},
    )


def _check_loading_info(info: dict[str, Any], *, source: Path) -> None:
    missing = sorted(str(k) for k in info.get("missing_keys") or ())
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys") or ())
    if missing or mismatched:
        names = missing + mismatched
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise BadInput(
            f"transformers found no usable value in {source} for {len(names)} weights ({shown}); they would be random",
            next_step=_NEXT_STEP_REFUSED,
        )


# --- speed and progress ---------------------------------------------------------------------------------


@contextmanager
def _one_gguf_reader() -> Iterator[None]:
    """transformers opens the GGUF twice (configuration, then weights), each time parsing all of its
    metadata; within the block the second open reuses the first reader."""
    import gguf

    original = gguf.GGUFReader
    readers: dict[tuple[str, str], Any] = {}  # by real path: transformers names one file two ways

    def reader(path: Any, mode: Any = "r") -> Any:
        key = (os.path.realpath(os.fspath(path)), str(mode))
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    setattr(gguf, "GGUFReader", reader)  # noqa: B010 (assigning to a class name, which mypy refuses)
    try:
        yield
    finally:
        setattr(gguf, "GGUFReader", original)  # noqa: B010


class _Step:
    """The step a heartbeat names; a new step announces itself once."""

    def __init__(self, say: Say, what: str) -> None:
        self._say = say
        self.what = what

    def __call__(self, what: str) -> None:
        self.what = what
        self._say(what)


@contextmanager
def _heartbeat(say: Say, what: str) -> Iterator[_Step]:
    """A line every HEARTBEAT_SECONDS while a long step that reports nothing runs."""
    stop = threading.Event()
    started = time.monotonic()
    step = _Step(say, what)

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            say(f"still {step.what} ({time.monotonic() - started:.0f}s)")

    thread = threading.Thread(target=beat, name="hf-heartbeat", daemon=True)
    thread.start()
    try:
        yield step
    finally:
        stop.set()
        thread.join()
