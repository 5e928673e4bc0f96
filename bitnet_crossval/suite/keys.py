"""A case's key: the sha256 of everything that determines its result, so a result found under the
same key in the cache is the result a new run would give.

What goes in (:class:`KeyInputs`): the case's options as given (paths made absolute); the sha256
of the model file it resolves to, of a prompt file, a tokens file and a tokenizer file, of the files a ``cmd:``
candidate's command line names and of a ``py:`` candidate's module found under the cases file's
directory; the reference backend's and a backend candidate's source identity, build flags and
shim digest; the environment variables the suite hands to every child untouched
(``BITNET_DETERMINISTIC``, ``BITNET_SEED``, ``BITNET_GPU_LAYERS``); and the suite's version, which
is the package's version and the digest of its own files (the engine, the comparison, the shim's
sources, the built-in texts). What a candidate reads beyond that (a library it imports, a file it
opens) is not in the key: ``--fresh`` runs every case again.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitnet_crossval import __version__
from bitnet_crossval.crossval.candidates import parse_candidate
from bitnet_crossval.crossval.candidates.command import CommandSpec
from bitnet_crossval.crossval.candidates.python import PythonSpec
from bitnet_crossval.store.constants import BackendRecord
from bitnet_crossval.suite.cases import Case
from bitnet_crossval.util.files import file_sha256

KEY_VERSION = 1
"""Bumped when what goes into a key changes, so no older result is taken for a newer one."""
PASSED_THROUGH = ("BITNET_DETERMINISTIC", "BITNET_SEED", "BITNET_GPU_LAYERS")
_PACKAGE = Path(__file__).resolve().parent.parent
_PACKAGE_SUFFIXES = frozenset({".py", ".txt", ".md", ".cpp", ".h", ".in", ".cmake"})


@functools.cache
def suite_version() -> str:
    """``<package version>+<digest of the package's files>`` (an edit of the engine, the metrics or
    the shim's sources makes new keys)."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*")):
        if path.is_file() and (path.suffix in _PACKAGE_SUFFIXES or path.name == "CMakeLists.txt"):
            if "__pycache__" in path.parts:
                continue
            digest.update(path.relative_to(_PACKAGE).as_posix().encode("utf-8") + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return f"{__version__}+{digest.hexdigest()[:16]}"


@dataclass(frozen=True, kw_only=True)
class KeyInputs:
    options: Mapping[str, str | bool]
    model_sha256: str
    files: Mapping[str, str] = field(default_factory=dict)
    """sha256 of the other files the case reads, by path."""
    backends: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    environment: Mapping[str, str] = field(default_factory=dict)
    suite_version: str = ""

    def key(self) -> str:
        document = {
            "key_version": KEY_VERSION,
            "suite_version": self.suite_version,
            "options": dict(self.options),
            "model_sha256": self.model_sha256,
            "files": dict(self.files),
            "backends": {name: dict(facts) for name, facts in self.backends.items()},
            "environment": dict(self.environment),
        }
        text = json.dumps(document, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


def backend_facts(record: BackendRecord | None) -> dict[str, Any]:
    """What about a backend decides a result: which source, built how, with which shim."""
    if record is None:
        return {}
    return {"source": dict(record.source), "build_flags": list(record.build_flags), "shim_sha256": record.shim_sha256}


def case_files(case: Case, directory: Path) -> dict[str, str]:
    """The sha256 of the files a case reads besides the model: its prompt file, tokens file and tokenizer, the
    files its ``cmd:`` line names, its ``py:`` module when it lies under ``directory``."""
    paths: list[Path] = []
    for key in ("prompt-file", "tokens-file", "tokenizer"):
        value = case.value(key)
        if isinstance(value, str) and value.strip():
            paths.append(Path(value))
    candidate = case.value("candidate")
    if isinstance(candidate, str):
        paths += _candidate_files(candidate, directory)
    digests: dict[str, str] = {}
    for path in paths:
        try:
            if path.is_file():
                digests[str(path)] = file_sha256(path)
        except OSError:
            continue  # the case itself will say what is wrong with it
    return digests


def _candidate_files(text: str, directory: Path) -> list[Path]:
    spec = parse_candidate(text)
    if isinstance(spec, CommandSpec):
        arguments = (Path(arg) for arg in spec.argv if "{" not in arg)
        return [path if path.is_absolute() else directory / path for path in arguments]
    if isinstance(spec, PythonSpec):
        base = directory.joinpath(*spec.module.split("."))
        return [base.with_suffix(".py"), base / "__init__.py"]
    return []


def passed_through(env: Mapping[str, str]) -> dict[str, str]:
    return {name: env[name] for name in PASSED_THROUGH if name in env}
