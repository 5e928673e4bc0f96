"""Where a backend's source tree comes from, and getting it into the cache.

A source is a local directory (built in place), a git URL with an optional ``@REF``, an
archive (a path or a URL), or ``pypi``: the llama.cpp tree vendored in the pinned
llama-cpp-python sdist, which is the same commit as the default git source. Anything that
crosses the network is retried for transient failures (:mod:`tasks.retry`) and every
failure becomes one of the contract's errors (:func:`classify_failure`).

Fetched trees land in ``<cache>/sources/<name>``: they are assembled in a temporary
directory beside it, marked complete with a marker file, and moved into place with one
``os.replace``, so a run killed half-way leaves only a temporary directory that the next run
removes (a directory that exists is not proof of a finished fetch). Call the fetch
functions while holding the backend's lock.
"""

from __future__ import annotations

import base64
import errno
import gzip
import hashlib
import json
import lzma
import os
import posixpath
import re
import socket
import ssl
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from http.client import HTTPException
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit
from urllib.request import url2pathname

from tasks import __version__, proc, ui
from tasks.backends import (
    LLAMA_CPP_COMMIT,
    LLAMA_CPP_PYPI_PACKAGE,
    LLAMA_CPP_PYPI_SUBDIR,
    LLAMA_CPP_PYPI_VERSION,
    BackendSpec,
)
from tasks.errors import (
    BadInput,
    CommandFailed,
    NetworkError,
    PermissionDenied,
    ProgramNotFound,
    SuiteError,
    UnclassifiedError,
)
from tasks.fsutil import remove_tree, write_atomic, write_json_atomic
from tasks.paths import PERMISSION_ERRNOS, CacheLayout, cache_root_from, make_dir, os_error
from tasks.retry import RetryPolicy, with_retries

SourceKind = Literal["local", "git", "archive", "pypi"]

PYPI_KEYWORD = "pypi"
PYPI_REQUIREMENT = f"{LLAMA_CPP_PYPI_PACKAGE}=={LLAMA_CPP_PYPI_VERSION}"
PYPI_SDIST_NAME = f"{LLAMA_CPP_PYPI_PACKAGE.replace('-', '_')}-{LLAMA_CPP_PYPI_VERSION}.tar.gz"
DEFAULT_INDEX_URL = "https://pypi.org/simple"
INDEX_ENV = "BITNET_PYPI_INDEX_URL"
PIP_INDEX_ENV = "PIP_INDEX_URL"
TIMEOUT_ENV = "BITNET_NET_TIMEOUT"
DEFAULT_TIMEOUT = 30.0

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.xz", ".zip")
GIT_SCHEMES = frozenset({"https", "http", "ssh", "git", "file"})
MARKER_NAME = ".bitnet-source.json"

_CHUNK = 1 << 20
_FULL_SHA = re.compile(r"[0-9a-f]{40}\Z")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
# git's scp-like syntax "[user@]host:path"; a host of one letter would be a Windows drive.
_SCP_LIKE = re.compile(r"(?:[^@/\\:\s]+@)?[^@/\\:\s-][^@/\\:\s]+:(?!//)\S+\Z")
_BAD_REF = re.compile(r"[\s~^:?*\[\\\x00-\x1f\x7f]|\.\.|//|@\{|^[-/.]|[/.]$|\.lock$")
_PYPI_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"
_JSON_TYPES = frozenset({"application/vnd.pypi.simple.v1+json", "application/json"})


@dataclass(frozen=True, kw_only=True)
class SourceSpec:
    """A parsed source string: ``location`` is an absolute path, a URL, or for ``pypi`` the
    pinned requirement; ``ref`` is the git ref to check out (None: the remote's HEAD)."""

    kind: SourceKind
    location: str
    ref: str | None = None

    def describe(self) -> str:
        if self.kind == "git":
            return f"{redact_url(self.location)}@{self.ref}" if self.ref else redact_url(self.location)
        if self.kind == "pypi":
            return f"{PYPI_REQUIREMENT} (PyPI sdist)"
        return redact_url(self.location)


@dataclass(frozen=True, kw_only=True)
class FetchedSource:
    """A source tree ready to configure: ``path`` is the CMake project root; ``identity`` is the
    same for the same input on every run; ``incremental`` means "a user's tree, build it where
    it is" rather than a pristine copy in the cache."""

    path: Path
    identity: dict[str, str]
    incremental: bool = False


# --------------------------------------------------------------------------- parsing


def resolve_source_text(cli_value: str | None, *, spec: BackendSpec, env: Mapping[str, str]) -> str | None:
    """The source string in force: ``--source`` first, then the backend's ``*_SOURCE`` variable."""
    for value in (cli_value, env.get(spec.source_env)):
        if value is not None and value.strip():
            return value.strip()
    return None


def parse_source(text: str, *, spec: BackendSpec, ref: str | None = None) -> SourceSpec:
    """Parse a source string; ``ref`` (``--ref``) overrides an ``@REF`` in a git URL."""
    raw = text.strip()
    if not raw:
        raise BadInput(f"the source for {spec.display} is empty", next_step=_source_forms(spec))
    if ref is not None:
        ref = _check_ref(ref.strip(), spec=spec)
    if raw.lower() == PYPI_KEYWORD:
        return _parse_pypi(spec=spec, ref=ref)
    scheme = _SCHEME.match(raw)
    if scheme:
        return _parse_url(raw, scheme.group(1).lower(), spec=spec, ref=ref)
    if _SCP_LIKE.match(raw) and not Path(raw).expanduser().exists():
        url, _, at_ref = _split_ref(raw, raw.index(":") + 1)
        return SourceSpec(kind="git", location=url, ref=ref or _check_ref(at_ref, spec=spec))
    return _parse_path(Path(raw).expanduser(), spec=spec, ref=ref)


