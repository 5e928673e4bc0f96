"""What this machine offers a run now: the cores it may use and the memory still available."""

from __future__ import annotations

import os
from pathlib import Path

MEMINFO = Path("/proc/meminfo")


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, which a CI job's cgroup narrows)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # pragma: no cover (platforms without affinity)
        return os.cpu_count() or 1


def available_memory(meminfo: Path = MEMINFO) -> int | None:
    """``MemAvailable`` in bytes (Linux), None where the system does not say."""
    try:
        for line in meminfo.read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
