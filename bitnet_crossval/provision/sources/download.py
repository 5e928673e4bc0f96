"""HTTP downloads with progress and a recorded sha256, and finding the pinned llama.cpp sdist
on a PEP 503 / PEP 691 simple index (PyPI, or the one ``BITNET_PYPI_INDEX_URL`` /
``PIP_INDEX_URL`` names). Every network call is retried for transient failures and every
failure is classified (:mod:`bitnet_crossval.provision.sources.classify`)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import posixpath
import re
import urllib.request
from collections.abc import Callable, Mapping
from html.parser import HTMLParser
from pathlib import Path
from typing import TypeVar
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

from bitnet_crossval import __version__
from bitnet_crossval.backends.specs import LLAMA_CPP_PYPI_PACKAGE, BackendSpec
from bitnet_crossval.errors import BadInput, NetworkError, SuiteError
from bitnet_crossval.provision.sources.classify import classify_failure, is_transient
from bitnet_crossval.provision.sources.spec import PYPI_SDIST_NAME, redact_url
from bitnet_crossval.util import ui
from bitnet_crossval.util.files import file_sha256, make_dir, os_error, write_atomic
from bitnet_crossval.util.retry import RetryPolicy, net_timeout, with_retries

T = TypeVar("T")

DEFAULT_INDEX_URL = "https://pypi.org/simple"
INDEX_ENV = "BITNET_PYPI_INDEX_URL"
PIP_INDEX_ENV = "PIP_INDEX_URL"

_CHUNK = 1 << 20
_PYPI_ACCEPT = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"
_JSON_TYPES = frozenset({"application/vnd.pypi.simple.v1+json", "application/json"})


# --------------------------------------------------------------------------- the package index


def index_url(env: Mapping[str, str]) -> str:
    """The simple index to ask: the suite's own variable, then pip's, then PyPI. A value that is
    not an http(s) or file URL is bad input naming its variable (not the command's arguments)."""
    for name in (INDEX_ENV, PIP_INDEX_ENV):
        value = env.get(name, "").strip()
        if value:
            try:
                parts = urlsplit(value)
                scheme, host, shown = parts.scheme.lower(), parts.hostname, redact_url(value)
            except ValueError:  # "http://[::1": an unbalanced IPv6 bracket
                scheme, host, shown = "", None, value
            if scheme not in {"http", "https", "file"} or (scheme != "file" and not host):
                raise BadInput(
                    f"{name}={shown!r} is not an http, https or file URL of a package index",
                    next_step=f"set {name} to a simple index such as {DEFAULT_INDEX_URL}, or unset it",
                )
            return value
    return DEFAULT_INDEX_URL


def index_next_step(spec: BackendSpec) -> str:
    return (
        f"check the network or the index ({INDEX_ENV} / {PIP_INDEX_ENV}), or set {spec.source_env} "
        f"to a local {spec.display} checkout or archive"
    )


def find_sdist(*, env: Mapping[str, str], policy: RetryPolicy, spec: BackendSpec) -> tuple[str, str]:
    """The download URL and published sha256 of the pinned llama-cpp-python sdist."""
    return find_on_index(
        LLAMA_CPP_PYPI_PACKAGE, PYPI_SDIST_NAME, env=env, policy=policy, spec=spec, next_step=index_next_step(spec)
    )


def find_on_index(
    project_name: str,
    filename: str,
    *,
    env: Mapping[str, str],
    policy: RetryPolicy,
    spec: BackendSpec | None,
    next_step: str,
) -> tuple[str, str]:
    """The download URL and published sha256 of one file of a project on the simple index
    (PEP 691 JSON, PEP 503 HTML)."""
    project = re.sub(r"[-_.]+", "-", project_name).lower()
    page = index_url(env).rstrip("/") + f"/{project}/"
    timeout = net_timeout(env)

    def query() -> tuple[bytes, str, str]:
        with urllib.request.urlopen(_request(page, accept=_PYPI_ACCEPT), timeout=timeout) as response:  # noqa: S310 (see _request)
            return response.read(), response.headers.get_content_type(), response.geturl()

    body, content_type, base = _with_network_retries(
        query, url=page, spec=spec, next_step=next_step, policy=policy, what="querying the package index"
    )
    try:
        files = _parse_json_index(body, base) if content_type in _JSON_TYPES else _parse_html_index(body, base)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise BadInput(
            f"{redact_url(page)} did not return a readable package index ({exc})", next_step=next_step
        ) from exc
    if filename not in files:
        raise BadInput(f"{redact_url(page)} does not list {filename}", next_step=next_step)
    url, sha256 = files[filename]
    if not sha256:
        raise BadInput(
            f"{redact_url(page)} lists {filename} without a sha256, so a download cannot be verified",
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


# --------------------------------------------------------------------------- downloading


def download(
    url: str,
    dest: Path,
    *,
    spec: BackendSpec | None,
    env: Mapping[str, str],
    policy: RetryPolicy,
    expected_sha256: str | None,
    next_step: str | None = None,
) -> str:
    """Stream ``url`` to ``dest`` (via ``dest.part``), record its sha256 beside it, return it."""
    timeout = net_timeout(env)
    if next_step is None and expected_sha256 and spec is not None:
        next_step = index_next_step(spec)
    make_dir(dest.parent)
    for stale in (dest, _sha256_path(dest)):
        _unlink(stale)  # an unverified leftover must not be mistaken for this download
    return _with_network_retries(
        lambda: _download_once(url, dest, timeout=timeout, expected_sha256=expected_sha256),
        url=url,
        spec=spec,
        next_step=next_step,
        policy=policy,
        what=f"downloading {dest.name}",
    )


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


def _with_network_retries(
    call: Callable[[], T],
    *,
    url: str,
    spec: BackendSpec | None,
    next_step: str | None,
    policy: RetryPolicy,
    what: str,
) -> T:
    """``call()``, its failures classified (our own errors pass through) and retried while transient."""

    def attempt() -> T:
        try:
            return call()
        except SuiteError:
            raise
        except Exception as exc:
            raise classify_failure(exc, url=url, spec=spec, next_step=next_step) from exc

    return with_retries(attempt, policy=policy, is_transient=is_transient, what=what)


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


# --------------------------------------------------------------------------- finished downloads


def recorded_sha256(path: Path) -> str | None:
    """The sha256 recorded when ``path`` finished downloading (cheap: the file is not read)."""
    try:
        recorded = _sha256_path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return recorded if re.fullmatch(r"[0-9a-f]{64}", recorded) and path.is_file() else None


def reusable_download(path: Path) -> str | None:
    """The sha256 of a finished download that still hashes to what was recorded, else None."""
    recorded = recorded_sha256(path)
    return recorded if recorded is not None and sha256_file(path) == recorded else None


def sha256_file(path: Path) -> str:
    try:
        return file_sha256(path)
    except OSError as exc:
        raise BadInput(f"cannot read the archive {path}: {exc.strerror or exc}") from exc


def _sha256_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        raise os_error(exc, path) from exc
