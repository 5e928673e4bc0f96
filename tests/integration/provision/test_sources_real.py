"""Fetching sources with real git, real archives, a local HTTP index and the real PyPI."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Literal

import pytest

from bitnet_crossval.backends.specs import BITNET, LLAMA, LLAMA_CPP_COMMIT
from bitnet_crossval.errors import BadInput, NetworkError
from bitnet_crossval.provision import sources
from bitnet_crossval.provision.sources import (
    MARKER_NAME,
    PYPI_SDIST_NAME,
    SourceSpec,
    fetch_default_or,
    fetch_source,
    identify_source,
    parse_source,
)
from bitnet_crossval.store.layout import CacheLayout
from bitnet_crossval.util.retry import RetryPolicy

pytestmark = pytest.mark.integration

FAST = RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.1, budget=0.3)
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.com",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.com",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(*args: str | Path, cwd: Path | None = None) -> str:
    env = {**os.environ, **GIT_IDENTITY, "GIT_CONFIG_GLOBAL": os.devnull}
    done = subprocess.run(["git", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def commit_file(repo: Path, name: str, text: str) -> str:
    (repo / name).parent.mkdir(parents=True, exist_ok=True)
    (repo / name).write_text(text)
    git("-C", repo, "add", name)
    git("-C", repo, "commit", "-q", "-m", f"add {name}")
    return git("-C", repo, "rev-parse", "HEAD")


@dataclasses.dataclass
class Repos:
    bare: Path
    url: str
    pinned: str  # has the submodule at sub_pinned; not the tip of main
    tip: str
    sub_pinned: str


@pytest.fixture
def repos(tmp_path: Path) -> Repos:
    """A bare repository with a CMake project whose pinned commit is not the branch tip, and a
    submodule pinned to a commit that is not the submodule's tip either."""
    sub = tmp_path / "src" / "sub"
    sub.mkdir(parents=True)
    git("init", "-q", "-b", "main", sub)
    sub_pinned = commit_file(sub, "sub.txt", "pinned\n")
    commit_file(sub, "later.txt", "after the pin\n")
    main = tmp_path / "src" / "main"
    main.mkdir()
    git("init", "-q", "-b", "main", main)
    commit_file(main, "CMakeLists.txt", "cmake_minimum_required(VERSION 3.16)\nproject(fake)\n")
    git("-C", main, "-c", "protocol.file.allow=always", "submodule", "add", "-q", sub.as_uri(), "3rdparty/sub")
    git("-C", main / "3rdparty" / "sub", "checkout", "-q", sub_pinned)
    git("-C", main, "add", "3rdparty/sub")
    git("-C", main, "commit", "-q", "-m", "pin submodule")
    pinned = git("-C", main, "rev-parse", "HEAD")
    git("-C", main, "tag", "-a", "v1.0", "-m", "release")
    tip = commit_file(main, "after.txt", "after the pin\n")
    bare = tmp_path / "remote" / "main.git"
    git("clone", "-q", "--bare", main, bare)
    return Repos(bare=bare, url=bare.as_uri(), pinned=pinned, tip=tip, sub_pinned=sub_pinned)


def fetch(text: str, *, spec, cache_dir: Path, env: dict[str, str], policy: RetryPolicy = FAST, ref=None):
    return fetch_source(
        parse_source(text, spec=spec, ref=ref), spec=spec, cache=CacheLayout(cache_dir), env=env, policy=policy
    )


def leftovers(cache_dir: Path) -> list[str]:
    sources_dir = cache_dir / "sources"
    return sorted(p.name for p in sources_dir.iterdir() if ".tmp-" in p.name) if sources_dir.exists() else []


# --------------------------------------------------------------------------- git


