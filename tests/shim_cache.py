"""A cache whose constants file lists a shim a test session already built: what `invoke rebuild`
writes for the install, without building the shim a second time."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from bitnet_crossval.backends.specs import SPECS, BackendSpec
from bitnet_crossval.context import load_context
from bitnet_crossval.reference.client import Shim
from bitnet_crossval.reference.sources import shim_source_digest
from bitnet_crossval.repair.rebuild import record_for
from bitnet_crossval.store.constants import BackendRecord, write_constants
from bitnet_crossval.util.files import file_sha256
from tests.conftest import child_env


def cache_env_with_shim(root: Path, spec: BackendSpec, install: Path, shim: Shim) -> dict[str, str]:
    """The environment of a cache at ``root`` whose constants record ``install`` (named by
    ``spec``'s directory variable) with ``shim``, and the other backends as detection finds them."""
    env = child_env(root)
    env[spec.dir_env] = str(install)
    ctx = load_context(env)
    found = ctx.detector.detect(spec)
    assert found.available, found.reason
    record = replace(
        record_for(found),
        shim=str(shim.executable),
        shim_api=str(shim.info()["api"]),
        shim_sha256=file_sha256(shim.executable),
        shim_source=shim_source_digest(),
    )
    records: dict[str, BackendRecord] = {
        name: record if other is spec else record_for(ctx.detector.detect(other)) for name, other in SPECS.items()
    }
    write_constants(ctx.cache.constants_file, records)
    return env
