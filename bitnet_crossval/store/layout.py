"""Where the suite writes outside the repository: the cache root and its layout.

The root is an argument everywhere; :func:`default_cache_root` is the one function that
picks it when nobody did (tests patch it so nothing can touch a real user cache).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from bitnet_crossval.errors import BadInput
from bitnet_crossval.util.files import ensure_writable, make_dir, write_text
from bitnet_crossval.util.timefmt import file_stamp

APP_NAME = "bitnet"
CACHE_ENV = "BITNET_CACHE_DIR"
CONSTANTS_ENV = "BITNET_CONSTANTS_FILE"
CONSTANTS_FILENAME = "constants.json"

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
    return Path(value).expanduser().absolute() if value else CacheLayout(cache_root).constants_file


def short_key(text: str) -> str:
    """A 12-hex-digit key naming a cache entry after ``text`` (a path, a URL, a source id)."""
    import hashlib  # imported on use: start-up time matters for a quick preflight

    return hashlib.sha256(text.encode("utf-8", errors="surrogateescape")).hexdigest()[:12]


def _float_copy_key(model_sha256: str, backend: str, backend_commit: str) -> str:
    # A commit is a hex string; anything else (an archive's identity, "unknown") is hashed so
    # the name stays short and safe.
    commit = backend_commit.lower()
    commit_key = commit[:12] if commit and all(c in "0123456789abcdef" for c in commit) else short_key(commit)
    return f"{model_sha256[:16]}-{backend}-{commit_key}"


# CMake splits list values on ';' and its cache cannot hold a line break; a backslash starts an
# escape in CMake's language. A cache root with any of them breaks every build under it.
_CMAKE_UNSAFE = {";": "a ';'", "\n": "a line break", "\r": "a line break", "\\": "a backslash"}


def check_cache_root(root: Path) -> None:
    """Refuse a cache root the suite cannot build in: an existing non-directory, or a path
    CMake cannot take."""
    text = str(root)
    for char, name in _CMAKE_UNSAFE.items():
        if char in text and not (char == "\\" and os.sep == "\\"):
            raise BadInput(
                f"the cache directory {text!r} contains {name}, which CMake cannot take in a path",
                next_step=f"set {CACHE_ENV} to a path without ';', line breaks or backslashes",
            )
    if root.exists() and not root.is_dir():
        raise BadInput(
            f"{CACHE_ENV}={text} is a file, not a directory",
            next_step=f"point {CACHE_ENV} at a directory (it is created when missing)",
        )
    # A root that does not exist yet is created later; a file on its way there makes every
    # write fail with "Not a directory", so the nearest existing ancestor is checked now.
    existing = next((parent for parent in root.parents if parent.exists()), None)
    if not root.exists() and existing is not None and not existing.is_dir():
        raise BadInput(
            f"{CACHE_ENV}={text} lies under {existing}, which is a file, not a directory",
            next_step=f"point {CACHE_ENV} at a directory (it is created when missing)",
        )


@dataclass(frozen=True)
class CacheLayout:
    """Every path under the cache root is made here, and only here."""

    root: Path

    # --- the top-level directories -----------------------------------------------------------

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

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def constants_file(self) -> Path:
        return self.root / CONSTANTS_FILENAME

    # --- fetched source trees -----------------------------------------------------------------

    def git_source(self, backend: str, commit: str) -> Path:
        return self.sources / f"{backend}-{commit}"

    def archive_source(self, backend: str, sha256: str) -> Path:
        return self.sources / f"{backend}-archive-{sha256[:16]}"

    def pypi_source(self, backend: str, version: str) -> Path:
        return self.sources / f"{backend}-pypi-{version}"

    # --- downloads ----------------------------------------------------------------------------

    def download(self, url: str) -> Path:
        """Where the download of ``url`` is kept (the URL's last path segment, made unique)."""
        # Two URLs may end in the same file name; the URL's key keeps their downloads apart.
        name = unquote(posixpath.basename(urlsplit(url).path)) or "archive"
        return self.downloads / f"{short_key(url)}-{name}"

    def named_download(self, filename: str) -> Path:
        """A download known by its own file name (the pinned sdist)."""
        return self.downloads / filename

    # --- builds -------------------------------------------------------------------------------

    def backend_build(self, backend: str, identity: Mapping[str, str]) -> Path:
        """A backend's CMake build tree: one per local source directory, else one per source
        identity (commit, archive hash or URL), so switching sources never mixes objects."""
        if identity.get("kind") == "local":
            return self.builds / f"{backend}-local-{short_key(identity.get('location', ''))}"
        key = identity.get("commit") or identity.get("sha256") or identity.get("location", "")
        return self.builds / f"{backend}-{short_key(key)}"

    def shim_build(self, backend: str, lib_dir: Path) -> Path:
        """The shim's build tree for one backend install (named by its library directory)."""
        return self.builds / f"shim-{backend}-{short_key(str(lib_dir))}"

    # --- installs -----------------------------------------------------------------------------

    def install_dir(self, backend: str) -> Path:
        return self.installs / backend

    def staging_dir(self, backend: str, pid: int) -> Path:
        """Where a setup assembles an install before moving it into place."""
        return self.installs / f".staging-{backend}-{pid}"

    def retired_dir(self, backend: str, pid: int) -> Path:
        """Where the previous install waits between the two renames of a replacement."""
        return self.installs / f".old-{backend}-{pid}"

    def install_leftovers(self, backend: str) -> list[Path]:
        """Staging and retired directories of ``backend`` (left by killed setups, or in use by a
        running one: remove them only while holding the backend's lock)."""
        return sorted(self.installs.glob(f".staging-{backend}-*")) + sorted(self.installs.glob(f".old-{backend}-*"))

    # --- locks and logs -------------------------------------------------------------------------

    def lock_path(self, name: str) -> Path:
        return self.locks / f"{name}.lock"

    def log_file(self, job: str, backend: str) -> Path:
        """A new log for one run of ``job`` (setup, shim, ...): stamped and per process, so
        concurrent runs never share one."""
        return self.logs / f"{job}-{backend}-{file_stamp()}-{os.getpid()}.log"

    # --- models for the crossval ----------------------------------------------------------------

    def model_file(self, name: str) -> Path:
        return self.models / name

    # --- float copies of quantised models ---------------------------------------------------------

    @property
    def float_copies(self) -> Path:
        return self.root / "float-copies"

    def float_copy(self, model_sha256: str, backend: str, backend_commit: str, float_type: str) -> Path:
        """The float copy of a quantised model, dequantised by one backend build: one file per
        model content, backend, backend commit and float type (``F32``, ``F16``, ``BF16``)."""
        return self.float_copies / f"{_float_copy_key(model_sha256, backend, backend_commit)}-{float_type.lower()}.gguf"

    @staticmethod
    def float_copy_note(copy: Path) -> Path:
        """The note written beside a finished float copy (what it was made from, and how)."""
        return copy.with_name(copy.name + ".json")

    @staticmethod
    def float_copy_temp(copy: Path, pid: int) -> Path:
        """Where a process writes a float copy before renaming it into place."""
        return copy.with_name(f".{copy.name}.{pid}.tmp")

    @staticmethod
    def float_copy_workdir(copy: Path, pid: int) -> Path:
        """A process's scratch directory for the backend's output while it makes a float copy."""
        return copy.with_name(f".{copy.name}.{pid}.work")

    @staticmethod
    def float_copy_leftovers(copy: Path) -> list[Path]:
        """Temporaries of ``copy`` left by killed processes (remove them only under the copy's lock)."""
        return sorted(copy.parent.glob(f".{copy.name}.*"))

    def float_copy_lock(self, model_sha256: str, backend: str, backend_commit: str) -> Path:
        """One lock for every float type of one model and backend build: writers take turns."""
        return self.lock_path(f"float-copy-{_float_copy_key(model_sha256, backend, backend_commit)}")

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
            ensure_writable(directory)
        tag = self.root / "CACHEDIR.TAG"
        if not tag.exists():
            write_text(tag, _CACHEDIR_TAG)