def _parse_pypi(*, spec: BackendSpec, ref: str | None) -> SourceSpec:
    if not spec.pypi_fallback:
        raise BadInput(
            f"the pypi source exists only for llama.cpp; {spec.display} is on no package registry",
            next_step=f"set {spec.source_env} to a local checkout, a git URL or an archive of {spec.display}",
        )
    if ref is not None:
        raise BadInput(
            f"--ref cannot be combined with the pypi source, which is always commit {LLAMA_CPP_COMMIT}",
            next_step="drop --ref, or use a git URL as the source",
        )
    return SourceSpec(kind="pypi", location=PYPI_REQUIREMENT)


def _parse_url(raw: str, scheme: str, *, spec: BackendSpec, ref: str | None) -> SourceSpec:
    if scheme not in GIT_SCHEMES:
        raise BadInput(f"unsupported URL scheme {scheme!r} in source {raw!r}", next_step=_source_forms(spec))
    parts = urlsplit(raw)
    if is_archive_name(parts.path):
        if ref is not None:
            raise BadInput("--ref applies to git sources, not to an archive", next_step="drop --ref")
        if scheme == "file":
            return _parse_path(Path(url2pathname(parts.path)), spec=spec, ref=None)
        if scheme not in {"http", "https"}:
            raise BadInput(f"archives can be downloaded over http(s) only, not {raw!r}", next_step=_source_forms(spec))
        return SourceSpec(kind="archive", location=raw)
    path_start = raw.find("/", len(scheme) + 3)
    url, _, at_ref = _split_ref(raw, path_start if path_start >= 0 else len(raw))
    if not urlsplit(url).netloc and scheme != "file":
        raise BadInput(f"the git URL {raw!r} names no host", next_step=_source_forms(spec))
    return SourceSpec(kind="git", location=url, ref=ref or _check_ref(at_ref, spec=spec))


def _split_ref(raw: str, path_start: int) -> tuple[str, str, str | None]:
    """Split ``URL@REF`` at the last ``@`` of the path part (user@ in the host is not a ref)."""
    at = raw.rfind("@", path_start)
    if at < 0:
        return raw, "", None
    return raw[:at], "@", raw[at + 1 :]


def _parse_path(path: Path, *, spec: BackendSpec, ref: str | None) -> SourceSpec:
    path = path.absolute()
    if not path.exists():
        raise BadInput(
            f"the source {path} does not exist",
            next_step=f"point --source or {spec.source_env} at an existing directory or archive",
        )
    if path.is_dir():
        if ref is not None:
            raise BadInput(
                f"--ref applies to git sources, not to the local directory {path}",
                next_step="check the ref out in that directory yourself, or drop --ref",
            )
        return SourceSpec(kind="local", location=str(path.resolve()))
    if is_archive_name(path.name):
        if ref is not None:
            raise BadInput("--ref applies to git sources, not to an archive", next_step="drop --ref")
        return SourceSpec(kind="archive", location=str(path.resolve()))
    raise BadInput(
        f"{path} is neither a directory nor an archive ({', '.join(ARCHIVE_SUFFIXES)})",
        next_step=_source_forms(spec),
    )


def _check_ref(ref: str | None, *, spec: BackendSpec) -> str | None:
    if ref is None:
        return None
    if not ref or _BAD_REF.search(ref):
        raise BadInput(
            f"{ref!r} is not a valid git ref",
            next_step="use a full 40-character commit, a tag or a branch name",
        )
    return ref.lower() if re.fullmatch(r"[0-9a-fA-F]{40}", ref) else ref


def _source_forms(spec: BackendSpec) -> str:
    forms = "a local directory, a git URL (optionally URL@REF), a .tar.gz/.tgz/.tar.xz/.zip archive"
    if spec.pypi_fallback:
        forms += ", or pypi"
    return f"set --source or {spec.source_env} to {forms}"


def is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def redact_url(url: str) -> str:
    """The URL without a password, for messages and identities."""
    parts = urlsplit(url) if _SCHEME.match(url) else None
    if parts is None or parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


# --------------------------------------------------------------------------- identity


def identify_source(source: SourceSpec, *, spec: BackendSpec, env: Mapping[str, str]) -> dict[str, str] | None:
    """The identity :func:`fetch_source` would report, when it is known without fetching
    (None otherwise). Cheap: no network, at most two local git calls or one file hash."""
    if source.kind == "git":
        if source.ref is not None and _FULL_SHA.match(source.ref):
            return _git_identity(source.location, source.ref)
        return None
    if source.kind == "pypi":
        return pypi_identity()
    if source.kind == "local":
        return _local_identity(Path(source.location), env)
    if not _is_url(source.location):
        return _archive_identity(source.location, _sha256_file(Path(source.location)))
    cache = CacheLayout(cache_root_from(env))
    recorded = _recorded_sha256(_download_path(cache, source.location))
    return _archive_identity(source.location, recorded) if recorded else None


def acceptable_identities(
    source_text: str | None, *, spec: BackendSpec, ref: str | None, env: Mapping[str, str]
) -> tuple[dict[str, str], ...]:
    """Identities any of which satisfies this request, known without fetching: the default
    source also accepts a tree from the PyPI fallback, which is the same commit."""
    text = resolve_source_text(source_text, spec=spec, env=env)
    if text is not None:
        found = identify_source(parse_source(text, spec=spec, ref=ref), spec=spec, env=env)
        return (found,) if found else ()
    default = parse_source(spec.default_source, spec=spec, ref=ref)
    identities = [identify_source(default, spec=spec, env=env)]
    if _has_pypi_fallback(spec, default):
        identities.append(pypi_identity())
    return tuple(i for i in identities if i)


