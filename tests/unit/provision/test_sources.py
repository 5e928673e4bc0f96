from __future__ import annotations

import dataclasses
import errno
import hashlib
import http.client
import socket
import ssl
import tarfile
import urllib.error
import zipfile
from email.message import Message
from pathlib import Path

import pytest

from bitnet_crossval.backends.specs import BITNET, LLAMA, LLAMA_CPP_COMMIT
from bitnet_crossval.errors import (
    BadInput,
    CommandFailed,
    NetworkError,
    PermissionDenied,
    SuiteError,
    UnclassifiedError,
)
from bitnet_crossval.provision import sources
from bitnet_crossval.provision.sources import (
    FetchedSource,
    SourceSpec,
    classify_failure,
    fetch_default_or,
    identify_source,
    parse_source,
)
from bitnet_crossval.provision.sources import fetch as sources_fetch
from bitnet_crossval.provision.sources.staging import MARKER_NAME
from bitnet_crossval.store.layout import CacheLayout
from bitnet_crossval.util.retry import RetryPolicy

SHA = "0123456789abcdef0123456789abcdef01234567"
# Identities that need no download never look at the cache.
NO_CACHE = CacheLayout(Path("/nonexistent-cache"))


# --------------------------------------------------------------------------- parse_source


@pytest.mark.parametrize(
    ("text", "ref", "expected"),
    [
        ("pypi", None, SourceSpec(kind="pypi", location="llama-cpp-python==0.3.36")),
        (" PyPI ", None, SourceSpec(kind="pypi", location="llama-cpp-python==0.3.36")),
        (
            "https://github.com/ggml-org/llama.cpp",
            None,
            SourceSpec(kind="git", location="https://github.com/ggml-org/llama.cpp"),
        ),
        (
            "https://github.com/ggml-org/llama.cpp@b4500",
            None,
            SourceSpec(kind="git", location="https://github.com/ggml-org/llama.cpp", ref="b4500"),
        ),
        (
            f"https://github.com/ggml-org/llama.cpp@{SHA.upper()}",
            None,
            SourceSpec(kind="git", location="https://github.com/ggml-org/llama.cpp", ref=SHA),
        ),
        (
            "https://github.com/ggml-org/llama.cpp@b4500",
            "feature/x",
            SourceSpec(kind="git", location="https://github.com/ggml-org/llama.cpp", ref="feature/x"),
        ),
        (
            "https://user:token@example.com/repo.git@v1",
            None,
            SourceSpec(kind="git", location="https://user:token@example.com/repo.git", ref="v1"),
        ),
        ("http://example.com/x.git", None, SourceSpec(kind="git", location="http://example.com/x.git")),
        (
            "ssh://git@github.com/org/repo.git@v1.2",
            None,
            SourceSpec(kind="git", location="ssh://git@github.com/org/repo.git", ref="v1.2"),
        ),
        (
            "git@github.com:org/repo.git",
            None,
            SourceSpec(kind="git", location="git@github.com:org/repo.git"),
        ),
        (
            "git@github.com:org/repo.git@main",
            None,
            SourceSpec(kind="git", location="git@github.com:org/repo.git", ref="main"),
        ),
        ("file:///srv/repo.git@" + SHA, None, SourceSpec(kind="git", location="file:///srv/repo.git", ref=SHA)),
        (
            "https://example.com/dl/llama.tar.gz",
            None,
            SourceSpec(kind="archive", location="https://example.com/dl/llama.tar.gz"),
        ),
        (
            "https://example.com/dl/llama.zip?token=1",
            None,
            SourceSpec(kind="archive", location="https://example.com/dl/llama.zip?token=1"),
        ),
        ("http://example.com/a.TGZ", None, SourceSpec(kind="archive", location="http://example.com/a.TGZ")),
        ("http://example.com/a.tar.xz", None, SourceSpec(kind="archive", location="http://example.com/a.tar.xz")),
    ],
)
def test_parse_source_kinds(text: str, ref: str | None, expected: SourceSpec) -> None:
    assert parse_source(text, spec=LLAMA, ref=ref) == expected


def test_parse_local_directory_is_absolute_and_normalised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "llama.cpp"
    tree.mkdir()
    monkeypatch.chdir(tmp_path)
    for text in ("llama.cpp", "./llama.cpp/", str(tree), f"{tmp_path}/x/../llama.cpp"):
        (tmp_path / "x").mkdir(exist_ok=True)
        assert parse_source(text, spec=BITNET) == SourceSpec(kind="local", location=str(tree.resolve()))


