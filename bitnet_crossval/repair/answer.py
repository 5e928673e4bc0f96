"""A passing preflight's answer, remembered with the fingerprint of everything it checked.

``invoke preflight`` on a healthy backend reaches the same answer run after run: the install's
marker, libraries and headers, the constants file, the shim and the sources it was built from
have not changed. Reaching it means reading and hashing those files and importing the code that
does so, which is most of what a quick preflight costs. A clean pass (nothing repaired, the
constants file lists the backend, its shim is current) therefore writes its report beside the
list of what it looked at: each path with its ``stat`` (type, inode, size, modification and
change times; or its absence), and the environment variables and the suite version the answer
depends on. The next preflight re-reads those ``stat``s, compares, and on a match prints the
remembered report without importing any of the checking code. Any difference, or any doubt
(a missing, unreadable or foreign answer file), is a miss: the full check runs and, when it
passes, remembers again.

Every candidate path the check looked for is in the list, present or not, and so is each
directory searched, so a file appearing where it was absent (a library earlier in the search,
the target of a dangling link) is a miss. A change time moves on every write, rename or
permission change and cannot be set back by hand, so a rewritten file with its old size and
modification time still misses.

This module imports only the cache layout and the file helpers: it is loaded on every
``invoke preflight``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import bitnet_crossval
from bitnet_crossval.errors import SuiteError
from bitnet_crossval.store.layout import CACHEDIR_TAG_NAME, CacheLayout, cache_root_from, constants_path_from
from bitnet_crossval.util.files import read_json_file

FORMAT = 2
KEPT_SETTINGS = 4
# File times come from the kernel's coarse clock, which lags time.time_ns() by up to a tick.
_CLOCK_SLACK_NS = 20_000_000

# The environment a preflight's answer depends on: the suite's own variables (cache root,
# constants file, backend directories and sources, the re-exec guard, the lock and retry
# settings validated at start-up), the loader's search path, and what finds the default root and
# the interpreter of the load check.
_ENV_PREFIXES = ("BITNET_", "LLAMA_CPP_")
_ENV_NAMES = ("LD_LIBRARY_PATH", "DYLD_LIBRARY_PATH", "PATH", "HOME", "XDG_CACHE_HOME")

# The suite's modules whose code decides the answer: editing one (in a checkout) is a miss.
_DECIDING_MODULES = (
    "backends/specs.py",
    "backends/detect.py",
    "backends/platform.py",
    "store/constants.py",
    "store/marker.py",
    "store/layout.py",
    "store/lock.py",
    "context.py",
    "reference/sources.py",
    "repair/guard.py",
    "repair/preflight.py",
    "repair/answer.py",
    "tasks/preflight.py",
    "util/envnum.py",
    "util/files.py",
    "util/proc.py",
    "util/retry.py",
    "util/ui.py",
)


def remembered_answer(env: Mapping[str, str], backend: str) -> dict[str, Any] | None:
    """The remembered answer for ``backend`` (``summary``: the sentence; ``report``: the JSON
    document) when nothing it checked has changed since, else None."""
    try:
        root = cache_root_from(env)
        data = read_json_file(CacheLayout(root).preflight_answer(backend))
    except SuiteError:  # no usable cache root: the full check says what is wrong
        return None
    setting = _setting(env, root)
    for entry in _entries(data):
        if entry.get("setting") != setting:
            continue
        files, summary, report = entry.get("files"), entry.get("summary"), entry.get("report")
        if not (isinstance(files, list) and all(isinstance(f, list) and f and isinstance(f[0], str) for f in files)):
            return None
        if not (isinstance(summary, str) and isinstance(report, dict)):
            return None
        if files != [_stat(f[0]) for f in files]:
            return None
        return {"summary": summary, "report": report}
    return None


def remember_answer(
    env: Mapping[str, str],
    cache: CacheLayout,
    backend: str,
    *,
    checked: Iterable[Path],
    summary: str,
    report: Mapping[str, Any],
    started_ns: int | None = None,
) -> None:
    """Write a clean pass's answer with the fingerprint of ``checked`` (every file and directory
    the check looked at; the constants file, the shim's sources and the deciding modules are
    added here). The answers of the last few settings (environments) are kept side by side, so
    commands run with different settings do not keep replacing each other's. A cache that cannot
    remember costs the next run the full check, nothing else.

    ``started_ns`` (``time.time_ns()`` before the check read anything): a file changed since, or
    within the resolution of the file system's clock before, may have changed while the check
    read it, and its ``stat`` would then describe another state than the answer's; such an
    answer is not remembered (git calls the same case a "racily clean" file)."""
    from bitnet_crossval.reference.sources import shim_source_files
    from bitnet_crossval.util.files import dump_json, make_dir, write_atomic

    try:
        sources = shim_source_files()
        paths = [
            cache.root,  # what the cache root holds decides whether it is the suite's to use
            cache.root / CACHEDIR_TAG_NAME,
            *checked,
            constants_path_from(env, cache.root),
            # the directories too: their times change when a source file is added or removed
            *sorted({path.parent for path in sources}),
            *sources,
        ]
        target = cache.preflight_answer(backend)
        make_dir(target.parent)  # first, so creating it is not a change to the root after its stat
        files = _files(paths)
        if started_ns is not None and any(_changed_since(stat, started_ns - _CLOCK_SLACK_NS) for stat in files):
            return
        setting = _setting(env, cache.root)
        entry = {
            "setting": setting,
            "files": files,
            "summary": summary,
            "report": dict(report),
        }
        entries = _entries(read_json_file(target))
        if entry in entries:
            return  # already remembered (every crossval's clean preflight reaches here)
        others = [other for other in entries if other.get("setting") != setting]
        document = {"format": FORMAT, "answers": [*others[-(KEPT_SETTINGS - 1) :], entry]}
        write_atomic(target, dump_json(document), what="the preflight's answer")
    except (SuiteError, OSError):
        return


def _entries(data: object) -> list[dict[str, Any]]:
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("answers"), list):
        return []
    return [entry for entry in data["answers"] if isinstance(entry, dict)]


def _setting(env: Mapping[str, str], root: Path) -> dict[str, Any]:
    return {
        "suite": bitnet_crossval.__version__,
        "python": sys.executable,
        "root": str(root),
        # A relative BITNET_CONSTANTS_FILE names another file in another directory.
        "constants": str(constants_path_from(env, root)),
        "env": {k: v for k, v in sorted(env.items()) if k.startswith(_ENV_PREFIXES) or k in _ENV_NAMES},
        # Whether the shim may be executed and the files read depends on who asks.
        "user": _user(),
    }


def _user() -> list[Any]:
    if not hasattr(os, "geteuid"):
        return []
    return [os.getuid(), os.geteuid(), os.getgid(), os.getegid(), sorted(os.getgroups())]


def _changed_since(stat: list[Any], moment_ns: int) -> bool:
    return stat[1] is not None and max(stat[4], stat[5]) >= moment_ns


def _files(paths: list[Path]) -> list[list[Any]]:
    """Each path's ``stat``, led by the path: the list is both what to look at again and what
    it must still be."""
    package = Path(bitnet_crossval.__file__).parent
    return [_stat(str(p)) for p in (*paths, *(package / name for name in _DECIDING_MODULES))]


def _stat(path: str) -> list[Any]:
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # ValueError: a NUL in a path of a hand-edited answer file
        return [path, None]
    return [path, st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