def test_git_fetches_pinned_commit_with_submodules_and_reuses_it(
    repos: Repos, cache_dir: Path, base_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    text = f"{repos.url}@{repos.pinned}"
    source = parse_source(text, spec=BITNET)
    before = identify_source(source, spec=BITNET, env=base_env, cache=CacheLayout(Path(base_env["BITNET_CACHE_DIR"])))

    fetched = fetch(text, spec=BITNET, cache_dir=cache_dir, env=base_env)

    assert fetched.path == cache_dir / "sources" / f"bitnet-{repos.pinned}"
    assert git("-C", fetched.path, "rev-parse", "HEAD") == repos.pinned
    assert (fetched.path / "CMakeLists.txt").is_file()
    assert not (fetched.path / "after.txt").exists(), "the tip, not the pinned commit, was checked out"
    submodule = fetched.path / "3rdparty" / "sub"
    assert (submodule / "sub.txt").read_text() == "pinned\n"
    assert not (submodule / "later.txt").exists()
    assert git("-C", submodule, "rev-parse", "HEAD") == repos.sub_pinned
    assert fetched.identity == before == {"kind": "git", "location": repos.url, "commit": repos.pinned}
    assert fetched.incremental is False
    assert leftovers(cache_dir) == []
    assert "fetching bitnet.cpp" in capsys.readouterr().err

    # The remote disappears (no network): the finished checkout is reused without git.
    repos.bare.rename(repos.bare.with_name("gone.git"))
    again = fetch(text, spec=BITNET, cache_dir=cache_dir, env=base_env)
    assert again == fetched
    assert "fetching" not in capsys.readouterr().err


def test_git_resolves_annotated_tag_and_branch(repos: Repos, cache_dir: Path, base_env: dict[str, str]) -> None:
    tagged = fetch(f"{repos.url}@v1.0", spec=LLAMA, cache_dir=cache_dir, env=base_env)
    assert tagged.identity["commit"] == repos.pinned
    assert git("-C", tagged.path, "rev-parse", "HEAD") == repos.pinned
    branch = fetch(repos.url, spec=LLAMA, cache_dir=cache_dir, env=base_env, ref="main")
    assert branch.identity["commit"] == repos.tip
    assert (branch.path / "after.txt").is_file()
    head = fetch(repos.url, spec=LLAMA, cache_dir=cache_dir, env=base_env)
    assert head.path == branch.path


def test_git_unknown_commit_and_ref_are_bad_input(repos: Repos, cache_dir: Path, base_env: dict[str, str]) -> None:
    missing = "f" * 40
    with pytest.raises(BadInput) as info:
        fetch(f"{repos.url}@{missing}", spec=LLAMA, cache_dir=cache_dir, env=base_env)
    assert info.value.exit_code == 6
    assert missing in info.value.message
    with pytest.raises(BadInput, match="no branch or tag named 'nope'"):
        fetch(f"{repos.url}@nope", spec=LLAMA, cache_dir=cache_dir, env=base_env)
    with pytest.raises(BadInput):
        fetch(f"{repos.url}-missing@{repos.pinned}", spec=LLAMA, cache_dir=cache_dir, env=base_env)
    assert leftovers(cache_dir) == []
    assert not (cache_dir / "sources" / f"llama-{missing}").exists()


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_leftovers_of_a_killed_run_are_replaced(repos: Repos, cache_dir: Path, base_env: dict[str, str]) -> None:
    sources_dir = cache_dir / "sources"
    final = sources_dir / f"llama-{repos.pinned}"
    stale = sources_dir / f".{final.name}.tmp-{dead_pid()}-abc123"
    (stale / "half").mkdir(parents=True)
    # A final directory without the marker: from a run that died before finishing.
    (final / "junk").mkdir(parents=True)
    live = sources_dir / f".{final.name}.tmp-{os.getppid()}-live"  # owner still running: kept
    live.mkdir()

    fetched = fetch(f"{repos.url}@{repos.pinned}", spec=LLAMA, cache_dir=cache_dir, env=base_env)

    assert fetched.path == final
    assert not stale.exists()
    assert live.exists()
    assert not (final / "junk").exists()
    assert json.loads((final / MARKER_NAME).read_text())["root"] == "."


@pytest.mark.parametrize("ref", ["a" * 40, None], ids=["commit", "remote-head"])
def test_unreachable_git_host_is_network_error_after_retries(
    ref: str | None, cache_dir: Path, base_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    url = "https://127.0.0.1:9/x.git"  # port 9 (discard) is closed: connection refused
    text = f"{url}@{ref}" if ref else url
    started = time.monotonic()
    with pytest.raises(NetworkError) as info:
        fetch(text, spec=LLAMA, cache_dir=cache_dir, env=base_env, policy=FAST)
    elapsed = time.monotonic() - started
    assert info.value.exit_code == 3
    assert url in info.value.message
    assert "LLAMA_CPP_SOURCE=pypi" in info.value.next_step
    retries = [line for line in capsys.readouterr().err.splitlines() if "retrying in" in line]
    assert len(retries) == FAST.attempts - 1
    assert retries[0].startswith("warning: network error while ")
    assert retries[-1].endswith("(1 left)")
    assert elapsed < 20
    assert leftovers(cache_dir) == []


# --------------------------------------------------------------------------- archives


def make_tar(path: Path, files: dict[str, str], *, mode: Literal["w:gz", "w:xz"] = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if name.endswith(".sh") else 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def make_zip(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zipped:
        for name, text in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o755 if name.endswith(".sh") else 0o644) << 16
            zipped.writestr(info, text)
    return path


PROJECT = {
    "proj-1.0/CMakeLists.txt": "cmake_minimum_required(VERSION 3.16)\n",
    "proj-1.0/include/proj.h": "#pragma once\n",
    "proj-1.0/scripts/gen.sh": "#!/bin/sh\necho hi\n",
}


@pytest.mark.parametrize(
    ("name", "maker"),
    [
        ("proj.tar.gz", make_tar),
        ("proj.tgz", make_tar),
        ("proj.tar.xz", lambda p, f: make_tar(p, f, mode="w:xz")),
        ("proj.zip", make_zip),
    ],
)
def test_local_archive_is_extracted_to_its_single_top_directory(
    name: str, maker, tmp_path: Path, cache_dir: Path, base_env: dict[str, str]
) -> None:
    archive = maker(tmp_path / name, PROJECT)
    source = parse_source(str(archive), spec=BITNET)
    fetched = fetch(str(archive), spec=BITNET, cache_dir=cache_dir, env=base_env)
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    assert fetched.path == cache_dir / "sources" / f"bitnet-archive-{sha256[:16]}" / "proj-1.0"
    assert (fetched.path / "include" / "proj.h").read_text() == "#pragma once\n"
    assert os.access(fetched.path / "scripts" / "gen.sh", os.X_OK)
    assert fetched.identity == {"kind": "archive", "location": str(archive.resolve()), "sha256": sha256}
    assert (
        identify_source(source, spec=BITNET, env=base_env, cache=CacheLayout(Path(base_env["BITNET_CACHE_DIR"])))
        == fetched.identity
    )
    assert fetch(str(archive), spec=BITNET, cache_dir=cache_dir, env=base_env) == fetched
    assert leftovers(cache_dir) == []


def test_archive_without_cmake_project_is_bad_input(tmp_path: Path, cache_dir: Path, base_env: dict[str, str]) -> None:
    archive = make_tar(tmp_path / "docs.tar.gz", {"docs/readme.md": "hello\n"})
    with pytest.raises(BadInput, match=r"no CMakeLists\.txt"):
        fetch(str(archive), spec=LLAMA, cache_dir=cache_dir, env=base_env)
    assert list((cache_dir / "sources").iterdir()) == []


def test_corrupt_archive_is_bad_input(tmp_path: Path, cache_dir: Path, base_env: dict[str, str]) -> None:
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(b"\x1f\x8b this is not gzip data")
    with pytest.raises(BadInput, match="not a valid archive"):
        fetch(str(archive), spec=LLAMA, cache_dir=cache_dir, env=base_env)
    assert list((cache_dir / "sources").iterdir()) == []


def symlink_tar(directory: Path) -> Path:
    path = directory / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        data = b"cmake_minimum_required(VERSION 3.16)\n"
        info = tarfile.TarInfo("proj/CMakeLists.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("proj/escape")
        link.type = tarfile.SYMTYPE
        link.linkname = "../../outside"
        tar.addfile(link)
    return path


@pytest.mark.parametrize(
    "build",
    [
        lambda d: make_tar(d / "evil.tar.gz", {"proj/CMakeLists.txt": "x", "../evil.txt": "owned"}),
        lambda d: make_tar(d / "evil.tar.gz", {"proj/CMakeLists.txt": "x", "proj/../../evil.txt": "owned"}),
        lambda d: make_tar(d / "evil.tar.gz", {"proj/CMakeLists.txt": "x", f"{d}/evil.txt": "owned"}),
        symlink_tar,
        lambda d: make_zip(d / "evil.zip", {"proj/CMakeLists.txt": "x", "../evil.txt": "owned"}),
    ],
    ids=["tar-dotdot", "tar-nested-dotdot", "tar-absolute", "tar-symlink-out", "zip-dotdot"],
)
def test_malicious_archive_is_refused(build, tmp_path: Path, cache_dir: Path, base_env: dict[str, str]) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = build(work)
    with pytest.raises(BadInput) as info:
        fetch(str(archive), spec=LLAMA, cache_dir=cache_dir, env=base_env)
    assert info.value.exit_code == 6
    assert "refusing to extract" in info.value.message
    assert not any(p.name == "evil.txt" for p in tmp_path.rglob("evil.txt"))
    assert list((cache_dir / "sources").iterdir()) == [], "nothing extracted stays in the cache"


# --------------------------------------------------------------------------- local HTTP index


class FakeIndex:
    """A PEP 691 simple index plus file downloads on 127.0.0.1, with a request log."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, str, bytes]] = {}
        self.requests: list[str] = []
        self.required_auth: str | None = None  # an expected Authorization header
        index = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                index.requests.append(self.path)
                status, content_type, body = index.routes.get(self.path, (404, "text/plain", b"not found"))
                if index.required_auth is not None and self.headers.get("Authorization") != index.required_auth:
                    status, content_type, body = 401, "text/plain", b"login required"
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def serve_sdist(self, sdist: bytes, *, sha256: str | None = None, html: bool = False) -> None:
        digest = sha256 or hashlib.sha256(sdist).hexdigest()
        self.routes[f"/files/{PYPI_SDIST_NAME}"] = (200, "application/octet-stream", sdist)
        if html:
            page = f'<html><body><a href="../../files/{PYPI_SDIST_NAME}#sha256={digest}">{PYPI_SDIST_NAME}</a>'
            self.routes["/simple/llama-cpp-python/"] = (200, "text/html", page.encode())
            return
        document = {
            "meta": {"api-version": "1.1"},
            "name": "llama-cpp-python",
            "files": [
                {"filename": "llama_cpp_python-0.3.35.tar.gz", "url": "/files/old.tar.gz", "hashes": {}},
                {
                    "filename": PYPI_SDIST_NAME,
                    "url": f"../../files/{PYPI_SDIST_NAME}",  # relative to the project page
                    "hashes": {"sha256": digest},
                },
            ],
        }
        self.routes["/simple/llama-cpp-python/"] = (
            200,
            "application/vnd.pypi.simple.v1+json",
            json.dumps(document).encode(),
        )


@pytest.fixture
def index() -> Iterator[FakeIndex]:
    fake = FakeIndex()
    fake.thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()


def fake_sdist(tmp_path: Path) -> bytes:
    top = PYPI_SDIST_NAME.removesuffix(".tar.gz")
    path = make_tar(
        tmp_path / "sdist.tar.gz",
        {
            f"{top}/pyproject.toml": "[project]\n",
            f"{top}/vendor/llama.cpp/CMakeLists.txt": "cmake_minimum_required(VERSION 3.16)\n",
            f"{top}/vendor/llama.cpp/include/llama.h": "#pragma once\n",
        },
    )
    return path.read_bytes()


@pytest.mark.parametrize("html", [False, True], ids=["pep691-json", "pep503-html"])
def test_pypi_source_from_a_local_index(
    html: bool, index: FakeIndex, tmp_path: Path, cache_dir: Path, base_env: dict[str, str]
) -> None:
    index.serve_sdist(fake_sdist(tmp_path), html=html)
    env = {**base_env, "BITNET_PYPI_INDEX_URL": f"{index.base}/simple/"}
    fetched = fetch("pypi", spec=LLAMA, cache_dir=cache_dir, env=env)
    assert fetched.path.parts[-2:] == ("vendor", "llama.cpp")
    assert (fetched.path / "include" / "llama.h").is_file()
    assert fetched.identity == {"kind": "pypi", "location": "llama-cpp-python==0.3.36", "commit": LLAMA_CPP_COMMIT}
    assert index.requests == ["/simple/llama-cpp-python/", f"/files/{PYPI_SDIST_NAME}"]


def test_index_credentials_are_sent_to_the_index_host_and_never_printed(
    index: FakeIndex, tmp_path: Path, cache_dir: Path, base_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    index.serve_sdist(fake_sdist(tmp_path))
    index.required_auth = "Basic " + base64.b64encode(b"me:s3cr%t").decode()
    host = index.base.removeprefix("http://")
    env = {**base_env, "PIP_INDEX_URL": f"http://me:s3cr%25t@{host}/simple"}
    fetched = fetch("pypi", spec=LLAMA, cache_dir=cache_dir, env=env)
    assert (fetched.path / "CMakeLists.txt").is_file()
    assert index.requests == ["/simple/llama-cpp-python/", f"/files/{PYPI_SDIST_NAME}"]
    assert "s3cr" not in capsys.readouterr().err

    index.required_auth = "Basic " + base64.b64encode(b"someone:else").decode()
    shutil.rmtree(cache_dir)
    with pytest.raises(BadInput) as info:
        fetch("pypi", spec=LLAMA, cache_dir=cache_dir, env=env)
    assert "HTTP 401" in info.value.message
    assert "s3cr" not in info.value.message


def test_pypi_hash_mismatch_deletes_the_download(
    index: FakeIndex, tmp_path: Path, cache_dir: Path, base_env: dict[str, str]
) -> None:
    index.serve_sdist(fake_sdist(tmp_path), sha256="0" * 64)
    env = {**base_env, "PIP_INDEX_URL": f"{index.base}/simple"}
    with pytest.raises(BadInput) as info:
        fetch("pypi", spec=LLAMA, cache_dir=cache_dir, env=env)
    assert info.value.exit_code == 6
    assert "sha256" in info.value.message and "0" * 64 in info.value.message
    assert "deleted" in info.value.message
    assert list((cache_dir / "downloads").iterdir()) == []
    assert not (cache_dir / "sources").exists()


def test_pypi_project_missing_is_bad_input_without_retries(
    index: FakeIndex, cache_dir: Path, base_env: dict[str, str]
) -> None:
    env = {**base_env, "BITNET_PYPI_INDEX_URL": f"{index.base}/simple"}
    with pytest.raises(BadInput) as info:
        fetch("pypi", spec=LLAMA, cache_dir=cache_dir, env=env)
    assert "HTTP 404" in info.value.message
    assert index.requests == ["/simple/llama-cpp-python/"]


def test_pypi_index_answering_503_is_network_error_after_retries(
    index: FakeIndex, cache_dir: Path, base_env: dict[str, str]
) -> None:
    index.routes["/simple/llama-cpp-python/"] = (503, "text/plain", b"busy")
    env = {**base_env, "BITNET_PYPI_INDEX_URL": f"{index.base}/simple"}
    with pytest.raises(NetworkError) as info:
        fetch("pypi", spec=LLAMA, cache_dir=cache_dir, env=env)
    assert info.value.exit_code == 3
    assert "HTTP 503" in info.value.message
    assert len(index.requests) == FAST.attempts


def test_archive_url_is_downloaded_once(
    index: FakeIndex, tmp_path: Path, cache_dir: Path, base_env: dict[str, str]
) -> None:
    archive = make_tar(tmp_path / "proj.tar.gz", PROJECT).read_bytes()
    index.routes["/dl/proj.tar.gz"] = (200, "application/gzip", archive)
    url = f"{index.base}/dl/proj.tar.gz"
    source = parse_source(url, spec=LLAMA)
    assert (
        identify_source(source, spec=LLAMA, env=base_env, cache=CacheLayout(Path(base_env["BITNET_CACHE_DIR"]))) is None
    )
    fetched = fetch(url, spec=LLAMA, cache_dir=cache_dir, env=base_env)
    assert fetched.identity == {"kind": "archive", "location": url, "sha256": hashlib.sha256(archive).hexdigest()}
    assert (fetched.path / "CMakeLists.txt").is_file()
    assert (
        identify_source(source, spec=LLAMA, env=base_env, cache=CacheLayout(Path(base_env["BITNET_CACHE_DIR"])))
        == fetched.identity
    )
    shutil.rmtree(fetched.path.parent)  # even re-extracting uses the downloaded file
    assert fetch(url, spec=LLAMA, cache_dir=cache_dir, env=base_env) == fetched
    assert index.requests == ["/dl/proj.tar.gz"]
    with pytest.raises(BadInput, match="HTTP 404"):
        fetch(f"{index.base}/dl/missing.tar.gz", spec=LLAMA, cache_dir=cache_dir, env=base_env)


# --------------------------------------------------------------------------- local directories


def test_local_checkout_is_used_in_place_with_a_cheap_identity(
    tmp_path: Path, cache_dir: Path, base_env: dict[str, str]
) -> None:
    tree = tmp_path / "llama.cpp"
    tree.mkdir()
    git("init", "-q", tree)
    head = commit_file(tree, "CMakeLists.txt", "cmake_minimum_required(VERSION 3.16)\n")
    (tree / ".gitignore").write_text("build/\n")
    git("-C", tree, "add", ".gitignore")
    git("-C", tree, "commit", "-q", "-m", "ignore build")
    head = git("-C", tree, "rev-parse", "HEAD")
    (tree / "build").mkdir()
    (tree / "build" / "object.o").write_text("ignored")
    source = parse_source(str(tree), spec=LLAMA)

    started = time.monotonic()
    identity = identify_source(source, spec=LLAMA, env=base_env, cache=CacheLayout(Path(base_env["BITNET_CACHE_DIR"])))
    assert time.monotonic() - started < 1.0
    assert identity == {"kind": "local", "location": str(tree.resolve()), "commit": head, "dirty": "false"}

    fetched = fetch(str(tree), spec=LLAMA, cache_dir=cache_dir, env=base_env)
    assert fetched.path == tree.resolve()
    assert fetched.incremental is True
    assert fetched.identity == identity
    assert not (cache_dir / "sources").exists() or list((cache_dir / "sources").iterdir()) == []

    (tree / "CMakeLists.txt").write_text("changed\n")
    changed = identify_source(source, spec=LLAMA, env=base_env, cache=CacheLayout(Path(base_env["BITNET_CACHE_DIR"])))
    assert changed is not None and changed["dirty"] == "true"


def test_local_directory_without_cmake_is_bad_input(tmp_path: Path, cache_dir: Path, base_env: dict[str, str]) -> None:
    with pytest.raises(BadInput, match=r"no CMakeLists\.txt"):
        fetch(str(tmp_path), spec=BITNET, cache_dir=cache_dir, env=base_env)


# --------------------------------------------------------------------------- the real PyPI


@pytest.fixture(scope="module")
def pypi_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the tests that download the real 76 MB sdist, so it is downloaded once."""
    return tmp_path_factory.mktemp("pypi-cache")


def published_sha256() -> str:
    request = urllib.request.Request(
        "https://pypi.org/simple/llama-cpp-python/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        document = json.load(response)
    [entry] = [f for f in document["files"] if f["filename"] == PYPI_SDIST_NAME]
    return str(entry["hashes"]["sha256"])


def test_real_pypi_sdist_gives_vendored_llama_cpp(pypi_cache: Path, base_env: dict[str, str]) -> None:
    env = {**base_env, "BITNET_CACHE_DIR": str(pypi_cache)}
    fetched = fetch("pypi", spec=LLAMA, cache_dir=pypi_cache, env=env, policy=RetryPolicy(attempts=3, budget=10))
    assert (
        fetched.path
        == pypi_cache / "sources" / "llama-pypi-0.3.36" / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"
    )
    assert (fetched.path / "CMakeLists.txt").is_file()
    assert (fetched.path / "include" / "llama.h").is_file()
    sdist = pypi_cache / "downloads" / PYPI_SDIST_NAME
    actual = hashlib.sha256(sdist.read_bytes()).hexdigest()
    assert actual == published_sha256()
    assert (pypi_cache / "downloads" / f"{PYPI_SDIST_NAME}.sha256").read_text().strip() == actual

    # Offline afterwards: an unreachable index, and the extracted tree removed, still work
    # from the verified download.
    offline = {**env, "BITNET_PYPI_INDEX_URL": "http://127.0.0.1:9/simple"}
    shutil.rmtree(pypi_cache / "sources" / "llama-pypi-0.3.36")
    again = fetch("pypi", spec=LLAMA, cache_dir=pypi_cache, env=offline, policy=FAST)
    assert again == fetched
    assert (again.path / "include" / "llama.h").is_file()


def test_default_chain_falls_back_to_real_pypi(
    pypi_cache: Path, base_env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A cache with the downloaded sdist (if an earlier test fetched it) but no extracted tree:
    # a tree already in the cache would be used without trying git at all.
    cache_dir = tmp_path / "fallback-cache"
    cache_dir.mkdir()
    if (pypi_cache / "downloads").is_dir():
        shutil.copytree(pypi_cache / "downloads", cache_dir / "downloads")
    unreachable = dataclasses.replace(LLAMA, git_url="https://127.0.0.1:9/llama.cpp")
    env = {**base_env, "BITNET_CACHE_DIR": str(cache_dir)}
    fetched = fetch_default_or(None, spec=unreachable, ref=None, cache=CacheLayout(cache_dir), env=env, policy=FAST)
    assert fetched.identity == sources.pypi_identity()
    assert (fetched.path / "include" / "llama.h").is_file()
    err = capsys.readouterr().err
    assert "retrying in" in err
    assert (
        "cannot reach https://127.0.0.1:9/llama.cpp (network error); using the same llama.cpp commit "
        "from the llama-cpp-python 0.3.36 sdist on PyPI"
    ) in err.splitlines()
    assert SourceSpec(kind="pypi", location="llama-cpp-python==0.3.36") == parse_source("pypi", spec=LLAMA)