@pytest.mark.parametrize("name", ["src.tar.gz", "src.tgz", "src.tar.xz", "src.zip"])
def test_parse_local_archive_and_file_url(tmp_path: Path, name: str) -> None:
    archive = tmp_path / name
    archive.write_bytes(b"not inspected while parsing")
    expected = SourceSpec(kind="archive", location=str(archive.resolve()))
    assert parse_source(str(archive), spec=LLAMA) == expected
    assert parse_source(archive.as_uri(), spec=LLAMA) == expected


@pytest.mark.parametrize(
    ("text", "ref", "spec", "fragment"),
    [
        ("", None, LLAMA, "empty"),
        ("   ", None, LLAMA, "empty"),
        ("pypi", None, BITNET, "only for llama.cpp"),
        ("pypi", "v1", LLAMA, "--ref"),
        ("ftp://example.com/x.git", None, LLAMA, "scheme"),
        ("ssh://host/x.tar.gz", None, LLAMA, "http(s)"),
        ("https:///no-host.git", None, LLAMA, "no host"),
        ("https://example.com/x.git@", None, LLAMA, "not a valid git ref"),
        ("https://example.com/x.git@-upload-pack=evil", None, LLAMA, "not a valid git ref"),
        ("https://example.com/x.git@a..b", None, LLAMA, "not a valid git ref"),
        ("https://example.com/x.git", "has space", LLAMA, "not a valid git ref"),
        ("https://example.com/x.git", "branch.lock", LLAMA, "not a valid git ref"),
        ("https://example.com/x.git", "--output=/etc/passwd", LLAMA, "not a valid git ref"),
        ("https://example.com/a.tar.gz", "v1", LLAMA, "--ref"),
        ("/definitely/not/here", None, LLAMA, "does not exist"),
    ],
)
def test_parse_source_rejects_bad_input(text: str, ref: str | None, spec, fragment: str) -> None:
    with pytest.raises(BadInput) as info:
        parse_source(text, spec=spec, ref=ref)
    assert info.value.exit_code == 6
    assert fragment in info.value.message
    assert "\n" not in info.value.message


def test_parse_rejects_ref_for_directory_and_plain_file(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="--ref"):
        parse_source(str(tmp_path), spec=LLAMA, ref="v1")
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(BadInput, match="neither a directory nor an archive"):
        parse_source(str(notes), spec=LLAMA)


def test_bitnet_pypi_error_names_its_variable() -> None:
    with pytest.raises(BadInput) as info:
        parse_source("pypi", spec=BITNET)
    assert "BITNET_CPP_SOURCE" in info.value.next_step


# --------------------------------------------------------------------------- classification


def git_failure(tail: str) -> CommandFailed:
    return CommandFailed(["git", "fetch"], 128, tail)


URL = "https://github.com/ggml-org/llama.cpp"

GIT_CASES = [
    (f"fatal: unable to access '{URL}/': Could not resolve host: github.com", NetworkError),
    (
        f"fatal: unable to access '{URL}/': Failed to connect to 127.0.0.1 port 9 after 0 ms: "
        "Couldn't connect to server",
        NetworkError,
    ),
    (
        "ssh: connect to host github.com port 22: Connection refused\n"
        "fatal: Could not read from remote repository.\n\n"
        "Please make sure you have the correct access rights\nand the repository exists.",
        NetworkError,
    ),
    (f"fatal: unable to access '{URL}/': Connection timed out after 300001 milliseconds", NetworkError),
    (f"fatal: unable to access '{URL}/': Recv failure: Connection reset by peer", NetworkError),
    (
        f"fatal: unable to access '{URL}/': Failed to connect to github.com port 443: Network is unreachable",
        NetworkError,
    ),
    (
        f"fatal: unable to access '{URL}/': gnutls_handshake() failed: The TLS connection was non-properly terminated.",
        NetworkError,
    ),
    ("error: RPC failed; HTTP 503 curl 22 The requested URL returned error: 503", NetworkError),
    (f"fatal: unable to access '{URL}/': The requested URL returned error: 429", NetworkError),
    (
        "error: RPC failed; curl 56 GnuTLS recv error (-9): Error decoding the received TLS packet.\n"
        "fatal: early EOF\nfatal: fetch-pack: invalid index-pack output",
        NetworkError,
    ),
    ("fatal: the remote end hung up unexpectedly\nfatal: early EOF", NetworkError),
    (f"remote: Repository not found.\nfatal: repository '{URL}/' not found", BadInput),
    ("fatal: could not read Username for 'https://github.com': terminal prompts disabled", BadInput),
    ("git@github.com: Permission denied (publickey).\nfatal: Could not read from remote repository.", BadInput),
    (
        "fatal: '/tmp/nothing.git' does not appear to be a git repository\n"
        "fatal: Could not read from remote repository.",
        BadInput,
    ),
    ("fatal: couldn't find remote ref refs/heads/nope", BadInput),
    (f"fatal: remote error: upload-pack: not our ref {SHA}", BadInput),
    (f"fatal: unable to access '{URL}/': The requested URL returned error: 404", BadInput),
    (f"fatal: reference is not a tree: {SHA}", BadInput),
    (
        f"fatal: unable to access '{URL}/': server certificate verification failed. CAfile: none CRLfile: none",
        UnclassifiedError,
    ),
    (
        f"fatal: unable to access '{URL}/': SSL certificate problem: unable to get local issuer certificate",
        UnclassifiedError,
    ),
    ("error: could not lock config file /cache/src/.git/config: Permission denied", PermissionDenied),
    ("fatal: cannot mkdir /cache/src: Read-only file system", PermissionDenied),
    ("fatal: something nobody has seen before", UnclassifiedError),
]


