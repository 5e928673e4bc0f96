"""Which source trees an install was built from (where llama.cpp's vocabulary files are).

An install in the cache carries its marker, and the marker names the build tree, whose
``CMakeCache.txt`` names the source tree it was configured from; a local source is recorded in
the marker itself. An install named by ``LLAMA_CPP_DIR``/``BITNET_CPP_DIR`` may itself be a
checkout.
"""

from __future__ import annotations

from pathlib import Path

from bitnet_crossval.store.constants import BackendRecord
from bitnet_crossval.store.marker import read_marker


def read_cmake_cache(build_dir: Path) -> dict[str, str]:
    """The entries of ``build_dir``'s CMakeCache.txt by name (types dropped); empty if none."""
    entries: dict[str, str] = {}
    try:
        text = (build_dir / "CMakeCache.txt").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return entries
    for line in text.splitlines():
        if not line or line.startswith(("#", "//")) or "=" not in line:
            continue
        key_and_type, value = line.split("=", 1)
        entries[key_and_type.split(":", 1)[0]] = value
    return entries


def source_dirs(record: BackendRecord) -> list[Path]:
    """Source trees the backend of ``record`` was built from, nearest first: the install
    directory itself (a checkout named by LLAMA_CPP_DIR / BITNET_CPP_DIR), the tree a cache
    install was configured from, a local source it was built from."""
    dirs: list[Path] = []
    if not record.install_dir:
        return dirs
    dirs.append(Path(record.install_dir))
    marker = read_marker(Path(record.install_dir))
    if marker is not None and marker.build_dir:
        home = read_cmake_cache(Path(marker.build_dir)).get("CMAKE_HOME_DIRECTORY")
        if home:
            dirs.append(Path(home))
    if marker is not None and marker.source.get("kind") == "local":
        dirs.append(Path(marker.source.get("location", "")))
    return dirs
