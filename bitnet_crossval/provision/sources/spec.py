"""Source strings: what ``--source`` or a backend's ``*_SOURCE`` variable may say, and the
values a parsed or fetched source is described by. Pure: nothing here touches the network
or the cache."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit
from urllib.request import url2pathname

from bitnet_crossval.backends.specs import LLAMA_CPP_COMMIT, LLAMA_CPP_PYPI_PACKAGE, LLAMA_CPP_PYPI_VERSION, BackendSpec
from bitnet_crossval.errors import BadInput

SourceKind = Literal["local", "git", "archive", "pypi"]

PYPI_KEYWORD = "pypi"
PYPI_REQUIREMENT = f"{LLAMA_CPP_PYPI_PACKAGE}=={LLAMA_CPP_PYPI_VERSION}"
PYPI_SDIST_NAME = f"{LLAMA_CPP_PYPI_PACKAGE.replace('-', '_')}-{LLAMA_CPP_PYPI_VERSION}.tar.gz"

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.xz", ".zip")
GIT_SCHEMES = frozenset({"https", "http", "ssh", "git", "file"})

FULL_SHA = re.compile(r"[0-9a-f]{40}\Z")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
# git's scp-like syntax "[user@]host:path"; a host of one letter would be a Windows drive.
_SCP_LIKE = re.compile(r"(?:[^@/\\:\s]+@)?[^@/\\:\s-][^@/\\:\s]+:(?!//)\S+\Z")
_BAD_REF = re.compile(r"[\s~^:?*\[\\\x00-\x1f\x7f]|\.\.|//|@\{|^[-/.]|[/.]$|\.lock$")


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
        ref = _check_ref(ref.strip())
    _refuse_control_characters(raw, spec=spec)
    if raw.lower() == PYPI_KEYWORD:
        return _parse_pypi(spec=spec, ref=ref)
    scheme = _SCHEME.match(raw)
    if scheme:
        return _parse_url(raw, scheme.group(1).lower(), spec=spec, ref=ref)
    if "::" in raw.split("/", 1)[0] and not Path(raw).expanduser().exists():
        # git's "<transport>::<address>" form (ext::, fd::, a remote helper) runs programs.
        raise BadInput(
            f"the source {raw!r} uses git's <transport>::<address> form, which the suite does not run",
            next_step=_source_forms(spec),
        )
    if _SCP_LIKE.match(raw) and not Path(raw).expanduser().exists():
        url, _, at_ref = _split_ref(raw, raw.index(":") + 1)
        _refuse_option_like_host(raw.split(":", 1)[0].rsplit("@", 1)[-1], raw, spec=spec)
        return SourceSpec(kind="git", location=url, ref=ref or _check_ref(at_ref))
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
            raise _ref_on_archive()
        if scheme == "file":
            return _parse_path(Path(url2pathname(parts.path)), spec=spec, ref=None)
        if scheme not in {"http", "https"}:
            raise BadInput(f"archives can be downloaded over http(s) only, not {raw!r}", next_step=_source_forms(spec))
        return SourceSpec(kind="archive", location=raw)
    path_start = raw.find("/", len(scheme) + 3)
    url, _, at_ref = _split_ref(raw, path_start if path_start >= 0 else len(raw))
    if not urlsplit(url).netloc and scheme != "file":
        raise BadInput(f"the git URL {raw!r} names no host", next_step=_source_forms(spec))
    _refuse_option_like_host(urlsplit(url).netloc.rsplit("@", 1)[-1], raw, spec=spec)
    if scheme == "file":
        check_local_git_url(url, spec=spec, must_exist=False)
    return SourceSpec(kind="git", location=url, ref=ref or _check_ref(at_ref))


def check_local_git_url(url: str, *, spec: BackendSpec, must_exist: bool) -> None:
    """A ``file://`` git source must name a directory: nothing about it is a network problem,
    so it is checked here rather than left to a retried git call."""
    local = Path(url2pathname(urlsplit(url).path))
    if local.is_dir() or (not must_exist and not local.exists()):
        return
    what = "does not exist" if not local.exists() else "is not a directory"
    raise BadInput(
        f"the source {url!r} names {local}, which {what}: a file:// source must be a git repository or an archive",
        next_step=_source_forms(spec),
    )


def _refuse_control_characters(raw: str, *, spec: BackendSpec) -> None:
    bad = next((c for c in raw if ord(c) < 0x20 or ord(c) == 0x7F), None)
    if bad is not None:
        kind = "a line break" if bad in "\r\n" else f"the control character {bad!r}"
        raise BadInput(f"the source for {spec.display} contains {kind}", next_step=_source_forms(spec))
    if ";" in raw and (_SCHEME.match(raw) or _SCP_LIKE.match(raw)) and not Path(raw).expanduser().exists():
        raise BadInput(
            f"the source URL {raw!r} contains ';', which no git host uses and the suite does not pass on",
            next_step=_source_forms(spec),
        )


def _refuse_option_like_host(host: str, raw: str, *, spec: BackendSpec) -> None:
    # ssh://-oProxyCommand=... would reach ssh as an option (CVE-2017-1000117).
    if host.startswith("-"):
        raise BadInput(f"the source URL {raw!r} names a host starting with '-'", next_step=_source_forms(spec))


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
            raise _ref_on_archive()
        return SourceSpec(kind="archive", location=str(path.resolve()))
    raise BadInput(
        f"{path} is neither a directory nor an archive ({', '.join(ARCHIVE_SUFFIXES)})",
        next_step=_source_forms(spec),
    )


def _ref_on_archive() -> BadInput:
    return BadInput("--ref applies to git sources, not to an archive", next_step="drop --ref")


def _check_ref(ref: str | None) -> str | None:
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


def is_url(location: str) -> bool:
    """Whether ``location`` starts with ``scheme://`` (else it is a path)."""
    return bool(_SCHEME.match(location))


def redact_url(url: str) -> str:
    """The URL without a password, for messages and identities."""
    parts = urlsplit(url) if is_url(url) else None
    if parts is None or parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
