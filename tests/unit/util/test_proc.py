"""The subprocess wrapper's stdout file and its stop event, on real child processes."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

from bitnet_crossval.util import proc

PRINT_BOTH = "import sys; print('{\"ok\": true}'); print('a table', file=sys.stderr); sys.exit(3)"
SLEEPER = (
    "import signal, sys, time\n"
    "print('started', file=sys.stderr, flush=True)\n"
    "try:\n"
    "    time.sleep(60)\n"
    "except KeyboardInterrupt:\n"
    "    print('interrupted', file=sys.stderr)\n"
    "    sys.exit(130)\n"
)


def test_stdout_goes_to_its_file_and_only_stderr_is_kept(tmp_path: Path) -> None:
    out, log = tmp_path / "out.json", tmp_path / "log.txt"
    seen: list[str] = []
    done = proc.run([sys.executable, "-c", PRINT_BOTH], check=False, stdout_path=out, log_path=log, on_line=seen.append)
    assert done.returncode == 3
    assert out.read_text() == '{"ok": true}\n'
    assert done.output == "a table\n" and seen == ["a table"]
    logged = log.read_text().splitlines()
    assert logged[1:] == ["a table", logged[-1]] and logged[-1].startswith("# finished in")


def test_a_stop_event_interrupts_the_child_as_ctrl_c_would() -> None:
    stop = threading.Event()
    started = threading.Event()

    def on_line(line: str) -> None:
        if line == "started":
            started.set()

    def stop_when_started() -> None:
        started.wait(60)
        stop.set()

    threading.Thread(target=stop_when_started, daemon=True).start()
    began = time.monotonic()
    done = proc.run([sys.executable, "-c", SLEEPER], check=False, stop=stop, on_line=on_line)
    assert done.returncode == 130 and "interrupted" in done.output
    assert time.monotonic() - began < 30


def test_a_child_that_ignores_the_interrupt_is_killed_after_the_grace() -> None:
    stop = threading.Event()
    script = (
        "import signal, sys, time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
        "print('ignoring', file=sys.stderr, flush=True); time.sleep(60)"
    )

    def on_line(line: str) -> None:
        if line == "ignoring":
            stop.set()

    began = time.monotonic()
    done = proc.run([sys.executable, "-c", script], check=False, stop=stop, on_line=on_line)
    assert done.returncode == 128 + signal.SIGKILL
    assert time.monotonic() - began < 30


def test_without_a_stop_nothing_watches() -> None:
    done = proc.run([sys.executable, "-c", "print('hi')"], check=False)
    assert done.returncode == 0 and done.output == "hi\n"
