"""What the machine offers a run: cores (affinity and a cgroup quota) and available memory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bitnet_crossval.util.machine import available_memory, cpu_quota, usable_cores


@pytest.mark.parametrize(
    ("text", "quota"),
    [
        ("max 100000\n", None),
        ("200000 100000\n", 2),
        ("150000 100000\n", 2),  # a core and a half keeps two busy part of the time
        ("50000 100000\n", 1),
        ("garbage\n", None),
        ("0 100000\n", None),
    ],
)
def test_the_cgroup_quota_in_whole_cores(tmp_path: Path, text: str, quota: int | None) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text(text)
    assert cpu_quota(cpu_max) == quota


def test_no_quota_file_is_no_quota(tmp_path: Path) -> None:
    assert cpu_quota(tmp_path / "missing") is None


def test_usable_cores_are_the_affinity_within_the_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    assert usable_cores(cpu_max) == affinity
    cpu_max.write_text("100000 100000\n")
    assert usable_cores(cpu_max) == 1
    cpu_max.write_text(f"{(affinity + 4) * 100000} 100000\n")
    assert usable_cores(cpu_max) == affinity  # a quota above the affinity changes nothing


def test_available_memory_reads_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 4096 kB\nMemAvailable: 2048 kB\n")
    assert available_memory(meminfo) == 2048 * 1024
    assert available_memory(tmp_path / "none") is None
