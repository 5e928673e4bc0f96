"""The generated constants file: what the last ``invoke rebuild`` found, per backend.

Read once at start-up, rewritten only by a rebuild: it says which backends were usable and
which shim was built against each, so a command knows without rebuilding anything. It is JSON,
never code, because it lives in a writable cache. Writes are atomic and happen only when the
content changed (timestamps of unchanged records are carried over, so an unchanged state is
byte-identical). A missing, truncated, foreign, newer-schema, absurdly nested or non-regular
file is reported as such and means "detect again"; reading never raises and never blocks.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from bitnet_crossval.util.files import describe_file_type, dump_json, file_sha256, read_regular_file, write_atomic
from bitnet_crossval.util.timefmt import now_iso

SCHEMA = "bitnet-suite/constants"
SCHEMA_VERSION = 1

Status = Literal["ok", "missing", "unreadable", "corrupt", "foreign", "unsupported-version"]


@dataclass(frozen=True, kw_only=True)
class BackendRecord:
    """What one backend looked like when the constants were generated."""

    available: bool
    reason: str = ""
    origin: str = ""  # "cache" or the environment variable that pointed at it
    install_dir: str | None = None
    lib_dir: str | None = None
    include_dirs: list[str] = field(default_factory=list)
    source: dict[str, str] = field(default_factory=dict)
    build_flags: list[str] = field(default_factory=list)
    shim: str | None = None
    shim_api: str | None = None
    shim_sha256: str | None = None
    shim_source: str | None = None
    """Digest of the C++ sources the shim was built from."""
    detected_at: str = ""

    def without_timestamp(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("detected_at")
        return data


@dataclass(frozen=True, kw_only=True)
class Constants:
    path: Path
    status: Status
    backends: Mapping[str, BackendRecord] = field(default_factory=dict)
    generated_at: str | None = None
    problem: str = ""

    def record(self, backend: str) -> BackendRecord | None:
        return self.backends.get(backend)

    def has(self, backend: str) -> bool:
        rec = self.backends.get(backend)
        return rec is not None and rec.available


def read_constants(path: Path) -> Constants:
    try:
        raw = read_regular_file(path)
    except FileNotFoundError:
        return Constants(path=path, status="missing", problem="no constants file yet")
    except OSError as exc:
        return Constants(path=path, status="unreadable", problem=f"cannot read it: {exc.strerror or exc}")
    if raw is None:
        return Constants(path=path, status="unreadable", problem="it is not a regular file")
    try:
        document = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        # RecursionError: a file nested thousands of levels deep is damage, not a crash.
        return Constants(path=path, status="corrupt", problem="not valid JSON (truncated or damaged)")
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        return Constants(path=path, status="foreign", problem="not a constants file of this suite")
    if document.get("version") != SCHEMA_VERSION:
        return Constants(
            path=path,
            status="unsupported-version",
            problem=f"schema version {document.get('version')!r}, this suite reads {SCHEMA_VERSION}",
        )
    backends_raw = document.get("backends")
    if not isinstance(backends_raw, dict):
        return Constants(path=path, status="corrupt", problem="'backends' is missing or not an object")
    backends: dict[str, BackendRecord] = {}
    for name, entry in backends_raw.items():
        record = _record_from(entry)
        if record is None:
            return Constants(path=path, status="corrupt", problem=f"the entry for {name!r} is malformed")
        backends[str(name)] = record
    generated_at = document.get("generated_at")
    return Constants(
        path=path,
        status="ok",
        backends=backends,
        generated_at=generated_at if isinstance(generated_at, str) else None,
    )


def shim_problem(record: BackendRecord, *, source_digest: str | None = None) -> str | None:
    """Why the shim a record names is not the one that was built, or None when it is.

    A missing file, another program in its place or a truncated binary all change its sha256;
    a record without a hash (an older file) is checked for existence only. With
    ``source_digest`` (of the shim sources this suite carries now), a shim built from other
    sources, by another version of the suite, is out of date too.
    """
    if record.shim is None:
        return "no shim is recorded"
    if source_digest is not None and record.shim_source != source_digest:
        return f"the shim {record.shim} was built from other sources (an earlier version of the suite)"
    shim = Path(record.shim)
    try:
        mode = shim.stat().st_mode
    except OSError:
        return f"the shim {shim} does not exist"
    if not stat.S_ISREG(mode) or not os.access(shim, os.X_OK):
        return f"the shim {shim} is {describe_file_type(mode) if not stat.S_ISREG(mode) else 'not executable'}"
    try:
        changed = record.shim_sha256 is not None and file_sha256(shim) != record.shim_sha256
    except OSError as exc:
        return f"the shim {shim} cannot be read: {exc.strerror or exc}"
    if changed:
        return f"the shim {shim} is not the file that was built (its content changed)"
    return None


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "available": (bool,),
    "reason": (str,),
    "origin": (str,),
    "install_dir": (str, type(None)),
    "lib_dir": (str, type(None)),
    "include_dirs": (list,),
    "source": (dict,),
    "build_flags": (list,),
    "shim": (str, type(None)),
    "shim_api": (str, type(None)),
    "shim_sha256": (str, type(None)),
    "shim_source": (str, type(None)),
    "detected_at": (str,),
}


def _record_from(entry: object) -> BackendRecord | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("available"), bool):
        return None
    values: dict[str, Any] = {}
    for key, types in _FIELD_TYPES.items():
        if key in entry:
            if not isinstance(entry[key], types):
                return None
            values[key] = entry[key]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in values.get("source", {}).items()):
        return None
    for key in ("build_flags", "include_dirs"):
        if not all(isinstance(item, str) for item in values.get(key, [])):
            return None
    return BackendRecord(**values)


def render(backends: Mapping[str, BackendRecord], *, previous: Constants) -> bytes:
    """The file's bytes for ``backends``; unchanged records keep their previous timestamps."""
    stamped: dict[str, dict[str, Any]] = {}
    for name, record in sorted(backends.items()):
        old = previous.backends.get(name) if previous.status == "ok" else None
        if old is not None and old.without_timestamp() == record.without_timestamp():
            stamp = old.detected_at
        else:
            stamp = record.detected_at or now_iso()
        stamped[name] = asdict(replace(record, detected_at=stamp))
    unchanged = previous.status == "ok" and {n: asdict(r) for n, r in sorted(previous.backends.items())} == stamped
    generated_at = previous.generated_at if unchanged and previous.generated_at else now_iso()
    return dump_json(
        {
            "schema": SCHEMA,
            "version": SCHEMA_VERSION,
            "generated_at": generated_at,
            "backends": stamped,
        }
    )


def write_constants(path: Path, backends: Mapping[str, BackendRecord]) -> bool:
    """Write the file if its content changed; return whether it was written."""
    previous = read_constants(path)
    data = render(backends, previous=previous)
    if _bytes_on_disk(path) == data:
        return False
    write_atomic(path, data, what="the constants file")
    return True


def is_current(path: Path, backends: Mapping[str, BackendRecord]) -> bool:
    """``--check``: would a rebuild leave the file as it is?"""
    return _bytes_on_disk(path) == render(backends, previous=read_constants(path))


def _bytes_on_disk(path: Path) -> bytes | None:
    try:
        return read_regular_file(path)
    except OSError:
        return None