def pypi_identity() -> dict[str, str]:
    return {"kind": "pypi", "location": PYPI_REQUIREMENT, "commit": LLAMA_CPP_COMMIT}


def _git_identity(url: str, commit: str) -> dict[str, str]:
    return {"kind": "git", "location": redact_url(url), "commit": commit}


def _archive_identity(location: str, sha256: str) -> dict[str, str]:
    return {"kind": "archive", "location": redact_url(location), "sha256": sha256}


def _local_identity(path: Path, env: Mapping[str, str]) -> dict[str, str]:
    identity = {"kind": "local", "location": str(path)}
    if not any((p / ".git").exists() for p in (path, *path.parents)):
        return identity  # not in a git work tree; skip starting git at all
    git_env = {**proc.git_env(env), "GIT_OPTIONAL_LOCKS": "0"}  # status must not take the index lock
    try:
        head = proc.run(["git", "-C", path, "rev-parse", "HEAD"], env=git_env).output
        status = proc.run(["git", "-C", path, "status", "--porcelain", "--", "."], env=git_env).output
    except (CommandFailed, ProgramNotFound):
        return identity  # an empty repository, or no git: the path alone identifies it
    commits = [line for line in head.split() if _FULL_SHA.match(line)]
    if not commits:
        return identity
    changed = [line for line in status.splitlines() if re.match(r"[ MADRCUT?!]{2} ", line)]
    identity["commit"] = commits[-1]
    identity["dirty"] = "true" if changed else "false"
    return identity


# --------------------------------------------------------------------------- fetching


def fetch_default_or(
    source_text: str | None,
    *,
    spec: BackendSpec,
    ref: str | None,
    cache: CacheLayout,
    env: Mapping[str, str],
    policy: RetryPolicy,
) -> FetchedSource:
    """Fetch ``source_text`` (or the backend's ``*_SOURCE`` variable); with neither, the pinned
    git commit, and for llama.cpp the same commit from PyPI when the git host is unreachable."""
    text = resolve_source_text(source_text, spec=spec, env=env)
    if text is not None:
        return fetch_source(parse_source(text, spec=spec, ref=ref), spec=spec, cache=cache, env=env, policy=policy)
    default = parse_source(spec.default_source, spec=spec, ref=ref)
    try:
        return fetch_source(default, spec=spec, cache=cache, env=env, policy=policy)
    except NetworkError as git_error:
        if not _has_pypi_fallback(spec, default):
            raise
        ui.say(
            f"cannot reach {spec.git_url} (network error); using the same {spec.display} commit "
            f"from the {LLAMA_CPP_PYPI_PACKAGE} {LLAMA_CPP_PYPI_VERSION} sdist on PyPI",
            "warn",
        )
        pypi = SourceSpec(kind="pypi", location=PYPI_REQUIREMENT)
        try:
            return fetch_source(pypi, spec=spec, cache=cache, env=env, policy=policy)
        except NetworkError as pypi_error:
            raise NetworkError(
                f"cannot reach {spec.git_url} ({git_error.message}) nor the package index ({pypi_error.message})",
                next_step=f"check the network, or set {spec.source_env} to a local {spec.display} checkout or archive",
            ) from pypi_error


def _has_pypi_fallback(spec: BackendSpec, default: SourceSpec) -> bool:
    # The fallback is the pinned commit; with another --ref it would silently be other code.
    return spec.pypi_fallback and default.ref == spec.commit == LLAMA_CPP_COMMIT


def fetch_source(
    source: SourceSpec,
    *,
    spec: BackendSpec,
    cache: CacheLayout,
    env: Mapping[str, str],
    policy: RetryPolicy,
) -> FetchedSource:
    """Make ``source`` available as a CMake project root, reusing a finished fetch."""
    if source.kind == "local":
        return _use_local(Path(source.location), spec=spec, env=env)
    if source.kind == "git":
        return _fetch_git(source, spec=spec, cache=cache, env=env, policy=policy)
    if source.kind == "archive":
        return _fetch_archive(source, spec=spec, cache=cache, env=env, policy=policy)
    return _fetch_pypi(spec=spec, cache=cache, env=env, policy=policy)


def _use_local(path: Path, *, spec: BackendSpec, env: Mapping[str, str]) -> FetchedSource:
    if not (path / "CMakeLists.txt").is_file():
        raise BadInput(
            f"{path} has no CMakeLists.txt, so it is not the top of a {spec.display} source tree",
            next_step=f"point --source or {spec.source_env} at the directory that holds CMakeLists.txt",
        )
    return FetchedSource(path=path, identity=_local_identity(path, env), incremental=True)


# --- git


def _fetch_git(
    source: SourceSpec, *, spec: BackendSpec, cache: CacheLayout, env: Mapping[str, str], policy: RetryPolicy
) -> FetchedSource:
    url = source.location
    git = _Git(url=url, spec=spec, env=env, policy=policy)
    commit = source.ref if source.ref and _FULL_SHA.match(source.ref) else git.resolve(source.ref)
    identity = _git_identity(url, commit)
    final = cache.sources / f"{spec.name}-{commit}"
    finished = _read_marker(final)
    if finished is not None:
        return FetchedSource(path=final / finished, identity=identity)
    ui.say(f"fetching {spec.display} {commit[:12]} from {redact_url(url)}")

    def populate(tmp: Path) -> str:
        git.checkout(tmp, commit)
        return "."

    return FetchedSource(path=_assemble(final, identity, populate), identity=identity)