@pytest.mark.parametrize(("tail", "expected"), GIT_CASES)
def test_classify_git_output(tail: str, expected: type[SuiteError]) -> None:
    error = classify_failure(git_failure(tail), url=URL, spec=LLAMA)
    assert type(error) is expected
    assert sources.is_transient(error) == (expected is NetworkError)
    assert URL in error.message or expected is PermissionDenied
    assert "\n" not in error.message


def test_network_error_message_and_next_step() -> None:
    tail = f"fatal: unable to access '{URL}/': Could not resolve host: github.com"
    llama = classify_failure(git_failure(tail), url=URL, spec=LLAMA)
    assert llama.message == f"cannot reach {URL}: Could not resolve host: github.com"
    assert llama.exit_code == 3
    assert "LLAMA_CPP_SOURCE=pypi" in llama.next_step
    bitnet = classify_failure(git_failure(tail), url=URL, spec=BITNET)
    assert "BITNET_CPP_SOURCE" in bitnet.next_step and "pypi" not in bitnet.next_step


def test_credentials_never_reach_messages() -> None:
    url = "https://user:s3cret@example.com/repo.git"
    error = classify_failure(git_failure("fatal: Could not resolve host: example.com"), url=url, spec=LLAMA)
    assert "s3cret" not in error.message
    assert "user:***@example.com" in error.message


def http_error(code: int) -> urllib.error.HTTPError:
    return urllib.error.HTTPError("https://pypi.org/simple/x/", code, "reason", Message(), None)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (http_error(500), NetworkError),
        (http_error(502), NetworkError),
        (http_error(503), NetworkError),
        (http_error(429), NetworkError),
        (http_error(408), NetworkError),
        (http_error(404), BadInput),
        (http_error(410), BadInput),
        (http_error(403), BadInput),
        (http_error(401), BadInput),
        (http_error(400), BadInput),
        (urllib.error.URLError(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")), NetworkError),
        (urllib.error.URLError(socket.gaierror(-2, "Name or service not known")), NetworkError),
        (urllib.error.URLError(TimeoutError("timed out")), NetworkError),
        (urllib.error.URLError(ssl.SSLError(1, "[SSL] handshake failure")), NetworkError),
        (urllib.error.URLError(ssl.SSLCertVerificationError(1, "certificate verify failed")), UnclassifiedError),
        (urllib.error.URLError("unknown url type: gopher"), BadInput),
        (TimeoutError("The read operation timed out"), NetworkError),
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), NetworkError),
        (http.client.IncompleteRead(b"", 10), NetworkError),
        (http.client.RemoteDisconnected("Remote end closed connection"), NetworkError),
        (OSError(errno.ENETUNREACH, "Network is unreachable"), NetworkError),
        (OSError(errno.EACCES, "Permission denied", "/cache/downloads/x.part"), PermissionDenied),
        (OSError(errno.EROFS, "Read-only file system", "/cache/downloads/x.part"), PermissionDenied),
        (OSError(errno.EPERM, "Operation not permitted", "/cache/x"), PermissionDenied),
        (OSError(errno.ENOSPC, "No space left on device"), UnclassifiedError),
        (tarfile.ReadError("file could not be opened successfully"), BadInput),
        (zipfile.BadZipFile("File is not a zip file"), BadInput),
        (ValueError("a bug"), UnclassifiedError),
    ],
)
def test_classify_python_errors(exc: BaseException, expected: type[SuiteError]) -> None:
    error = classify_failure(exc, url="https://pypi.org/simple/x/", spec=LLAMA)
    assert type(error) is expected
    assert sources.is_transient(error) == (expected is NetworkError)


