"""Turning a failed fetch into one of the suite's errors, and which of those are worth retrying.

git reports failures only as text, so its output is matched against the phrases git, curl,
OpenSSH and the common hosts print; urllib and the file system raise typed exceptions. Only a
:class:`~bitnet_crossval.errors.NetworkError` is transient: a missing repository, a refused login or an
untrusted certificate will not change by trying again.
"""

from __future__ import annotations

import errno
import gzip
import lzma
import re
import socket
import ssl
import tarfile
import urllib.error
import zipfile
import zlib
from http.client import HTTPException
from pathlib import Path

from bitnet_crossval.backends.specs import BackendSpec
from bitnet_crossval.errors import (
    BadInput,
    CommandFailed,
    NetworkError,
    PermissionDenied,
    SuiteError,
    UnclassifiedError,
)
from bitnet_crossval.provision.sources.spec import redact_url
from bitnet_crossval.util.files import PERMISSION_ERRNOS, os_error

# What the tarfile, zipfile and decompression modules raise for a truncated or corrupt archive.
ARCHIVE_ERRORS: tuple[type[Exception], ...] = (
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
    lzma.LZMAError,
    zlib.error,
    gzip.BadGzipFile,
)

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
# What a server says when it will not hand out a commit (or a ref that names none): for a
# shallow fetch by id this means "try a full fetch"; after that, the commit is not there.
_GIT_REFUSED_COMMIT = (
    r"not our ref|unadvertised object|couldn't find remote ref|no such remote ref|did not contain|"
    r"direct fetching of that commit failed|reference is not a tree|not a valid object"
)
_GIT_REFUSED = re.compile(_GIT_REFUSED_COMMIT, re.IGNORECASE)
_GIT_NOT_FOUND = re.compile(
    r"repository not found|does not appear to be a git repository|not found|"
    + _GIT_REFUSED_COMMIT
    + r"|did not match any|invalid refspec|unknown revision|returned error: 4\d\d|not a git repository",
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
# Lines git prints after the real reason; a reason of their own only when nothing else is said.
_GIT_GENERIC = re.compile(
    r"could not read from remote repository|the remote end hung up unexpectedly|early eof|"
    r"fetch-pack: invalid index-pack output",
    re.IGNORECASE,
)
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


def describe_archive_error(exc: BaseException) -> str:
    """A one-line reason for a broken archive (tarfile lists one line per method it tried)."""
    text = str(exc).strip()
    if isinstance(exc, tarfile.ReadError) and "\n" in text:
        return "it is not a gzip, bzip2, xz or plain tar file"
    return " ".join(text.split()) or type(exc).__name__


def server_refused_commit(output: str) -> bool:
    """Whether git's output says the server will not serve the commit that was asked for."""
    return bool(_GIT_REFUSED.search(output))


def is_transient(exc: BaseException) -> bool:
    """Only network errors are worth retrying."""
    return isinstance(exc, NetworkError)


def classify_failure(
    exc: BaseException,
    *,
    url: str | None = None,
    spec: BackendSpec | None = None,
    next_step: str | None = None,
) -> SuiteError:
    """Turn a failed git command, urllib call or file operation into one of the suite's errors:
    NetworkError (3, the only transient one), PermissionDenied (4), BadInput (6) or
    UnclassifiedError (1). ``next_step`` replaces the network hint (e.g. for the index)."""
    where = redact_url(url) if url else "the source"
    network_step = next_step or offline_hint(spec)
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
    if isinstance(exc, ARCHIVE_ERRORS):
        return BadInput(
            f"{where} is not a valid archive ({describe_archive_error(exc)})", next_step="use another archive or source"
        )
    if isinstance(exc, OSError):
        if exc.errno in PERMISSION_ERRNOS:
            return os_error(exc, Path(exc.filename) if exc.filename else Path(where))
        if exc.errno in _NETWORK_ERRNOS:
            return NetworkError(f"cannot reach {where}: {_describe(exc)}", next_step=network_step)
        if exc.errno == errno.ENOSPC:
            return _no_space(where)
    return UnclassifiedError(f"fetching {where} failed: {_describe(exc)}")


def offline_hint(spec: BackendSpec | None, *, offer_pypi: bool = True) -> str:
    """The next step after a network error: the ways to work without that host."""
    if spec is None:
        return NetworkError.default_next_step
    if offer_pypi and spec.pypi_fallback:
        return f"check the network, or work offline: set {spec.source_env}=pypi or to a local {spec.display} checkout"
    return f"check the network, or set {spec.source_env} to a local {spec.display} checkout or archive"


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
        return _no_space(where)
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


def _no_space(where: str) -> SuiteError:
    return UnclassifiedError(
        f"no space left on the device while fetching {where}",
        next_step="free some disk space (or point BITNET_CACHE_DIR elsewhere) and rerun",
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
