"""The shim a backend's record names, checked before it is used."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from bitnet_crossval.errors import BackendUnavailable
from bitnet_crossval.reference.client import Shim
from bitnet_crossval.reference.sources import shim_source_digest
from bitnet_crossval.store.constants import Constants, shim_problem


def recorded_shim(constants: Constants, backend: str, *, env: Mapping[str, str], log_dir: Path | None = None) -> Shim:
    """The shim built against ``backend`` as the constants file records it; the backend is
    unavailable when the record is missing, says so, or names a shim that is not the one
    built from this suite's sources."""
    record = constants.record(backend)
    problem = (
        "the constants file does not list it"
        if record is None or not record.available
        else shim_problem(record, source_digest=shim_source_digest())
    )
    if problem is not None or record is None or record.shim is None:
        raise BackendUnavailable(
            f"there is no usable shim for the {backend} backend: {problem}",
            next_step=f"run `invoke preflight --backend {backend} --repair auto` (or `invoke rebuild`)",
        )
    return Shim(Path(record.shim), env=env, log_dir=log_dir)
