"""The two ways the suite writes a moment: in records, and in file names."""

from __future__ import annotations

import time


def now_iso() -> str:
    """Local time with its UTC offset, as recorded in markers, lock notes and the constants file."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def file_stamp() -> str:
    """Local time for a file name (sortable, no characters a file system may refuse)."""
    return time.strftime("%Y%m%d-%H%M%S")
