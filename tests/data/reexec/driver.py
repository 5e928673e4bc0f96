"""A command that re-executes itself, driven by tests/integration/test_reexec_real.py.

Every incarnation appends one JSON line to the file named by REEXEC_TEST_RECORD, so the test
can count incarnations and compare their PIDs, arguments and environments. The first
incarnation (no BITNET_REPAIR_PARENT) calls reexec_current_command; a re-executed one prints
its record on stdout and ends the way the REEXEC_TEST_* variables say.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import sys
import time
from pathlib import Path
from types import FrameType

from bitnet_crossval.errors import SuiteError
from bitnet_crossval.repair.guard import is_repair_child
from bitnet_crossval.repair.reexec import reexec_current_command

PASSTHROUGH = ("BITNET_DETERMINISTIC", "BITNET_SEED", "BITNET_GPU_LAYERS", "BITNET_REPAIR_PARENT")
# A broken guard would re-execute forever; stop long before the test's timeout.
MAX_INCARNATIONS = 5


def record() -> tuple[dict[str, object], int]:
    path = Path(os.environ["REEXEC_TEST_RECORD"])
    entry: dict[str, object] = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "guard": is_repair_child(os.environ),
        "argv": sys.argv[1:],
        "orig_argv": sys.orig_argv,
        "executable": sys.executable,
        "cwd": os.getcwd(),
        "env": {name: os.environ.get(name) for name in PASSTHROUGH},
    }
    with path.open("a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")
    return entry, len(path.read_text(encoding="utf-8").splitlines())


def sabotage_interpreter() -> None:
    """Delete or replace our own interpreter, as a venv being recreated would; only the one the
    test named, so a mistake can never touch a real Python."""
    for variable in ("REEXEC_TEST_DELETE_INTERPRETER", "REEXEC_TEST_REPLACE_INTERPRETER"):
        target = os.environ.get(variable)
        if not target:
            continue
        if target != sys.executable:
            sys.stderr.write(f"driver: refusing to touch {sys.executable} (test named {target})\n")
            raise SystemExit(98)
        os.unlink(target)
        if variable == "REEXEC_TEST_REPLACE_INTERPRETER":
            # Executable, but no format the kernel can run: exec() fails with ENOEXEC.
            Path(target).write_bytes(b"\x00\x01 not a program\n")
            os.chmod(target, stat.S_IRWXU)


def announce(path: str) -> None:
    """Write our pid to a rendezvous file in one step: the test polls for the file and reads it at
    once, so it must never see the file created but still empty."""
    partial = Path(f"{path}.partial")
    partial.write_text(str(os.getpid()), encoding="utf-8")
    os.replace(partial, path)


def wait_for_sigterm() -> None:
    def on_sigterm(signum: int, _frame: FrameType | None) -> None:
        announce(os.environ["REEXEC_TEST_GOT_SIGTERM"])
        os._exit(7)

    signal.signal(signal.SIGTERM, on_sigterm)
    announce(os.environ["REEXEC_TEST_READY"])
    time.sleep(300)  # as long as the test waits for anything (tests.helpers.HANG_SECONDS): a slow test is no lost signal
    raise SystemExit(99)  # the signal never came


def finish() -> None:
    if os.environ.get("REEXEC_TEST_WAIT_FOR_SIGTERM") == "1":
        wait_for_sigterm()
    signal_name = os.environ.get("REEXEC_TEST_SIGNAL")
    if signal_name:
        os.kill(os.getpid(), signal.Signals[signal_name])
        time.sleep(5)
    raise SystemExit(int(os.environ.get("REEXEC_TEST_EXIT", "0")))


def main() -> None:
    entry, incarnations = record()
    if incarnations > MAX_INCARNATIONS:
        raise SystemExit(97)
    if not is_repair_child(os.environ):
        sabotage_interpreter()
        # Left in stdout's buffer on purpose (a pipe is block-buffered): exec would discard it
        # unless reexec flushes first.
        sys.stdout.write("first incarnation: unflushed line\n")
        try:
            reexec_current_command()
        except SuiteError as error:  # what the task layer does with it
            sys.stderr.write(error.render() + "\n")
            raise SystemExit(error.exit_code) from None
    sys.stdout.write(json.dumps(entry) + "\n")
    sys.stdout.flush()
    finish()


if __name__ == "__main__":
    main()
