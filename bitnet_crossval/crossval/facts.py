"""What the reference says a model is (``bitnet-shim info``) and the model file's sha256,
remembered in the cache between runs.

Both depend only on two files, the shim and the model, yet cost every run a process that loads a
vocabulary (0.4-0.7 s for Gemma 3's 262,144 tokens) and a read of the whole model. They are kept
in ``checks/model-<key>.json``, keyed by the fingerprint of both files (path, inode, size,
modification and change times), so a rebuilt shim or a rewritten, replaced or touched model is
asked again. A record that cannot be read or written costs the next run the work, nothing else.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitnet_crossval.errors import SuiteError
from bitnet_crossval.store.layout import CacheLayout
from bitnet_crossval.util.files import dump_json, file_sha256, make_dir, read_json_file, write_atomic


@dataclass(frozen=True, kw_only=True)
class ModelFacts:
    info: dict[str, Any]
    """``bitnet-shim info --model`` (vocabulary-only load)."""
    sha256: str


def model_facts(cache: CacheLayout, shim: Path, model: Path, *, ask: Callable[[], dict[str, Any]]) -> ModelFacts:
    """The facts of ``model`` as ``shim`` reports them (``ask`` runs it), from the cache while
    neither file changed."""
    key = _fingerprint(shim, model)
    record = cache.model_facts(key)
    known = read_json_file(record)
    if isinstance(known, dict) and known.get("fingerprint") == key:
        info, sha256 = known.get("info"), known.get("sha256")
        if isinstance(info, dict) and isinstance(sha256, str):
            return ModelFacts(info=info, sha256=sha256)
    facts = ModelFacts(info=ask(), sha256=file_sha256(model))
    try:
        make_dir(record.parent)
        write_atomic(
            record, dump_json({"fingerprint": key, "info": facts.info, "sha256": facts.sha256}), what="the model facts"
        )
    except SuiteError:
        pass  # remembering is an optimisation
    return facts


def _fingerprint(*paths: Path) -> str:
    parts: list[object] = []
    for path in paths:
        try:
            st = path.stat()
            parts.append([str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns])
        except OSError:
            parts.append([str(path), None])
    return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()
