"""The files ``crossval-per-token`` writes for the user, kept apart from everything it reads or owns.

An output replaces whatever its name holds. So before anything runs, each output (``--report``,
``--junit``, ``--plot``) is refused when it is one of the run's inputs (the model, the tokens
file, the tokenizer), another output, or a file the suite owns: anything under the cache root
(the synthetic and Gemma models, the shims, the installs), the constants file, a recorded shim,
a recorded backend's libraries. "Is" means the same file: the same path once links are
resolved, or the same inode (a hard link).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bitnet_crossval.errors import BadInput
from bitnet_crossval.store.layout import CACHE_ENV, CONSTANTS_ENV

if TYPE_CHECKING:
    from bitnet_crossval.context import SuiteContext
    from bitnet_crossval.crossval.request import CrossvalRequest


@dataclass(frozen=True, kw_only=True)
class Protected:
    """A file (or, with ``tree``, everything under a directory) no output may be."""

    path: Path
    what: str
    """What it is, for the sentence: "the model (--model)"."""
    read_by_run: bool = False
    """An input of this run (as opposed to a file the suite keeps)."""
    tree: bool = False


def protected_paths(request: CrossvalRequest, ctx: SuiteContext) -> list[Protected]:
    """What the outputs of ``request`` must stay away from."""
    found: list[Protected] = []
    if request.model.kind == "file" and request.model.path is not None:
        found.append(Protected(path=request.model.path, what="the model (--model)", read_by_run=True))
    if request.tokens_file is not None:
        found.append(Protected(path=request.tokens_file, what="the tokens file (--tokens-file)", read_by_run=True))
    if request.tokenizer is not None:
        found.append(Protected(path=request.tokenizer, what="the tokenizer (--tokenizer)", read_by_run=True))
    found.append(Protected(path=ctx.cache.root, what=f"the suite's cache ({CACHE_ENV})", tree=True))
    found.append(Protected(path=ctx.constants_path, what=f"the suite's constants file ({CONSTANTS_ENV})"))
    for name, record in sorted(ctx.constants.backends.items()):
        if record.shim:
            found.append(Protected(path=Path(record.shim), what=f"the reference shim of {name}"))
        if record.lib_dir:
            found.append(Protected(path=Path(record.lib_dir), what=f"the libraries of {name}", tree=True))
    return found


def check_outputs_apart(outputs: Mapping[str, Path], protected: Sequence[Protected]) -> None:
    """Refuse (bad input) an output that is an input, another output, or a file the suite owns.

    ``outputs`` maps each output's flag (``--report``) to its path, in the order given.
    """
    seen: list[tuple[str, Path]] = []
    for flag, path in outputs.items():
        for other_flag, other in seen:
            if _same_file(path, other):
                raise BadInput(
                    f"{other_flag} and {flag} name the same file {path}",
                    next_step="give each output a file of its own",
                )
        seen.append((flag, path))
        for guarded in protected:
            if guarded.tree and _inside(path, guarded.path):
                raise BadInput(
                    f"{flag} {path} lies in {guarded.what} {guarded.path}, which the suite manages itself",
                    next_step=f"name a file for {flag} outside {guarded.path}",
                )
            if not guarded.tree and _same_file(path, guarded.path):
                kept = "which the run reads" if guarded.read_by_run else "which the suite keeps for itself"
                raise BadInput(
                    f"{flag} {path} is {guarded.what}, {kept}, and writing there would replace it",
                    next_step=f"name another file for {flag}",
                )


def _same_file(a: Path, b: Path) -> bool:
    first, second = _identity(a), _identity(b)
    if first is not None and second is not None:
        return first == second  # a hard link is the same file under another name
    return _real(a) == _real(b)


def _inside(path: Path, root: Path) -> bool:
    return _real(path).is_relative_to(_real(root))


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # missing, unreadable, or a name the file system cannot hold
        return None
    return st.st_dev, st.st_ino


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))