@dataclass(frozen=True, kw_only=True)
class _Git:
    """git commands against one remote, each network step retried and classified."""

    url: str
    spec: BackendSpec
    env: Mapping[str, str]
    policy: RetryPolicy

    def _argv(self, *args: str | os.PathLike[str]) -> list[str | os.PathLike[str]]:
        timeout = int(max(1.0, _net_timeout(self.env)))
        config = [
            # A stalled transfer (below 1 kB/s for the timeout) fails instead of hanging forever.
            "http.lowSpeedLimit=1000",
            f"http.lowSpeedTime={timeout}",
            "advice.detachedHead=false",
        ]
        if self.url.lower().startswith("file://"):
            # git >= 2.38.1 refuses file:// submodules (CVE-2022-39253) unless allowed; the
            # user already pointed us at this local repository, so its submodules are trusted too.
            config.append("protocol.file.allow=always")
        argv: list[str | os.PathLike[str]] = ["git"]
        for item in config:
            argv += ["-c", item]
        return [*argv, *args]

    def _run(self, *args: str | os.PathLike[str]) -> proc.Completed:
        try:
            return proc.run(self._argv(*args), env=proc.git_env(self.env))
        except CommandFailed as exc:
            raise classify_failure(exc, url=self.url, spec=self.spec) from exc

    def _net(self, what: str, *args: str | os.PathLike[str]) -> proc.Completed:
        return with_retries(
            lambda: self._run(*args),
            policy=self.policy,
            is_transient=is_transient,
            what=what,
        )

    def resolve(self, ref: str | None) -> str:
        """The commit a branch, tag or the remote HEAD names now."""
        wanted = ref or "HEAD"
        # The second pattern asks for the peeled line of an annotated tag (the commit it names).
        listing = self._net(f"looking up {wanted}", "ls-remote", self.url, wanted, f"{wanted}^{{}}").output
        found: dict[str, str] = {}
        for line in listing.splitlines():
            sha, _, name = line.partition("\t")
            if _FULL_SHA.match(sha):
                found[name.strip()] = sha
        # An annotated tag is listed twice; the peeled (^{}) line is the commit it points to.
        for name in (
            f"refs/tags/{wanted}^{{}}",
            f"refs/tags/{wanted}",
            f"refs/heads/{wanted}",
            f"{wanted}^{{}}",
            wanted,
        ):
            if name in found:
                return found[name]
        raise BadInput(
            f"{redact_url(self.url)} has no branch or tag named {wanted!r}",
            next_step="use a full 40-character commit, a tag or a branch name "
            "(an abbreviated commit cannot be fetched)",
        )

    def checkout(self, tmp: Path, commit: str) -> None:
        self._run("init", "-q", tmp)
        self._run("-C", tmp, "remote", "add", "origin", self.url)
        target = "FETCH_HEAD"
        try:
            self._net(
                f"fetching {commit[:12]}",
                "-C",
                tmp,
                "fetch",
                "-q",
                "--depth",
                "1",
                "--no-tags",
                "origin",
                commit,
            )
        except BadInput as err:
            if not _refused_by_server(err):
                raise
            # Some servers will not serve a commit by its id; fetch everything and look for it.
            ui.debug("the server refused a shallow fetch of the commit; fetching the full history")
            self._net("fetching the full history", "-C", tmp, "fetch", "-q", "--tags", "origin")
            target = commit
        try:
            self._run("-C", tmp, "checkout", "-q", "--detach", target)
        except BadInput as err:
            raise BadInput(
                f"{redact_url(self.url)} has no commit {commit}",
                next_step="check the commit id, or use a tag or branch name",
            ) from err
        head = self._run("-C", tmp, "rev-parse", "HEAD").output.split()
        if not head or head[-1] != commit:
            got = head[-1] if head else "nothing"
            raise UnclassifiedError(
                f"git checked out {got} instead of {commit} from {redact_url(self.url)}",
                next_step="rerun; if it persists, check the commit out yourself and use that directory",
            )
        if (tmp / ".gitmodules").is_file():
            ui.say("fetching submodules")
            try:
                self._net(
                    "fetching submodules",
                    "-C",
                    tmp,
                    "submodule",
                    "update",
                    "--init",
                    "--recursive",
                    "--depth",
                    "1",
                )
            except BadInput as err:
                if not _refused_by_server(err):
                    raise
                ui.debug("a submodule commit is not fetchable shallowly; fetching full submodule history")
                self._net("fetching submodules", "-C", tmp, "submodule", "update", "--init", "--recursive")


_REFUSED = re.compile(
    r"not our ref|unadvertised object|couldn't find remote ref|no such remote ref|did not contain|"
    r"direct fetching of that commit failed|reference is not a tree|not a valid object",
    re.IGNORECASE,
)


def _refused_by_server(err: SuiteError) -> bool:
    cause = err.__cause__
    return isinstance(cause, CommandFailed) and bool(_REFUSED.search(cause.output_tail))


# --- archives and PyPI


def _fetch_archive(
    source: SourceSpec, *, spec: BackendSpec, cache: CacheLayout, env: Mapping[str, str], policy: RetryPolicy
) -> FetchedSource:
    def final_for(sha256: str) -> Path:
        return cache.sources / f"{spec.name}-archive-{sha256[:16]}"

    if _is_url(source.location):
        archive = _download_path(cache, source.location)
        recorded = _recorded_sha256(archive)
        if recorded is not None and _read_marker(final_for(recorded)) is not None:
            sha256 = recorded
        else:
            sha256 = _reusable_download(archive) or _download(
                source.location, archive, spec=spec, env=env, policy=policy, expected_sha256=None
            )
    else:
        archive = Path(source.location)
        sha256 = _sha256_file(archive)
    identity = _archive_identity(source.location, sha256)
    final = final_for(sha256)
    return FetchedSource(path=_extract_into_cache(archive, final, identity, spec=spec, subdir=None), identity=identity)


