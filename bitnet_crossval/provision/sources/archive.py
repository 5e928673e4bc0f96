"""Safe extraction of a source archive (tar.gz, tgz, tar.xz, zip) into the cache.

Every member is checked before anything is written: absolute paths, ``..``, links pointing
outside the extraction directory and device files are refused (and on Python >= 3.11.4 the
PEP 706 "data" filter checks the same again), so a hostile archive installs nothing.
"""

from __future__ import annotations

import posixpath
import re
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from bitnet_crossval.backends.specs import BackendSpec
from bitnet_crossval.errors import BadInput, SuiteError
from bitnet_crossval.provision.sources.classify import ARCHIVE_ERRORS, classify_failure, describe_archive_error
from bitnet_crossval.provision.sources.staging import assemble, read_marker
from bitnet_crossval.util import ui

_FILTER_ERRORS: tuple[type[Exception], ...] = tuple(
    e for e in (getattr(tarfile, "FilterError", None),) if isinstance(e, type) and issubclass(e, Exception)
)


def extract_into_cache(
    archive: Path, final: Path, identity: dict[str, str], *, spec: BackendSpec, subdir: str | None
) -> Path:
    """Extract ``archive`` into ``final`` unless a finished extraction is there; return the
    project root: ``subdir`` of the archive's single top directory, or that directory."""
    finished = read_marker(final)
    if finished is not None:
        return final / finished

    def populate(tmp: Path) -> str:
        ui.say(f"extracting {archive.name}")
        extract_archive(archive, tmp)
        entries = [e for e in tmp.iterdir() if e.name not in {"__MACOSX"}]
        top = entries[0].name if len(entries) == 1 and entries[0].is_dir() else "."
        root = posixpath.normpath(posixpath.join(top, subdir)) if subdir else top
        if not (tmp / root / "CMakeLists.txt").is_file():
            where = f"{subdir} of the archive" if subdir else "the top of the archive (or its single directory)"
            raise BadInput(
                f"{archive.name} has no CMakeLists.txt in {where}, so it is not a {spec.display} source tree",
                next_step=f"use an archive of the {spec.display} sources",
            )
        return root

    return assemble(final, identity, populate)


def extract_archive(archive: Path, dest: Path) -> None:
    """Extract a tar (gz/xz) or zip archive into ``dest``, refusing members that would land
    outside it (absolute paths, ``..``, links pointing out, device files)."""
    try:
        if archive.name.lower().endswith(".zip"):
            _extract_zip(archive, dest)
        else:
            _extract_tar(archive, dest)
    except SuiteError:
        raise
    except _FILTER_ERRORS as exc:
        raise _unsafe(archive, str(exc)) from exc
    except ARCHIVE_ERRORS as exc:
        raise BadInput(
            f"{archive} is not a valid archive ({describe_archive_error(exc)})",
            next_step="download the archive again or use another source",
        ) from exc
    except OSError as exc:
        raise classify_failure(exc, url=str(archive)) from exc


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for member in members:
            _check_member_name(archive, member.name)
            if member.issym() or member.islnk():
                base = posixpath.dirname(member.name) if member.issym() else ""
                _check_member_name(archive, posixpath.join(base, member.linkname), link_of=member.name)
            elif not (member.isfile() or member.isdir()):
                raise _unsafe(archive, f"{member.name!r} is a device or FIFO, not a file")
        if hasattr(tarfile, "data_filter"):
            # The "data" filter (PEP 706) checks the same again and drops unsafe modes.
            tar.extractall(dest, members=members, filter="data")
        else:  # pragma: no cover (Python < 3.11.4 has no extraction filters)
            tar.extractall(dest, members=members)  # noqa: S202 (every member was checked above)


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zipped:
        infos = zipped.infolist()
        for info in infos:
            _check_member_name(archive, info.filename)
        for info in infos:
            target = Path(zipped.extract(info, dest))
            mode = (info.external_attr >> 16) & 0o777
            if mode & 0o111 and not info.is_dir():
                target.chmod(0o755)  # zipfile drops the executable bit that scripts need


def _check_member_name(archive: Path, name: str, *, link_of: str | None = None) -> None:
    normalized = name.replace("\\", "/")
    parts = PurePosixPath(posixpath.normpath(normalized) if link_of else normalized).parts
    if normalized.startswith("/") or re.match(r"[A-Za-z]:", normalized) or ".." in parts:
        what = f"the link {link_of!r} points to {name!r}" if link_of else f"the member {name!r}"
        raise _unsafe(archive, f"{what}, which is outside the extraction directory")


def _unsafe(archive: Path, detail: str) -> BadInput:
    return BadInput(
        f"refusing to extract {archive.name}: {detail}",
        next_step="use an archive from a trusted source; nothing from this one was installed",
    )
