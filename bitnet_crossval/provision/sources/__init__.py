"""Where a backend's source tree comes from, and getting it into the cache.

A source is a local directory (built in place), a git URL with an optional ``@REF``, an
archive (a path or a URL), or ``pypi``: the llama.cpp tree vendored in the pinned
llama-cpp-python sdist, which is the same commit as the default git source. Anything that
crosses the network is retried for transient failures (:mod:`bitnet_crossval.util.retry`) and every
failure becomes one of the suite's errors (:func:`classify_failure`).

Fetched trees land in ``<cache>/sources/<name>``, complete or not at all
(:mod:`bitnet_crossval.provision.sources.staging`). Call the fetch functions while holding the backend's lock.

One module per job: ``spec`` parses source strings, ``fetch`` fetches and identifies them,
``git``, ``download`` and ``archive`` do the work for each kind, and ``classify`` maps failures
to errors. This package re-exports the public names; import them from here.
"""

from __future__ import annotations

from bitnet_crossval.provision.sources.archive import extract_archive
from bitnet_crossval.provision.sources.classify import classify_failure, is_transient
from bitnet_crossval.provision.sources.download import (
    DEFAULT_INDEX_URL,
    INDEX_ENV,
    PIP_INDEX_ENV,
    index_url,
)
from bitnet_crossval.provision.sources.fetch import (
    fetch_default_or,
    fetch_source,
    identify_source,
    pypi_identity,
)
from bitnet_crossval.provision.sources.spec import (
    ARCHIVE_SUFFIXES,
    GIT_SCHEMES,
    PYPI_KEYWORD,
    PYPI_REQUIREMENT,
    PYPI_SDIST_NAME,
    FetchedSource,
    SourceKind,
    SourceSpec,
    is_archive_name,
    parse_source,
    redact_url,
    resolve_source_text,
)
from bitnet_crossval.provision.sources.staging import MARKER_NAME

__all__ = [
    "ARCHIVE_SUFFIXES",
    "DEFAULT_INDEX_URL",
    "GIT_SCHEMES",
    "INDEX_ENV",
    "MARKER_NAME",
    "PIP_INDEX_ENV",
    "PYPI_KEYWORD",
    "PYPI_REQUIREMENT",
    "PYPI_SDIST_NAME",
    "FetchedSource",
    "SourceKind",
    "SourceSpec",
    "classify_failure",
    "extract_archive",
    "fetch_default_or",
    "fetch_source",
    "identify_source",
    "index_url",
    "is_archive_name",
    "is_transient",
    "parse_source",
    "pypi_identity",
    "redact_url",
    "resolve_source_text",
]