def _fetch_pypi(*, spec: BackendSpec, cache: CacheLayout, env: Mapping[str, str], policy: RetryPolicy) -> FetchedSource:
    identity = pypi_identity()
    final = cache.sources / f"{spec.name}-pypi-{LLAMA_CPP_PYPI_VERSION}"
    sdist = cache.downloads / PYPI_SDIST_NAME
    if _read_marker(final) is None and _reusable_download(sdist) is None:
        url, sha256 = _find_sdist(env=env, policy=policy, spec=spec)
        _download(url, sdist, spec=spec, env=env, policy=policy, expected_sha256=sha256)
    path = _extract_into_cache(sdist, final, identity, spec=spec, subdir=LLAMA_CPP_PYPI_SUBDIR)
    return FetchedSource(path=path, identity=identity)


def index_url(env: Mapping[str, str]) -> str:
    """The simple index to ask: the suite's own variable, then pip's, then PyPI."""
    for name in (INDEX_ENV, PIP_INDEX_ENV):
        value = env.get(name, "").strip()
        if value:
            return value
    return DEFAULT_INDEX_URL


def _find_sdist(*, env: Mapping[str, str], policy: RetryPolicy, spec: BackendSpec) -> tuple[str, str]:
    """The download URL and published sha256 of the pinned sdist (PEP 691 JSON, PEP 503 HTML)."""
    project = re.sub(r"[-_.]+", "-", LLAMA_CPP_PYPI_PACKAGE).lower()
    page = index_url(env).rstrip("/") + f"/{project}/"
    next_step = _index_next_step(spec)
    timeout = _net_timeout(env)

    def query() -> tuple[bytes, str, str]:
        try:
            request = _request(page, accept=_PYPI_ACCEPT)
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (see _request)
                return response.read(), response.headers.get_content_type(), response.geturl()
        except Exception as exc:
            raise classify_failure(exc, url=page, spec=spec, next_step=next_step) from exc

    body, content_type, base = with_retries(
        query, policy=policy, is_transient=is_transient, what="querying the package index"
    )
    try:
        files = _parse_json_index(body, base) if content_type in _JSON_TYPES else _parse_html_index(body, base)
    except (ValueError, KeyError, TypeError) as exc:
        raise BadInput(
            f"{redact_url(page)} did not return a readable package index ({exc})", next_step=next_step
        ) from exc
    if PYPI_SDIST_NAME not in files:
        raise BadInput(f"{redact_url(page)} does not list {PYPI_SDIST_NAME}", next_step=next_step)
    url, sha256 = files[PYPI_SDIST_NAME]
    if not sha256:
        raise BadInput(
            f"{redact_url(page)} lists {PYPI_SDIST_NAME} without a sha256, so a download cannot be verified",
            next_step=next_step,
        )
    return _with_index_credentials(url, page), sha256.lower()


def _with_index_credentials(url: str, page: str) -> str:
    """A private index usually serves its files from the same host and wants the same login."""
    index_parts, file_parts = urlsplit(page), urlsplit(url)
    if index_parts.username is None or file_parts.username is not None:
        return url
    if (file_parts.hostname, file_parts.port) != (index_parts.hostname, index_parts.port):
        return url
    return urlunsplit(file_parts._replace(netloc=index_parts.netloc))


def _parse_json_index(body: bytes, base: str) -> dict[str, tuple[str, str | None]]:
    document = json.loads(body)
    files: dict[str, tuple[str, str | None]] = {}
    for entry in document["files"]:
        hashes = entry.get("hashes") or {}
        files[str(entry["filename"])] = (urljoin(base, str(entry["url"])), hashes.get("sha256"))
    return files


class _AnchorParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def _parse_html_index(body: bytes, base: str) -> dict[str, tuple[str, str | None]]:
    parser = _AnchorParser()
    parser.feed(body.decode("utf-8", errors="replace"))
    files: dict[str, tuple[str, str | None]] = {}
    for href in parser.hrefs:
        url = urljoin(base, href)
        parts = urlsplit(url)
        fragment = parts.fragment
        sha256 = fragment.split("=", 1)[1] if fragment.startswith("sha256=") else None
        files[unquote(posixpath.basename(parts.path))] = (urlunsplit(parts._replace(fragment="")), sha256)
    return files


def _index_next_step(spec: BackendSpec) -> str:
    return (
        f"check the network or the index ({INDEX_ENV} / {PIP_INDEX_ENV}), or set {spec.source_env} "
        f"to a local {spec.display} checkout or archive"
    )


def _download(
    url: str,
    dest: Path,
    *,
    spec: BackendSpec,
    env: Mapping[str, str],
    policy: RetryPolicy,
    expected_sha256: str | None,
) -> str:
    """Stream ``url`` to ``dest`` (via ``dest.part``), record its sha256 beside it, return it."""
    timeout = _net_timeout(env)
    next_step = _index_next_step(spec) if expected_sha256 else None
    make_dir(dest.parent)
    for stale in (dest, _sha256_path(dest)):
        _unlink(stale)  # an unverified leftover must not be mistaken for this download

    def attempt() -> str:
        try:
            return _download_once(url, dest, timeout=timeout, expected_sha256=expected_sha256)
        except SuiteError:
            raise
        except Exception as exc:
            raise classify_failure(exc, url=url, spec=spec, next_step=next_step) from exc

    return with_retries(attempt, policy=policy, is_transient=is_transient, what=f"downloading {dest.name}")


