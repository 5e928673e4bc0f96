"""An invoke collection whose task re-executes itself: run by tests/integration/test_reexec_real.py
as `python -m invoke -r tests/data/reexec -c reexec_tasks report ...`.

Named reexec_tasks, not tasks, because invoke registers the file it loads under its collection
name, which would hide the `tasks` package the task imports.
"""

from __future__ import annotations

import json
import os
import sys

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from bitnet_crossval.repair.guard import is_repair_child
from bitnet_crossval.repair.reexec import reexec_current_command


@task(iterable=["word"])
def report(c: Context, word: list[str], code: int = 0) -> None:
    """Re-execute once, then print what the re-executed process received."""
    if not is_repair_child(os.environ):
        target = os.environ.get("REEXEC_TEST_DELETE_INTERPRETER")
        if target:
            if target != sys.executable:
                raise Exit(f"refusing to delete {sys.executable} (test named {target})", code=98)
            os.unlink(target)
        sys.stderr.write(f"first incarnation pid: {os.getpid()}\n")
        reexec_current_command()
    print(
        json.dumps(
            {
                "pid": os.getpid(),
                "ppid": os.getppid(),
                "guard": is_repair_child(os.environ),
                "words": word,
                "argv": sys.argv[1:],
                "cwd": os.getcwd(),
            }
        )
    )
    raise Exit(code=code)