def test_permission_error_names_the_path() -> None:
    error = classify_failure(OSError(errno.EACCES, "Permission denied", "/cache/downloads/x.part"))
    assert error.exit_code == 4
    assert "/cache/downloads/x.part" in error.message


def test_suite_errors_pass_through_unchanged() -> None:
    original = BadInput("already classified")
    assert classify_failure(original) is original


# --------------------------------------------------------------------------- identity


def test_git_identity_known_only_for_a_full_commit() -> None:
    pinned = parse_source(f"https://example.com/x.git@{SHA}", spec=LLAMA)
    first = identify_source(pinned, spec=LLAMA, env={}, cache=NO_CACHE)
    assert first == {"kind": "git", "location": "https://example.com/x.git", "commit": SHA}
    assert identify_source(pinned, spec=LLAMA, env={}, cache=NO_CACHE) == first
    assert (
        identify_source(parse_source("https://example.com/x.git@v1", spec=LLAMA), spec=LLAMA, env={}, cache=NO_CACHE)
        is None
    )
    assert (
        identify_source(parse_source("https://example.com/x.git", spec=LLAMA), spec=LLAMA, env={}, cache=NO_CACHE)
        is None
    )


def test_pypi_identity_names_the_package_and_the_commit() -> None:
    identity = identify_source(parse_source("pypi", spec=LLAMA), spec=LLAMA, env={}, cache=NO_CACHE)
    assert identity == {"kind": "pypi", "location": "llama-cpp-python==0.3.36", "commit": LLAMA_CPP_COMMIT}


