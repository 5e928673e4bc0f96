from __future__ import annotations

from bitnet_crossval.backends.specs import LLAMA_CPP_COMMIT
from bitnet_crossval.provision.install import same_source

PINNED_GIT = {"kind": "git", "location": "https://github.com/ggml-org/llama.cpp", "commit": LLAMA_CPP_COMMIT}
PYPI = {"kind": "pypi", "location": "llama-cpp-python==0.3.36", "commit": LLAMA_CPP_COMMIT}


def test_the_pinned_commit_from_git_or_pypi_is_the_same_source() -> None:
    assert same_source(PYPI, PINNED_GIT)
    assert same_source(PINNED_GIT, PYPI)


def test_another_commit_is_another_source() -> None:
    assert not same_source(PYPI, {**PINNED_GIT, "commit": "0" * 40})


def test_a_dirty_checkout_never_counts_as_installed() -> None:
    local = {"kind": "local", "location": "/src", "commit": LLAMA_CPP_COMMIT, "dirty": "true"}
    assert not same_source(local, local)


def test_sources_without_commits_compare_whole() -> None:
    archive = {"kind": "archive", "location": "/a.tar.gz", "sha256": "ab"}
    assert same_source(archive, dict(archive))
    assert not same_source(archive, {**archive, "sha256": "cd"})