def _download_once(url: str, dest: Path, *, timeout: float, expected_sha256: str | None) -> str:
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(_request(url), timeout=timeout) as response:  # noqa: S310 (see _request)
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with (
                open(part, "wb") as out,
                ui.progress(f"downloading {dest.name}", total=total, unit="bytes") as bar,
            ):
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.advance_to(received, total)
                out.flush()
                os.fsync(out.fileno())
        if total is not None and received != total:
            raise NetworkError(
                f"the download of {redact_url(url)} stopped after {received} of {total} bytes",
            )
        sha256 = digest.hexdigest()
        if expected_sha256 is not None and sha256 != expected_sha256:
            raise BadInput(
                f"{dest.name} from {redact_url(url)} has sha256 {sha256}, but the index publishes "
                f"{expected_sha256}; the download was deleted",
                next_step="rerun later, or use another index (BITNET_PYPI_INDEX_URL) or a local source",
            )
        os.replace(part, dest)
    except BaseException:
        _unlink(part)
        raise
    write_atomic(_sha256_path(dest), (sha256 + "\n").encode("ascii"))
    return sha256


def _request(url: str, *, accept: str | None = None) -> urllib.request.Request:
    """A request with our User-Agent; credentials in the URL become Basic auth that is not
    forwarded to another host on a redirect (urllib would not use them at all otherwise).
    Only http(s) and file URLs (an index on disk, as pip allows) are opened."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in {"http", "https", "file"}:
        raise BadInput(f"cannot download {redact_url(url)}: only http, https and file URLs are supported")
    headers = {"User-Agent": f"bitnet-tasks/{__version__}"}
    if accept:
        headers["Accept"] = accept
    if parts.username is None:
        return urllib.request.Request(url, headers=headers)  # noqa: S310 (scheme checked above)
    host = parts.netloc.rsplit("@", 1)[1]
    request = urllib.request.Request(urlunsplit(parts._replace(netloc=host)), headers=headers)  # noqa: S310
    token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
    request.add_unredirected_header("Authorization", "Basic " + base64.b64encode(token).decode("ascii"))
    return request


def _net_timeout(env: Mapping[str, str]) -> float:
    raw = env.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0.0 < value < float("inf"):
        raise BadInput(
            f"{TIMEOUT_ENV}={raw!r} is not a positive number of seconds",
            next_step=f"set {TIMEOUT_ENV} to a number of seconds such as 30, or unset it",
        )
    return value


def _is_url(location: str) -> bool:
    return bool(_SCHEME.match(location))


def _download_path(cache: CacheLayout, url: str) -> Path:
    # Two URLs may end in the same file name; the URL's hash keeps their downloads apart.
    name = unquote(posixpath.basename(urlsplit(url).path)) or "archive"
    return cache.downloads / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"


def _sha256_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _recorded_sha256(path: Path) -> str | None:
    """The sha256 recorded when ``path`` finished downloading (cheap: the file is not read)."""
    try:
        recorded = _sha256_path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return recorded if re.fullmatch(r"[0-9a-f]{64}", recorded) and path.is_file() else None


def _reusable_download(path: Path) -> str | None:
    """The sha256 of a finished download that still hashes to what was recorded, else None."""
    recorded = _recorded_sha256(path)
    return recorded if recorded is not None and _sha256_file(path) == recorded else None


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise BadInput(f"cannot read the archive {path}: {exc.strerror or exc}") from exc
    return digest.hexdigest()


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise os_error(exc, path) from exc


# --- extraction


def _extract_into_cache(
    archive: Path, final: Path, identity: dict[str, str], *, spec: BackendSpec, subdir: str | None
) -> Path:
    """Extract ``archive`` into ``final`` unless a finished extraction is there; return the
    project root: ``subdir`` of the archive's single top directory, or that directory."""
    finished = _read_marker(final)
    if finished is not None:
        return final / finished

    def populate(tmp: Path) -> str:
        ui.say(f"extracting {archive.name}")
        extract_archive(archive, tmp)
        entries = [e for e in tmp.iterdir() if e.name not in {"__MACOSX"}]
        top = entries[0].name if len(entries) == 1 and entries[0].is_dir() else "."
        root = posixpath.normpath(posixpath.join(top, subdir)) if subdir else top
        if not (tmp / root / "CMakeLists.txt").is_file():
            where = f"{subdir} of the archive" if subdir else "the top of the archive (or its single directory)"
            raise BadInput(
                f"{archive.name} has no CMakeLists.txt in {where}, so it is not a {spec.display} source tree",
                next_step=f"use an archive of the {spec.display} sources",
            )
        return root

    return _assemble(final, identity, populate)


def extract_archive(archive: Path, dest: Path) -> None:
    """Extract a tar (gz/xz) or zip archive into ``dest``, refusing members that would land
    outside it (absolute paths, ``..``, links pointing out, device files)."""
    try:
        if archive.name.lower().endswith(".zip"):
            _extract_zip(archive, dest)
        else:
            _extract_tar(archive, dest)
    except SuiteError:
        raise
    except _FILTER_ERRORS as exc:
        raise _unsafe(archive, str(exc)) from exc
    except (
        tarfile.TarError,
        zipfile.BadZipFile,
        EOFError,
        lzma.LZMAError,
        zlib.error,
        gzip.BadGzipFile,
    ) as exc:
        raise BadInput(
            f"{archive} is not a valid archive ({exc})",
            next_step="download the archive again or use another source",
        ) from exc
    except OSError as exc:
        raise classify_failure(exc, url=str(archive)) from exc