def test_local_directory_identity_is_stable(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    a = identify_source(parse_source(str(tree), spec=LLAMA), spec=LLAMA, env={}, cache=NO_CACHE)
    b = identify_source(parse_source(f"{tree}/.", spec=LLAMA), spec=LLAMA, env={}, cache=NO_CACHE)
    assert a == b == {"kind": "local", "location": str(tree.resolve())}


def test_local_archive_identity_is_its_sha256(tmp_path: Path) -> None:
    archive = tmp_path / "src.tar.gz"
    archive.write_bytes(b"version one")
    source = parse_source(str(archive), spec=LLAMA)
    first = identify_source(source, spec=LLAMA, env={}, cache=NO_CACHE)
    assert first == {
        "kind": "archive",
        "location": str(archive.resolve()),
        "sha256": hashlib.sha256(b"version one").hexdigest(),
    }
    assert identify_source(source, spec=LLAMA, env={}, cache=NO_CACHE) == first
    archive.write_bytes(b"version two")
    assert identify_source(source, spec=LLAMA, env={}, cache=NO_CACHE) != first


def test_remote_archive_identity_unknown_until_downloaded(cache_dir: Path) -> None:
    source = parse_source("https://example.com/src.tar.gz", spec=LLAMA)
    assert identify_source(source, spec=LLAMA, env={}, cache=CacheLayout(cache_dir)) is None


# --------------------------------------------------------------------------- default chain


class FakeFetch:
    def __init__(self, outcomes: dict[str, BaseException | None]) -> None:
        self.outcomes = outcomes
        self.calls: list[SourceSpec] = []

    def __call__(self, source: SourceSpec, *, spec, cache, env, policy) -> FetchedSource:
        self.calls.append(source)
        error = self.outcomes.get(source.kind)
        if error is not None:
            raise error
        return FetchedSource(path=Path("/fetched") / source.kind, identity={"kind": source.kind})


def chain(monkeypatch: pytest.MonkeyPatch, outcomes, *, spec=LLAMA, text=None, ref=None, env=None, cache=None):
    fake = FakeFetch(outcomes)
    # fetch_default_or looks fetch_source up in bitnet_crossval.provision.sources.fetch, so patch it there.
    monkeypatch.setattr(sources_fetch, "fetch_source", fake)
    result = fetch_default_or(
        text,
        spec=spec,
        ref=ref,
        cache=cache or CacheLayout(Path("/unused")),
        env=env or {},
        policy=RetryPolicy(attempts=1),
    )
    return result, fake.calls


def test_default_falls_back_to_pypi_after_a_network_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    result, calls = chain(monkeypatch, {"git": NetworkError("cannot reach github.com")})
    assert [c.kind for c in calls] == ["git", "pypi"]
    assert calls[0] == SourceSpec(kind="git", location=LLAMA.git_url, ref=LLAMA.commit)
    assert result.path == Path("/fetched/pypi")
    assert capsys.readouterr().err.splitlines() == [
        "cannot reach https://github.com/ggml-org/llama.cpp (network error); using the same llama.cpp "
        "commit from the llama-cpp-python 0.3.36 sdist on PyPI"
    ]


def test_a_pypi_tree_already_in_the_cache_is_used_without_trying_git(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cache = CacheLayout(tmp_path)
    tree = cache.pypi_source("llama", "0.3.36")
    (tree / "vendor" / "llama.cpp").mkdir(parents=True)
    (tree / MARKER_NAME).write_text('{"identity": {}, "root": "vendor/llama.cpp"}')
    result, calls = chain(monkeypatch, {"git": AssertionError("git must not be tried")}, cache=cache)
    assert [c.kind for c in calls] == ["pypi"]
    assert result.path == Path("/fetched/pypi")


@pytest.mark.parametrize(
    "error",
    [BadInput("repository not found"), PermissionDenied("cache not writable"), UnclassifiedError("odd")],
)
def test_default_does_not_fall_back_after_other_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error: SuiteError
) -> None:
    with pytest.raises(type(error)) as info:
        chain(monkeypatch, {"git": error})
    assert info.value is error
    assert "PyPI" not in capsys.readouterr().err


def test_no_fallback_for_bitnet_or_another_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(NetworkError):
        chain(monkeypatch, {"git": NetworkError("down")}, spec=BITNET)
    with pytest.raises(NetworkError):
        chain(monkeypatch, {"git": NetworkError("down")}, ref=SHA)
    moved = dataclasses.replace(LLAMA, commit=SHA)  # a spec pinned elsewhere is not the sdist's commit
    with pytest.raises(NetworkError):
        chain(monkeypatch, {"git": NetworkError("down")}, spec=moved)


def test_both_unreachable_is_one_network_error_naming_both(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(NetworkError) as info:
        chain(monkeypatch, {"git": NetworkError("git down"), "pypi": NetworkError("index down")})
    assert "git down" in info.value.message and "index down" in info.value.message
    assert "LLAMA_CPP_SOURCE" in info.value.next_step
    assert "pypi" not in info.value.next_step  # the index is down too, so it is no way out


def test_explicit_source_wins_and_never_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _, calls = chain(monkeypatch, {}, env={"LLAMA_CPP_SOURCE": "pypi"})
    assert [c.kind for c in calls] == ["pypi"]
    _, calls = chain(monkeypatch, {}, text=str(tmp_path), env={"LLAMA_CPP_SOURCE": "pypi"})
    assert calls == [SourceSpec(kind="local", location=str(tmp_path.resolve()))]
    with pytest.raises(NetworkError):
        chain(monkeypatch, {"git": NetworkError("down")}, text=f"https://example.com/x.git@{SHA}")


@pytest.mark.parametrize("variable", ["BITNET_PYPI_INDEX_URL", "PIP_INDEX_URL"])
@pytest.mark.parametrize(
    "value", ["not a url", "ftp://example.invalid/simple", "https:///simple", "http://[::1/simple"]
)
def test_an_index_url_that_is_not_one_is_bad_input_naming_its_variable(variable: str, value: str) -> None:
    from bitnet_crossval.provision.sources.download import index_url

    with pytest.raises(BadInput) as caught:
        index_url({variable: value})
    assert caught.value.message == f"{variable}={value!r} is not an http, https or file URL of a package index"
    assert caught.value.next_step == f"set {variable} to a simple index such as https://pypi.org/simple, or unset it"


def test_index_urls_that_are_urls_are_taken() -> None:
    from bitnet_crossval.provision.sources.download import index_url

    assert index_url({}) == "https://pypi.org/simple"
    assert index_url({"PIP_INDEX_URL": "http://127.0.0.1:9/simple"}) == "http://127.0.0.1:9/simple"
    assert index_url({"BITNET_PYPI_INDEX_URL": "file:///srv/index", "PIP_INDEX_URL": "x"}) == "file:///srv/index"
    assert index_url({"BITNET_PYPI_INDEX_URL": "https://u:p@example.invalid/simple"}).startswith("https://u:p@")
