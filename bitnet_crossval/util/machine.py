"""What this machine offers a run now: the cores it may use and the memory still available."""

from __future__ import annotations

import os
from pathlib import Path

MEMINFO = Path("/proc/meminfo")
CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
"""cgroup v2's CPU quota of this process's group as a container sees it: ``max 100000``, or
``200000 100000`` for two cores' worth of time (``docker --cpus 2``, a Kubernetes limit)."""


def usable_cores(cpu_max: Path = CPU_MAX) -> int:
    """The cores this process may keep busy: its affinity mask (``taskset``, a CI job's cpuset),
    and no more than a cgroup CPU quota allows (rounded up)."""
    try:
        cores = len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # pragma: no cover (platforms without affinity)
        cores = os.cpu_count() or 1
    quota = cpu_quota(cpu_max)
    return max(1, min(cores, quota)) if quota is not None else cores


def cpu_quota(cpu_max: Path = CPU_MAX) -> int | None:
    """The cgroup v2 CPU quota in whole cores (rounded up), None when there is none or no file says."""
    try:
        fields = cpu_max.read_text(encoding="ascii", errors="replace").split()
        if len(fields) != 2 or fields[0] == "max":
            return None
        quota, period = int(fields[0]), int(fields[1])
    except (OSError, ValueError):
        return None
    if quota <= 0 or period <= 0:
        return None
    return -(-quota // period)


def available_memory(meminfo: Path = MEMINFO) -> int | None:
    """``MemAvailable`` in bytes (Linux), None where the system does not say."""
    try:
        for line in meminfo.read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
