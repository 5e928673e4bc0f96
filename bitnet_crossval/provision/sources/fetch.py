"""Getting a parsed source into the cache, the default-source chain, and source identities.

:func:`fetch_source` hands each kind of source to its fetcher (a local tree is used where it
is); :func:`fetch_default_or` adds the fallback from the pinned git commit to the same commit
in the PyPI sdist. An identity says which tree a build came from; :func:`identify_source` gives
it without fetching when that is possible, so an up-to-date install can be recognised offline.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from bitnet_crossval.backends.specs import (
    LLAMA_CPP_COMMIT,
    LLAMA_CPP_PYPI_PACKAGE,
    LLAMA_CPP_PYPI_SUBDIR,
    LLAMA_CPP_PYPI_VERSION,
    BackendSpec,
)
from bitnet_crossval.errors import BadInput, NetworkError
from bitnet_crossval.provision.sources.archive import extract_into_cache
from bitnet_crossval.provision.sources.classify import offline_hint
from bitnet_crossval.provision.sources.download import (
    download,
    find_sdist,
    recorded_sha256,
    reusable_download,
    sha256_file,
)
from bitnet_crossval.provision.sources.git import fetch_git, git_identity, local_identity
from bitnet_crossval.provision.sources.spec import (
    FULL_SHA,
    PYPI_REQUIREMENT,
    PYPI_SDIST_NAME,
    FetchedSource,
    SourceSpec,
    is_url,
    parse_source,
    redact_url,
    resolve_source_text,
)
from bitnet_crossval.provision.sources.staging import read_marker
from bitnet_crossval.store.layout import CacheLayout
from bitnet_crossval.util import ui
from bitnet_crossval.util.retry import RetryPolicy


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
    pypi = SourceSpec(kind="pypi", location=PYPI_REQUIREMENT)
    if (
        _has_pypi_fallback(spec, default)
        and read_marker(cache.git_source(spec.name, spec.commit)) is None
        and read_marker(cache.pypi_source(spec.name, LLAMA_CPP_PYPI_VERSION)) is not None
    ):
        # The same commit is already in the cache from PyPI: no network needed at all.
        ui.debug(f"using the {spec.display} tree from the {LLAMA_CPP_PYPI_PACKAGE} sdist already in the cache")
        return fetch_source(pypi, spec=spec, cache=cache, env=env, policy=policy)
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
        try:
            return fetch_source(pypi, spec=spec, cache=cache, env=env, policy=policy)
        except NetworkError as pypi_error:
            raise NetworkError(
                f"cannot reach {spec.git_url} ({git_error.message}) nor the package index ({pypi_error.message})",
                next_step=offline_hint(spec, offer_pypi=False),
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
        return fetch_git(source, spec=spec, cache=cache, env=env, policy=policy)
    if source.kind == "archive":
        return _fetch_archive(source, spec=spec, cache=cache, env=env, policy=policy)
    return _fetch_pypi(spec=spec, cache=cache, env=env, policy=policy)


def _use_local(path: Path, *, spec: BackendSpec, env: Mapping[str, str]) -> FetchedSource:
    if not (path / "CMakeLists.txt").is_file():
        raise BadInput(
            f"{path} has no CMakeLists.txt, so it is not the top of a {spec.display} source tree",
            next_step=f"point --source or {spec.source_env} at the directory that holds CMakeLists.txt",
        )
    return FetchedSource(path=path, identity=local_identity(path, env), incremental=True)


def _fetch_archive(
    source: SourceSpec, *, spec: BackendSpec, cache: CacheLayout, env: Mapping[str, str], policy: RetryPolicy
) -> FetchedSource:
    def final_for(sha256: str) -> Path:
        return cache.archive_source(spec.name, sha256)

    if is_url(source.location):
        archive = cache.download(source.location)
        recorded = recorded_sha256(archive)
        if recorded is not None and read_marker(final_for(recorded)) is not None:
            sha256 = recorded
        else:
            sha256 = reusable_download(archive) or download(
                source.location, archive, spec=spec, env=env, policy=policy, expected_sha256=None
            )
    else:
        archive = Path(source.location)
        sha256 = sha256_file(archive)
    identity = _archive_identity(source.location, sha256)
    final = final_for(sha256)
    return FetchedSource(path=extract_into_cache(archive, final, identity, spec=spec, subdir=None), identity=identity)


def _fetch_pypi(*, spec: BackendSpec, cache: CacheLayout, env: Mapping[str, str], policy: RetryPolicy) -> FetchedSource:
    identity = pypi_identity()
    final = cache.pypi_source(spec.name, LLAMA_CPP_PYPI_VERSION)
    sdist = cache.named_download(PYPI_SDIST_NAME)
    if read_marker(final) is None and reusable_download(sdist) is None:
        url, sha256 = find_sdist(env=env, policy=policy, spec=spec)
        download(url, sdist, spec=spec, env=env, policy=policy, expected_sha256=sha256)
    path = extract_into_cache(sdist, final, identity, spec=spec, subdir=LLAMA_CPP_PYPI_SUBDIR)
    return FetchedSource(path=path, identity=identity)


# --------------------------------------------------------------------------- identity


def identify_source(
    source: SourceSpec, *, spec: BackendSpec, env: Mapping[str, str], cache: CacheLayout
) -> dict[str, str] | None:
    """The identity :func:`fetch_source` would report, when it is known without fetching
    (None otherwise). Cheap: no network, at most two local git calls or one file hash."""
    if source.kind == "git":
        if source.ref is not None and FULL_SHA.match(source.ref):
            return git_identity(source.location, source.ref)
        return None
    if source.kind == "pypi":
        return pypi_identity()
    if source.kind == "local":
        return local_identity(Path(source.location), env)
    if not is_url(source.location):
        return _archive_identity(source.location, sha256_file(Path(source.location)))
    recorded = recorded_sha256(cache.download(source.location))
    return _archive_identity(source.location, recorded) if recorded else None


def pypi_identity() -> dict[str, str]:
    return {"kind": "pypi", "location": PYPI_REQUIREMENT, "commit": LLAMA_CPP_COMMIT}


def _archive_identity(location: str, sha256: str) -> dict[str, str]:
    return {"kind": "archive", "location": redact_url(location), "sha256": sha256}
