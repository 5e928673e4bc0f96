"""Where the shim's C++ sources are, and a digest of them.

The constants file records the digest each shim was built from, so a shim built by an older
version of the suite (different sources) is rebuilt rather than trusted.
"""

from __future__ import annotations

import functools
from pathlib import Path

import bitnet_crossval
from bitnet_crossval.errors import BuildFailed


def shim_source_dir() -> Path:
    """The shim's CMake project, ``bitnet_crossval/cpp`` (package data of the library)."""
    source = Path(bitnet_crossval.__file__).resolve().parent / "cpp"
    if not (source / "CMakeLists.txt").is_file():
        raise BuildFailed(
            f"the shim's sources are missing: {source} holds no CMakeLists.txt",
            next_step="reinstall the suite (pip install --force-reinstall bitnet-crossval-suite)",
        )
    return source


def shim_source_files(source_dir: Path | None = None) -> list[Path]:
    """The files the shim is built from, in a fixed order: CMakeLists.txt, then every file below src/."""
    root = source_dir or shim_source_dir()
    return [root / "CMakeLists.txt", *sorted(p for p in (root / "src").rglob("*") if p.is_file())]


@functools.cache
def shim_source_digest(source_dir: Path | None = None) -> str:
    """A sha256 over the names and contents of the shim's sources (:func:`shim_source_files`)."""
    import hashlib

    root = source_dir or shim_source_dir()
    digest = hashlib.sha256()
    for path in shim_source_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()
