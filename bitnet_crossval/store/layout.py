"""Where the suite writes outside the repository: the cache root and its layout.

The root is an argument everywhere; :func:`default_cache_root` is the one function that
picks it when nobody did (tests patch it so nothing can touch a real user cache).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bitnet_crossval.errors import PermissionDenied, UnclassifiedError

APP_NAME = "bitnet"
CACHE_ENV = "BITNET_CACHE_DIR"
CONSTANTS_ENV = "BITNET_CONSTANTS_FILE"
CONSTANTS_FILENAME = "constants.json"

PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})

_CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This file is a cache directory tag created by the bitnet task suite.\n"
    "# For information about cache directory tags, see https://bford.info/cachedir/\n"
)


def default_cache_root() -> Path:
    from platformdirs import user_cache_path

    return user_cache_path(APP_NAME, appauthor=False)


def cache_root_from(env: Mapping[str, str]) -> Path:
    value = env.get(CACHE_ENV)
    return Path(value).expanduser().absolute() if value else default_cache_root()


def constants_path_from(env: Mapping[str, str], cache_root: Path) -> Path:
    value = env.get(CONSTANTS_ENV)
    return Path(value).expanduser().absolute() if value else cache_root / CONSTANTS_FILENAME


@dataclass(frozen=True)
class CacheLayout:
    """Everything under the cache root has one fixed place."""

    root: Path

    @property
    def sources(self) -> Path:
        return self.root / "sources"

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    @property
    def builds(self) -> Path:
        return self.root / "builds"

    @property
    def installs(self) -> Path:
        return self.root / "installs"

    @property
    def locks(self) -> Path:
        return self.root / "locks"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def install_dir(self, backend: str) -> Path:
        return self.installs / backend

    def lock_path(self, backend: str) -> Path:
        return self.locks / f"{backend}.lock"

    def ensure(self) -> None:
        """Create the layout; an unwritable root is exit 4 with the path named."""
        for directory in (
            self.root,
            self.sources,
            self.downloads,
            self.builds,
            self.installs,
            self.locks,
            self.logs,
        ):
            make_dir(directory)
        tag = self.root / "CACHEDIR.TAG"
        if not tag.exists():
            try:
                tag.write_text(_CACHEDIR_TAG, encoding="utf-8")
            except OSError as exc:
                raise os_error(exc, tag) from exc


def make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(exc, path) from exc


def os_error(exc: OSError, path: Path) -> PermissionDenied | UnclassifiedError:
    """Turn an OSError on ``path`` into the suite's error (permission problems are exit 4)."""
    if exc.errno in PERMISSION_ERRNOS:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        return PermissionDenied(f"cannot write to {path}: {reason}")
    return UnclassifiedError(f"cannot write to {path}: {exc.strerror or exc}")
