"""Putting a fetched tree into ``<cache>/sources/<name>`` so that it is either complete or absent.

A tree is assembled in a temporary directory beside its final place, marked complete with a
marker file, and moved into place with one ``os.replace``, so a run killed half-way leaves
only a temporary directory that the next run removes (a directory that exists is not proof of
a finished fetch: pre-commit ``store.py``, cargo's ``.cargo-ok``). Call these while holding
the backend's lock.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from bitnet_crossval.util.files import make_dir, os_error, read_json_file, remove_tree, write_json_atomic
from bitnet_crossval.util.proc import process_alive

MARKER_NAME = ".bitnet-source.json"


def assemble(final: Path, identity: dict[str, str], populate: Callable[[Path], str]) -> Path:
    """Build ``final`` in a temporary sibling with ``populate`` (which returns the project root,
    relative), mark it finished, and move it into place. Returns the project root."""
    make_dir(final.parent)
    _remove_stale_temps(final)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    except OSError as exc:
        raise os_error(exc, final.parent) from exc
    try:
        root = populate(tmp)
        tmp.chmod(0o755)  # mkdtemp made it private; the finished tree is an ordinary directory
        write_json_atomic(tmp / MARKER_NAME, {"identity": identity, "root": root})
        if read_marker(final) is None:
            _remove(final)  # an unfinished tree from an older run; never reuse it
            try:
                os.replace(tmp, final)
            except OSError as exc:
                raise os_error(exc, final) from exc
        else:
            root = read_marker(final) or root  # finished by someone else meanwhile
    except OSError as exc:
        raise os_error(exc, Path(exc.filename) if exc.filename else tmp) from exc
    finally:
        _remove(tmp)
    return final / root


def read_marker(directory: Path) -> str | None:
    """The project root recorded in a finished tree, or None when it is not finished."""
    document = read_json_file(directory / MARKER_NAME)
    root = document.get("root") if isinstance(document, dict) else None
    return root if isinstance(root, str) and (directory / root).is_dir() else None


def _remove_stale_temps(final: Path) -> None:
    """Remove temporaries of ``final`` left by killed runs (their owner process is gone)."""
    for candidate in final.parent.glob(f".{final.name}.tmp-*"):
        owner = candidate.name[len(final.name) + 6 :].split("-", 1)[0]
        if not owner.isdigit() or not process_alive(int(owner)) or int(owner) == os.getpid():
            _remove(candidate)


def _remove(path: Path) -> None:
    try:
        remove_tree(path)
    except OSError as exc:
        raise os_error(exc, path) from exc
