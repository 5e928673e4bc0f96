"""The hf candidate's cache: a GGUF model as transformers loaded it, kept so the next run skips the GGUF.

Loading a GGUF, transformers parses every metadata value (a 262k-entry vocabulary takes most of
a minute, twice: once for the configuration, once for the weights) and dequantises every tensor.
An entry holds the result: ``config.json`` as transformers read it from the file (before any
correction of :mod:`.config_check`, which is redone on every load) and ``model.safetensors``
with the float32 weights as transformers' GGUF reader produced them (gemma's norms already
``w - 1``, llama's Q/K rows already in transformers' order). Entries are keyed by the model's
sha256 and the transformers version (:meth:`CacheLayout.hf_weights_entry`).

An entry appears whole or not at all: it is written into a staging directory and renamed into
place. Writers of one entry take its lock, so concurrent first runs convert the model once; a
reader never needs the lock (a complete entry never changes).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitnet_crossval.store.layout import CacheLayout
from bitnet_crossval.store.lock import exclusive_lock
from bitnet_crossval.util.files import make_dir, os_error, remove_tree, write_json_atomic

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
RECORD_FILE = "crossval-hf.json"
# 2: a tied tensor is stored under the name transformers' loader fills (the input embedding, not
# lm_head). Format 1 entries (no "format" in the record) are written again once: loading one left
# transformers initialising the whole embedding at random before tying it to lm_head, 0.9 s of
# every run on Gemma 3 270M.
ENTRY_FORMAT = 2


@dataclass(frozen=True, kw_only=True)
class CacheEntry:
    path: Path
    lock: Path
    staging: Path

    def is_complete(self) -> bool:
        """Whether the entry is whole and in this format (an older one is written again)."""
        if not all((self.path / name).is_file() for name in (WEIGHTS_FILE, CONFIG_FILE, RECORD_FILE)):
            return False
        return read_record(self).get("format") == ENTRY_FORMAT


def entry_for(cache: CacheLayout, *, model_sha256: str, transformers_version: str) -> CacheEntry:
    path = cache.hf_weights_entry(model_sha256, transformers_version)
    return CacheEntry(path=path, lock=cache.hf_weights_lock(path), staging=cache.hf_weights_staging(path, os.getpid()))


def write_entry(
    entry: CacheEntry,
    *,
    model: Any,
    raw_config: Any,
    record: dict[str, Any],
) -> None:
    """Write ``model``'s weights and ``raw_config`` as ``entry``, atomically; keep an existing one.

    Call it holding :func:`writing`'s lock."""
    from safetensors.torch import save_file

    if entry.is_complete():
        return
    # Staging directories of writers killed before their rename; only the lock's holder writes one.
    for leftover in entry.path.parent.glob(f".staging-{entry.path.name}-*"):
        remove_tree(leftover)
    make_dir(entry.staging)
    try:
        raw_config.to_json_file(str(entry.staging / CONFIG_FILE))
        # (transformers' save_pretrained refuses a model it loaded from a GGUF file.)
        save_file(weights_to_store(model), str(entry.staging / WEIGHTS_FILE))
        os.chmod(entry.staging / WEIGHTS_FILE, 0o644)  # safetensors creates it owner-only
        write_json_atomic(
            entry.staging / RECORD_FILE,
            {**record, "format": ENTRY_FORMAT, "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        )
        if entry.path.exists():  # an incomplete leftover (written by hand?): replace it
            remove_tree(entry.path)
        os.replace(entry.staging, entry.path)
    except OSError as exc:
        remove_tree(entry.staging)
        raise os_error(exc, entry.staging) from exc
    except BaseException:
        remove_tree(entry.staging)
        raise


def weights_to_store(model: Any) -> dict[str, Any]:
    """``model``'s tensors, each stored once: a tied tensor under the name of its source, which
    transformers' loader fills and then ties the other names to (``all_tied_weights_keys`` maps
    each tied name to its source); any other shared storage under its first name, as safetensors'
    ``save_model`` does."""
    state = model.state_dict()
    tied = dict(getattr(model, "all_tied_weights_keys", None) or {})
    kept: dict[str, Any] = {}
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    names = sorted(state, key=lambda name: (name in tied, name))  # sources before tied names
    for name in names:
        tensor = state[name]
        if tensor.numel():  # empty tensors share no data, whatever their data pointer says
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
            if key in seen:
                continue
            seen.add(key)
        kept[name] = tensor.contiguous()
    return kept


@contextmanager
def writing(entry: CacheEntry, *, timeout: float) -> Iterator[None]:
    """Hold the entry's lock: whoever holds it converts the model; the others wait, then read."""
    with exclusive_lock(entry.lock, purpose=f"write the hf weights cache entry {entry.path.name}", timeout=timeout):
        yield


def read_record(entry: CacheEntry) -> dict[str, Any]:
    try:
        document = json.loads((entry.path / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}