_FILTER_ERRORS: tuple[type[Exception], ...] = tuple(
    e for e in (getattr(tarfile, "FilterError", None),) if isinstance(e, type) and issubclass(e, Exception)
)


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for member in members:
            _check_member_name(archive, member.name)
            if member.issym() or member.islnk():
                base = posixpath.dirname(member.name) if member.issym() else ""
                _check_member_name(archive, posixpath.join(base, member.linkname), link_of=member.name)
            elif not (member.isfile() or member.isdir()):
                raise _unsafe(archive, f"{member.name!r} is a device or FIFO, not a file")
        if hasattr(tarfile, "data_filter"):
            # The "data" filter (PEP 706) checks the same again and drops unsafe modes.
            tar.extractall(dest, members=members, filter="data")
        else:  # pragma: no cover (Python < 3.11.4 has no extraction filters)
            tar.extractall(dest, members=members)  # noqa: S202 (every member was checked above)


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zipped:
        infos = zipped.infolist()
        for info in infos:
            _check_member_name(archive, info.filename)
        for info in infos:
            target = Path(zipped.extract(info, dest))
            mode = (info.external_attr >> 16) & 0o777
            if mode & 0o111 and not info.is_dir():
                target.chmod(0o755)  # zipfile drops the executable bit that scripts need


def _check_member_name(archive: Path, name: str, *, link_of: str | None = None) -> None:
    normalized = name.replace("\\", "/")
    parts = PurePosixPath(posixpath.normpath(normalized) if link_of else normalized).parts
    if normalized.startswith("/") or re.match(r"[A-Za-z]:", normalized) or ".." in parts:
        what = f"the link {link_of!r} points to {name!r}" if link_of else f"the member {name!r}"
        raise _unsafe(archive, f"{what}, which is outside the extraction directory")


def _unsafe(archive: Path, detail: str) -> BadInput:
    return BadInput(
        f"refusing to extract {archive.name}: {detail}",
        next_step="use an archive from a trusted source; nothing from this one was installed",
    )


# --- staging into the cache


def _assemble(final: Path, identity: dict[str, str], populate: Callable[[Path], str]) -> Path:
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
        if _read_marker(final) is None:
            _remove(final)  # an unfinished tree from an older run; never reuse it
            try:
                os.replace(tmp, final)
            except OSError as exc:
                raise os_error(exc, final) from exc
        else:
            root = _read_marker(final) or root  # finished by someone else meanwhile
    except OSError as exc:
        raise os_error(exc, Path(exc.filename) if exc.filename else tmp) from exc
    finally:
        _remove(tmp)
    return final / root


def _read_marker(directory: Path) -> str | None:
    """The project root recorded in a finished tree, or None when it is not finished."""
    try:
        document = json.loads((directory / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    root = document.get("root") if isinstance(document, dict) else None
    return root if isinstance(root, str) and (directory / root).is_dir() else None


def _remove_stale_temps(final: Path) -> None:
    """Remove temporaries of ``final`` left by killed runs (their owner process is gone)."""
    for candidate in final.parent.glob(f".{final.name}.tmp-*"):
        owner = candidate.name[len(final.name) + 6 :].split("-", 1)[0]
        if not owner.isdigit() or not _process_alive(int(owner)) or int(owner) == os.getpid():
            _remove(candidate)


def _process_alive(pid: int) -> bool:
    if sys.platform == "win32":
        return False  # os.kill(pid, 0) would terminate it; the backend lock is the guard there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    except (OverflowError, OSError):
        return False
    return True


def _remove(path: Path) -> None:
    try:
        remove_tree(path)
    except OSError as exc:
        raise os_error(exc, path) from exc


# --------------------------------------------------------------------------- classification


def is_transient(exc: BaseException) -> bool:
    """Only network errors are worth retrying."""
    return isinstance(exc, NetworkError)


# Unambiguous signs of a network problem, checked first.
_GIT_NETWORK = re.compile(
    r"could not resolve host|could not resolve hostname|name or service not known|"
    r"temporary failure in name resolution|nodename nor servname|"
    r"connection refused|connection reset|connection timed out|operation timed out|timed out|"
    r"network is unreachable|no route to host|failed to connect|couldn't connect to server|"
    r"could not connect to server|gnutls_handshake\(\) failed|gnutls recv error|ssl_connect|"
    r"ssl_error_syscall|tls handshake|handshake failed|operation too slow|"
    r"returned error: (?:5\d\d|429|408)|http (?:5\d\d|429)|proxy connect aborted|kex_exchange_identification",
    re.IGNORECASE,
)
_GIT_CERTIFICATE = re.compile(
    r"certificate verification failed|ssl certificate problem|certificate verify failed|"
    r"unable to get local issuer certificate|self.signed certificate",
    re.IGNORECASE,
)
_GIT_NOT_FOUND = re.compile(
    r"repository not found|does not appear to be a git repository|not found|"
    r"couldn't find remote ref|no such remote ref|not our ref|unadvertised object|reference is not a tree|"
    r"did not match any|did not contain|invalid refspec|not a valid object name|unknown revision|"
    r"returned error: 4\d\d|not a git repository",
    re.IGNORECASE,
)
_GIT_AUTH = re.compile(
    r"could not read username|could not read password|authentication failed|permission denied \(publickey|"
    r"host key verification failed|returned error: 40[13]",
    re.IGNORECASE,
)
# Weaker signs: a connection that broke mid-transfer (also seen after some refusals, so
# checked only once the "not found" texts did not match).
_GIT_BROKEN = re.compile(
    r"early eof|the remote end hung up unexpectedly|rpc failed|transfer closed|unexpected disconnect|"
    r"connection closed by|broken pipe|could not read from remote repository",
    re.IGNORECASE,
)
_GIT_PERMISSION = re.compile(r"permission denied|read-only file system|operation not permitted", re.IGNORECASE)
_NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.ETIMEDOUT,
        errno.ENETUNREACH,
        errno.ENETDOWN,
        errno.EHOSTUNREACH,
        errno.EPIPE,
    }
)


