"""Where the suite writes outside the repository: the cache root and its layout.

The root is an argument everywhere; :func:`default_cache_root` is the one function that
picks it when nobody did (tests patch it so nothing can touch a real user cache).
"""

from __future__ import annotations

import os
import posixpath
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from bitnet_crossval.errors import BadInput
from bitnet_crossval.util.files import ensure_writable, make_dir, read_regular_file, write_atomic
from bitnet_crossval.util.timefmt import file_stamp

APP_NAME = "bitnet"
CACHE_ENV = "BITNET_CACHE_DIR"
CONSTANTS_ENV = "BITNET_CONSTANTS_FILE"
CONSTANTS_FILENAME = "constants.json"

CACHEDIR_TAG_NAME = "CACHEDIR.TAG"
_TAG_OWNER = "created by the bitnet task suite"
_CACHEDIR_TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    f"# This file is a cache directory tag {_TAG_OWNER}.\n"
    "# For information about cache directory tags, see https://bford.info/cachedir/\n"
)


def default_cache_root() -> Path:
    """The user's cache directory for the suite: platformdirs' ``user_cache_path("bitnet")``.

    On Linux that is the XDG rule, computed here: importing platformdirs costs 10-15 ms, a
    tenth of a quick ``invoke preflight``, on every command that uses the default root. A unit
    test holds the rule to the installed platformdirs' answer for set, empty and relative
    variables (releases before 4.14 took a relative ``XDG_CACHE_HOME`` or ``HOME`` as it was,
    which the XDG spec says to ignore; this rule ignores them).
    """
    if sys.platform.startswith("linux") and not _maybe_android(os.environ):
        return _xdg_cache_home(os.environ) / APP_NAME
    from platformdirs import user_cache_path

    return user_cache_path(APP_NAME, appauthor=False)


def _maybe_android(env: Mapping[str, str]) -> bool:
    # platformdirs tells an Android app from these; it then answers with the app's own folders.
    return "ANDROID_DATA" in env or "ANDROID_ROOT" in env


def _xdg_cache_home(env: Mapping[str, str]) -> Path:
    """``$XDG_CACHE_HOME`` when it is an absolute path (the XDG spec ignores a relative one), else
    ``~/.cache``, where a relative or missing ``$HOME`` means the account's home directory."""
    xdg = env.get("XDG_CACHE_HOME", "")
    if posixpath.isabs(xdg):
        return Path(xdg)
    home = env.get("HOME", "")
    if not posixpath.isabs(home):
        import pwd

        try:
            home = pwd.getpwuid(os.getuid()).pw_dir
        except KeyError:
            home = ""
    if not posixpath.isabs(home):
        raise BadInput(
            f"the default cache root is under the home directory, and user {os.getuid()} has none "
            "($HOME is not an absolute path and the account database has no entry)",
            next_step=f"set {CACHE_ENV} (or HOME) to an absolute directory",
        )
    return Path(home) / ".cache"


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
    check_cache_root_is_ours(root)
    # A root that does not exist yet is created later; a file on its way there makes every
    # write fail with "Not a directory", so the nearest existing ancestor is checked now.
    existing = next((parent for parent in root.parents if parent.exists()), None)
    if not root.exists() and existing is not None and not existing.is_dir():
        raise BadInput(
            f"{CACHE_ENV}={text} lies under {existing}, which is a file, not a directory",
            next_step=f"point {CACHE_ENV} at a directory (it is created when missing)",
        )


def check_cache_root_is_ours(root: Path) -> None:
    """Refuse to take over a directory that holds something the suite did not put there.

    The suite writes ``CACHEDIR.TAG`` into its root, and backup tools skip a tagged directory:
    ``BITNET_CACHE_DIR='~'`` must not tag (and fill) the home directory. A root is the suite's
    when it does not exist yet, is empty, carries the suite's tag, or holds only names of the
    layout (a cache from before the tag, or one a test prepared).
    """
    try:
        entries = sorted(entry.name for entry in os.scandir(root))
    except FileNotFoundError:
        return
    except NotADirectoryError:
        return  # a file there is refused by check_cache_root with its own sentence
    except OSError:
        return  # an unreadable root: the first write names it (exit 4)
    if not entries or _has_our_tag(root):
        return
    foreign = [name for name in entries if not _layout_name(name)]
    if foreign:
        others = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise BadInput(
            f"{CACHE_ENV}={root} is a directory the suite did not create (it holds {foreign[0]!r}{others}), so the "
            "suite will not use it as its cache",
            next_step=f"point {CACHE_ENV} at a new or empty directory, such as {root / APP_NAME}",
        )


