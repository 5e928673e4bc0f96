"""The install marker: the record a finished install carries, written last.

A directory under ``installs/`` counts as an install only with this file in it (a setup killed
half-way leaves no marker), and the marker says which source and flags built it. This module
is its one owner: it names the file, writes it, and reads it back as a typed record, so no
other code picks the JSON apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bitnet_crossval.util.files import read_json_file, write_json_atomic
from bitnet_crossval.util.timefmt import now_iso

MARKER_NAME = ".bitnet-suite-install.json"


@dataclass(frozen=True, kw_only=True)
class InstallMarker:
    backend: str
    source: Mapping[str, str] = field(default_factory=dict)
    """The source identity: ``kind``, ``location`` and ``commit`` or ``sha256`` where known."""
    build_flags: tuple[str, ...] = ()
    installed_at: str = ""
    build_dir: str = ""

    @property
    def commit(self) -> str:
        return self.source.get("commit", "")

    def label(self) -> str:
        """What a status line says about the source: the commit, else where it came from."""
        return self.source.get("commit") or self.source.get("location") or "?"

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["source"] = dict(self.source)
        data["build_flags"] = list(self.build_flags)
        return data


def marker_path(install_dir: Path) -> Path:
    return install_dir / MARKER_NAME


def write_marker(
    install_dir: Path, *, backend: str, source: Mapping[str, str], build_flags: list[str], build_dir: Path
) -> InstallMarker:
    marker = InstallMarker(
        backend=backend,
        source=dict(source),
        build_flags=tuple(build_flags),
        installed_at=now_iso(),
        build_dir=str(build_dir),
    )
    write_json_atomic(marker_path(install_dir), marker.to_json(), what="the install marker")
    return marker


def read_marker(install_dir: Path) -> InstallMarker | None:
    """The marker in ``install_dir``, or None when it is absent or not one of ours."""
    data = read_json_file(marker_path(install_dir))
    if not isinstance(data, dict) or not isinstance(data.get("backend"), str) or not data["backend"]:
        return None
    source = data.get("source")
    flags = data.get("build_flags")
    return InstallMarker(
        backend=data["backend"],
        source={str(k): str(v) for k, v in source.items()} if isinstance(source, dict) else {},
        build_flags=tuple(str(f) for f in flags) if isinstance(flags, list) else (),
        installed_at=str(data.get("installed_at", "")),
        build_dir=str(data.get("build_dir", "")),
    )
