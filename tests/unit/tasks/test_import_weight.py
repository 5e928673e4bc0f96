"""Every ``invoke`` run, even ``invoke --list``, imports the task collection: it must not bring
NumPy or the crossval's run with it (their cost is paid by the commands that use them), nor the
repair, the detection, the cache or the subprocess machinery (the option tables are declared in
light modules; ``preflight`` imports what it runs when it runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bitnet_crossval.crossval.candidates import syntaxes
from bitnet_crossval.crossval.defaults import CANDIDATE_SYNTAXES

ROOT = Path(__file__).resolve().parents[3]
HEAVY = ("numpy", "bitnet_crossval.crossval.run", "bitnet_crossval.crossval.candidates", "bitnet_crossval.suite.runner")
NOT_AT_START = (
    "bitnet_crossval.repair.preflight",
    "bitnet_crossval.repair.rebuild",
    "bitnet_crossval.backends.detect",
    "bitnet_crossval.context",
    "bitnet_crossval.store.constants",
    "bitnet_crossval.provision.cmake",
    "bitnet_crossval.suite.shard",
    "bitnet_crossval.util.proc",
)

PROBE = """
import json, sys
{load}
print(json.dumps(sorted(sys.modules)))
"""


def modules_after(load: str) -> set[str]:
    """The modules a fresh interpreter holds after ``load``, run from the checkout's root."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(load=load)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_importing_the_tasks_does_not_import_numpy_or_the_run() -> None:
    modules = modules_after("import tasks")
    assert "bitnet_crossval.tasks" in modules  # the probe did load the collection
    assert not [name for name in HEAVY if name in modules]


def test_invokes_collection_loader_does_not_import_numpy_or_the_run() -> None:
    modules = modules_after("from invoke.loader import FilesystemLoader\nFilesystemLoader(start='.').load('tasks')\n")
    assert "bitnet_crossval.tasks" in modules
    assert not [name for name in HEAVY if name in modules]


def test_importing_the_tasks_does_not_import_the_repair_or_the_subprocess_machinery() -> None:
    modules = modules_after("import tasks")
    assert "bitnet_crossval.repair.options" in modules  # the tables the commands declare are there
    assert [name for name in NOT_AT_START if name in modules] == []


def test_the_candidate_help_names_every_built_in_kind() -> None:
    assert syntaxes() == CANDIDATE_SYNTAXES