def _has_our_tag(root: Path) -> bool:
    """Whether ``root`` carries the tag this suite writes (another program's tag is not ours)."""
    try:
        raw = read_regular_file(root / CACHEDIR_TAG_NAME, limit=4096)  # never blocks on a FIFO
    except OSError:
        return False
    if raw is None:
        return False
    text = raw.decode("utf-8", errors="replace")
    return text.startswith(_CACHEDIR_TAG.splitlines()[0]) and _TAG_OWNER in text


def _layout_name(name: str) -> bool:
    """A name the layout puts in the root, or the temporary sibling of one (``.constants.json.x.tmp``)."""
    return name in _ROOT_NAMES or any(name.startswith(f".{known}.") for known in _ROOT_NAMES)


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
    def hf_weights(self) -> Path:
        return self.root / "hf-weights"

    @property
    def checks(self) -> Path:
        """Answers of checks that are costly and depend only on files (see :meth:`load_check`)."""
        return self.root / "checks"

    def model_facts(self, key: str) -> Path:
        """What the reference said a model is, for the fingerprint ``key`` of the model and the
        shim (crossval/facts.py)."""
        return self.checks / f"model-{key[:32]}.json"

    def load_check(self, backend: str) -> Path:
        """The last passed library load check of ``backend``, with the fingerprint of what it
        loaded (backends/detect.py)."""
        return self.checks / f"load-{backend}.json"

    def preflight_answer(self, backend: str) -> Path:
        """The last clean preflight of ``backend``, with the fingerprint of what it checked
        (repair/answer.py)."""
        return self.checks / f"preflight-{backend}.json"

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

    # --- the hf candidate's dequantised weights ----------------------------------------------------

    def hf_weights_entry(self, model_sha256: str, transformers_version: str) -> Path:
        """A GGUF model as transformers loaded it (its config and float32 safetensors), one per
        model content and transformers version: another version may read the file differently."""
        version = re.sub(r"[^A-Za-z0-9._+-]", "_", transformers_version)
        return self.hf_weights / f"{model_sha256[:16]}-transformers-{version}"

    def hf_weights_staging(self, entry: Path, pid: int) -> Path:
        """Where one process assembles ``entry`` before renaming it into place."""
        return entry.with_name(f".staging-{entry.name}-{pid}")

    def hf_weights_lock(self, entry: Path) -> Path:
        return self.lock_path(f"hf-weights-{entry.name}")

    def model_record(self, name: str) -> Path:
        """What was written into ``model_file(name)`` (size, sha256, mtime), to notice damage."""
        return self.models / f"{name}.written.json"

    # --- results of a suite's cases ------------------------------------------------------------

    @property
    def results(self) -> Path:
        return self.root / "results"

    def case_result(self, key: str) -> Path:
        """A case that reached a verdict: its outcome, report and log, reused by any run whose
        case has the same key."""
        return self.results / key

    def case_failure(self, key: str) -> Path:
        """The last attempt of a case that ended without a verdict, kept for its log."""
        return self.results / f"{key}.failed"

    def case_attempt(self, key: str, pid: int, index: int) -> Path:
        """Where a case runs before its result is moved into place (per process and case)."""
        return self.results / f".{key}.{pid}.{index}"

    def case_attempts(self) -> list[Path]:
        """Every attempt directory (left by killed runs, or in use by a running one)."""
        return sorted(self.results.glob(".*.*.*"))

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
        """Create the layout; an unwritable root is exit 4 with the path named, and a directory
        that holds something the suite did not create is never tagged or filled."""
        check_cache_root_is_ours(self.root)
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
        if not _has_our_tag(self.root):
            write_atomic(self.root / CACHEDIR_TAG_NAME, _CACHEDIR_TAG.encode("utf-8"), what="the cache directory tag")


def _root_names() -> frozenset[str]:
    """The names the layout puts directly in the root: every property of :class:`CacheLayout` that
    is a child of the root (so a directory added there is known here too), and the tag."""
    probe = CacheLayout(Path("root"))
    names = {CACHEDIR_TAG_NAME}
    for attribute in vars(CacheLayout).values():
        if isinstance(attribute, property) and attribute.fget is not None:
            value = attribute.fget(probe)
            if isinstance(value, Path) and value.parent == probe.root:
                names.add(value.name)
    return frozenset(names)


_ROOT_NAMES = _root_names()