def classify_failure(
    exc: BaseException,
    *,
    url: str | None = None,
    spec: BackendSpec | None = None,
    next_step: str | None = None,
) -> SuiteError:
    """Turn a failed git command, urllib call or file operation into the contract's error:
    NetworkError (3, the only transient one), PermissionDenied (4), BadInput (6) or
    UnclassifiedError (1). ``next_step`` replaces the network hint (e.g. for the index)."""
    where = redact_url(url) if url else "the source"
    network_step = next_step or _offline_hint(spec)
    if isinstance(exc, CommandFailed):
        return _classify_git(exc, where=where, network_step=network_step)
    if isinstance(exc, SuiteError):
        return exc
    if isinstance(exc, urllib.error.HTTPError):
        return _classify_http(exc.code, str(exc.reason), where=where, network_step=network_step)
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        if isinstance(reason, BaseException):
            return classify_failure(reason, url=url, spec=spec, next_step=next_step)
        return BadInput(f"cannot open {where}: {reason}", next_step="check the URL")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _certificate_error(where, str(getattr(exc, "verify_message", None) or exc))
    if isinstance(exc, (ssl.SSLError, socket.gaierror, socket.herror, TimeoutError, ConnectionError, HTTPException)):
        return NetworkError(f"cannot reach {where}: {_describe(exc)}", next_step=network_step)
    if isinstance(exc, (tarfile.TarError, zipfile.BadZipFile, EOFError, lzma.LZMAError, zlib.error, gzip.BadGzipFile)):
        return BadInput(f"{where} is not a valid archive ({exc})", next_step="use another archive or source")
    if isinstance(exc, OSError):
        if exc.errno in PERMISSION_ERRNOS:
            return os_error(exc, Path(exc.filename) if exc.filename else Path(where))
        if exc.errno in _NETWORK_ERRNOS:
            return NetworkError(f"cannot reach {where}: {_describe(exc)}", next_step=network_step)
        if exc.errno == errno.ENOSPC:
            return UnclassifiedError(
                f"no space left on the device while fetching {where}",
                next_step="free some disk space (or point BITNET_CACHE_DIR elsewhere) and rerun",
            )
    return UnclassifiedError(f"fetching {where} failed: {_describe(exc)}")


def _classify_git(exc: CommandFailed, *, where: str, network_step: str) -> SuiteError:
    text = exc.output_tail
    reason = _git_reason(text)
    if _GIT_CERTIFICATE.search(text):
        return _certificate_error(where, reason)
    if _GIT_NETWORK.search(text):
        return NetworkError(f"cannot reach {where}: {reason}", next_step=network_step)
    if _GIT_AUTH.search(text):
        return BadInput(
            f"{where} does not exist or needs credentials: {reason}",
            next_step="check the URL; for a private repository set up git credentials or an SSH key",
        )
    if _GIT_NOT_FOUND.search(text):
        return BadInput(
            f"git could not find what was asked for at {where}: {reason}",
            next_step="check the URL and the ref",
        )
    if _GIT_BROKEN.search(text):
        return NetworkError(f"the connection to {where} broke: {reason}", next_step=network_step)
    if _GIT_PERMISSION.search(text):
        return PermissionDenied(f"git cannot write into the cache: {reason}")
    if "no space left on device" in text.lower():
        return UnclassifiedError(
            f"no space left on the device while fetching {where}",
            next_step="free some disk space (or point BITNET_CACHE_DIR elsewhere) and rerun",
        )
    return UnclassifiedError(f"git failed on {where}: {reason}", log_path=exc.log_path)


def _classify_http(code: int, reason: str, *, where: str, network_step: str) -> SuiteError:
    if code >= 500 or code in {408, 429}:
        return NetworkError(f"{where} answered HTTP {code} {reason}", next_step=network_step)
    if code in {404, 410}:
        return BadInput(f"{where} was not found (HTTP {code})", next_step="check the URL, the index or the version")
    if code in {401, 403, 407}:
        return BadInput(
            f"{where} refused access (HTTP {code} {reason})",
            next_step="check the URL and the credentials for it",
        )
    if 400 <= code < 500:
        return BadInput(f"{where} rejected the request (HTTP {code} {reason})", next_step="check the URL")
    return UnclassifiedError(f"{where} answered HTTP {code} {reason}")


def _certificate_error(where: str, reason: str) -> SuiteError:
    # Not transient: retrying will not fix a certificate the system does not trust.
    return UnclassifiedError(
        f"the TLS certificate of {where} was not accepted: {reason}",
        next_step="install the CA certificates your network needs (SSL_CERT_FILE, a proxy's CA), or use a local source",
    )


_GIT_GENERIC = re.compile(
    r"could not read from remote repository|the remote end hung up unexpectedly|early eof|"
    r"fetch-pack: invalid index-pack output",
    re.IGNORECASE,
)


def _git_reason(text: str) -> str:
    """The most telling line of git's output: its first specific fatal (or error) line, without
    the prefix and without the URL git repeats (the message names it already)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    candidates = [
        line.split(":", 1)[1].strip()
        for prefix in ("fatal:", "error:")
        for line in lines
        if line.lower().startswith(prefix)
    ]
    specific = [c for c in candidates if not _GIT_GENERIC.search(c)]
    reason = (specific or candidates or lines[-1:] or ["no output"])[0]
    return re.sub(r"^unable to access '[^']*': ", "", reason)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _offline_hint(spec: BackendSpec | None) -> str:
    if spec is None:
        return NetworkError.default_next_step
    if spec.pypi_fallback:
        return f"check the network, or work offline: set {spec.source_env}=pypi or to a local {spec.display} checkout"
    return f"check the network, or set {spec.source_env} to a local {spec.display} checkout or archive"
