"""Candidates that misbehave, run as a user would: `invoke crossval-per-token` against the real
pinned llama.cpp, with `py:` and `cmd:` candidates that exit, crash, print, hang, keep their
output open, write FIFOs, devices or lying headers, cannot start, print without end, or are
stopped with the suite.

A candidate can never end the suite or choose its exit code: whatever it does is its failure
(exit 11, one sentence, its last lines shown above it); nothing it writes is opened unless it
is a regular file with a consistent header; no candidate, child or temporary directory outlives
the run, however the run ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, wait_for
from tests.integration.crossval.conftest import CrossvalCache, assert_one_error, json_error, strict_json

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

CANDIDATES = Path(__file__).with_name("candidate_fns.py")
PY = "py:tests.integration.crossval.candidate_fns"
TOKENS_FILE = Path(__file__).with_name("four_tokens.txt")
ARGS = ("--tokens-file", str(TOKENS_FILE), "--max-tokens", "2")  # 6 positions on the default synthetic model


def program(mode: str, *extra: str) -> str:
    return f"cmd:{sys.executable} {CANDIDATES} {mode} {{model}} {{tokens}} {{out}} {' '.join(extra)}".rstrip()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent to reap it does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def gone_soon(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def processes_running(marker: str) -> list[int]:
    """Pids whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline and alive(int(entry.name)):
                found.append(int(entry.name))
    return found


# --- py: a candidate cannot end the suite ---------------------------------------------------------

PY_CASES = [
    ("exits_0", "called sys.exit(0) instead of returning logits"),
    ("exits_3", "called sys.exit(3) instead of returning logits"),
    ("os_exit_0", "ended its process with exit code 0 before returning logits (os._exit, or a crash)"),
    ("raises_base_exception", "raised CandidateStop: the candidate's own BaseException"),
    ("segfaults", "was killed by signal 11 before returning logits"),
    ("returns_str", "returned str, expected a float array of shape [n_tokens, n_vocab] = [6, 32000]"),
]


@pytest.mark.parametrize(("function", "fragment"), PY_CASES, ids=[f for f, _ in PY_CASES])
def test_whatever_a_py_candidate_does_is_its_failure(
    crossval_cache: CrossvalCache, function: str, fragment: str
) -> None:
    result = crossval_cache.run(*ARGS, "--candidate", f"{PY}:{function}", "--format", "json")
    line = assert_one_error(result, 11, f"the candidate {PY}:{function} {fragment}")
    document = json_error(result, 11)
    assert document["error"]["message"] == line.removeprefix("error: ")


def test_a_py_candidate_that_exits_while_imported_is_its_failure(crossval_cache: CrossvalCache) -> None:
    candidate = "py:tests.integration.crossval.exits_on_import:logits"
    result = crossval_cache.run(*ARGS, "--candidate", candidate, "--format", "json")
    assert_one_error(
        result,
        11,
        f"the candidate {candidate} called sys.exit(0) instead of returning logits while its module "
        "tests.integration.crossval.exits_on_import was imported",
    )
    json_error(result, 11)
    assert "cross-validation: the reference generates" not in result.stderr  # found when the candidate was made


def test_a_py_candidate_that_prints_leaves_stdout_one_json_document(crossval_cache: CrossvalCache) -> None:
    result = crossval_cache.run(*ARGS, "--candidate", f"{PY}:prints_then_engine", "--format", "json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert strict_json(result.stdout)["verdict"] == "parity"
    assert "CANDIDATE-PRINTS" not in result.stdout + result.stderr  # captured, not shown: it succeeded


def test_a_failing_py_candidate_shows_its_last_lines_and_no_traceback(crossval_cache: CrossvalCache) -> None:
    result = crossval_cache.run(*ARGS, "--candidate", f"{PY}:prints_then_raises", "--format", "json")
    assert_one_error(result, 11, "raised RuntimeError: the candidate's own bug")
    json_error(result, 11)
    before = result.stderr.split("error:", 1)[0]
    assert "CANDIDATE-SAYS: about to raise on purpose" in before


def test_a_hanging_py_candidate_is_stopped_after_its_timeout(crossval_cache: CrossvalCache, tmp_path: Path) -> None:
    pid_file = tmp_path / "candidate.pid"
    env = {**crossval_cache.env, "CANDIDATE_PID_FILE": str(pid_file)}
    started = time.monotonic()
    result = crossval_cache.run(*ARGS, "--candidate", f"{PY}:sleeps", "--candidate-timeout", "3", env=env)
    assert_one_error(result, 11, "did not finish within 3s and was stopped")
    assert time.monotonic() - started < 120
    assert gone_soon(int(pid_file.read_text().split()[0]))


# --- cmd: time limits hold, whatever the candidate leaves running ----------------------------------


def test_a_child_holding_the_output_open_does_not_defeat_the_time_limit(crossval_cache: CrossvalCache) -> None:
    marker = "417.25"  # a sleep no other process runs
    started = time.monotonic()
    result = crossval_cache.run(*ARGS, "--candidate", f"cmd:sh -c 'sleep {marker}; true'", "--candidate-timeout", "3")
    elapsed = time.monotonic() - started
    assert_one_error(result, 11, "did not finish within 3s and was stopped")
    assert elapsed < 60, elapsed
    assert processes_running(f"sleep {marker}") == []


def test_a_candidate_that_exits_leaving_a_child_on_its_output_is_not_waited_for(
    crossval_cache: CrossvalCache, tmp_path: Path
) -> None:
    child_pid = tmp_path / "child.pid"
    env = {**crossval_cache.env, "CANDIDATE_CHILD_PID_FILE": str(child_pid)}
    started = time.monotonic()
    result = crossval_cache.run(*ARGS, "--candidate", program("keeps_stdout"), "--format", "json", env=env)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-3000:]
    assert strict_json(result.stdout)["verdict"] == "parity"
    assert elapsed < 120, elapsed  # the child sleeps 300 s
    assert gone_soon(int(child_pid.read_text()))  # stopped with the candidate's group


# --- cmd: nothing but a regular file is opened ----------------------------------------------------

OUTPUT_CASES = [
    ("fifo_out", "it is a FIFO (named pipe), not a regular file"),
    ("device_out", "it is a character device (through a symbolic link), not a regular file"),
    ("empty", "it is empty"),
    ("huge_header", "its header describes a float32 array of shape [4611686018427387904, 1] (18446744073709551616 "
     "bytes of data), but the file holds 34 bytes after the header"),
    ("garbage", "it is not in NumPy's .npy format"),
]  # fmt: skip


@pytest.mark.parametrize(("mode", "reason"), OUTPUT_CASES, ids=[m for m, _ in OUTPUT_CASES])
def test_output_that_is_no_readable_array_is_one_sentence_and_never_blocks(
    crossval_cache: CrossvalCache, mode: str, reason: str
) -> None:
    started = time.monotonic()
    result = crossval_cache.run(*ARGS, "--candidate", program(mode), "--format", "json")
    assert_one_error(result, 11, f"wrote candidate-logits.npy, which is not a readable .npy file ({reason})")
    json_error(result, 11)
    assert "allow_pickle" not in result.stderr and "unexpected" not in result.stderr
    assert time.monotonic() - started < 120


def test_a_candidate_that_replaces_its_directory_is_its_failure(crossval_cache: CrossvalCache) -> None:
    result = crossval_cache.run(*ARGS, "--candidate", program("replace_dir"), "--format", "json")
    assert_one_error(result, 11, "removed or replaced its working directory")
    json_error(result, 11)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("trace_fifo", "it is a FIFO (named pipe), not a regular file"),
        ("trace_device", "it is a character device (through a symbolic link), not a regular file"),
    ],
)
def test_a_trace_file_that_is_no_regular_file_never_blocks(
    crossval_cache: CrossvalCache, mode: str, reason: str
) -> None:
    started = time.monotonic()
    result = crossval_cache.run(*ARGS, "--candidate", program(mode, "{trace}"), "--trace", "--format", "json")
    assert_one_error(result, 11, f"wrote the trace file embd.npy, which is not a readable .npy file ({reason})")
    assert "allow_pickle" not in result.stderr
    assert time.monotonic() - started < 180


# --- cmd: a program that cannot start ---------------------------------------------------------------


def _bad_elf(tmp: Path) -> str:
    path = tmp / "bad-elf"
    path.write_bytes(b"\x7fELF" + bytes(60))
    path.chmod(0o755)
    return str(path)


def _not_executable(tmp: Path) -> str:
    path = tmp / "engine.py"
    path.write_text("print('never run')\n")
    return str(path)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda tmp: str(tmp), "(it is a directory)"),
        (_not_executable, "(it is not executable (permission denied))"),
        (_bad_elf, "(it is not a program this system can run"),
    ],
    ids=["directory", "not-executable", "bad-elf"],
)
def test_a_program_that_cannot_start_is_exit_11(
    crossval_cache: CrossvalCache, tmp_path: Path, make: object, reason: str
) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    result = crossval_cache.run(*ARGS, "--candidate", f"cmd:{path} {{model}} {{tokens}} {{out}}", "--format", "json")
    assert_one_error(result, 11, f"could not start: `{path}` {reason}")
    json_error(result, 11)


def test_the_model_as_the_program_cannot_start(crossval_cache: CrossvalCache) -> None:
    result = crossval_cache.run(*ARGS, "--candidate", "cmd:{model} {tokens} {out}")
    assert_one_error(result, 11, "could not start: `", ".gguf` (it is not executable (permission denied))")


# --- the {model} placeholder and a shell -----------------------------------------------------------------


@pytest.fixture
def crafted_model(crossval_cache: CrossvalCache, tmp_path: Path) -> tuple[Path, Path]:
    """A model whose path holds shell code, and the file that code would create."""
    from bitnet_crossval.crossval.synthetic import write_synthetic_model

    mark = tmp_path / "PWNED"
    model = write_synthetic_model(tmp_path / "m$(touch $PWNED_MARK).gguf", arch="llama", vocab=crossval_cache.vocab)
    return model, mark


def test_model_in_shell_code_runs_what_the_path_says(
    crossval_cache: CrossvalCache, crafted_model: tuple[Path, Path]
) -> None:
    """The hazard the candidate how-to warns of: `{model}` pasted into `sh -c` code."""
    model, mark = crafted_model
    env = {**crossval_cache.env, "PWNED_MARK": str(mark)}
    unsafe = f"cmd:sh -c '{sys.executable} {CANDIDATES} engine {{model}} {{tokens}} {{out}}'"
    result = crossval_cache.run("--model", str(model), *ARGS, "--candidate", unsafe, env=env)
    assert result.returncode == 11, result.stderr[-3000:]  # the path it got was not the model's
    assert mark.exists()


def test_model_as_a_positional_parameter_of_the_shell_is_safe(
    crossval_cache: CrossvalCache, crafted_model: tuple[Path, Path]
) -> None:
    """The safe form the how-to gives: the script is fixed text, the paths arrive as "$1" "$2" "$3"."""
    model, mark = crafted_model
    env = {**crossval_cache.env, "PWNED_MARK": str(mark)}
    safe = f"""cmd:sh -c '{sys.executable} {CANDIDATES} engine "$1" "$2" "$3"' sh {{model}} {{tokens}} {{out}}"""
    result = crossval_cache.run("--model", str(model), *ARGS, "--candidate", safe, "--format", "json", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert strict_json(result.stdout)["verdict"] == "parity"
    assert not mark.exists()


# --- a trace that writes nothing ----------------------------------------------------------------------


def test_a_candidate_that_takes_a_trace_and_writes_nothing_is_told_so(crossval_cache: CrossvalCache) -> None:
    result = crossval_cache.run(*ARGS, "--candidate", f"{PY}:accepts_trace_writes_nothing", "--trace")
    assert_one_error(result, 10, "the candidate wrote no trace, so the divergence cannot be located inside the model")
    assert "every traced tensor agrees" not in result.stderr


# --- memory: a candidate printing without end ---------------------------------------------------------


def test_a_candidate_printing_without_end_keeps_memory_bounded(crossval_cache: CrossvalCache) -> None:
    """`cmd:yes` for 8 s: the suite keeps the end of its output, not all of it (2.9 GB in 15 s
    before). The peak RSS of the suite is read by a parent that only waits for it."""
    measure = (
        "import resource, subprocess, sys; "
        "code = subprocess.run(sys.argv[1:]).returncode; "
        "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    argv = [sys.executable, "-c", measure, sys.executable, "-m", "invoke", "crossval-per-token", "--repair", "never"]
    argv += [*ARGS, "--candidate", "cmd:yes", "--candidate-timeout", "8"]
    done = subprocess.run(argv, cwd=REPO_ROOT, env=crossval_cache.env, capture_output=True, text=True, timeout=300)
    code, max_rss_kb = (int(x) for x in done.stdout.split()[-2:])
    assert code == 11, done.stderr[-3000:]
    assert "did not finish within 8s and was stopped" in done.stderr
    assert max_rss_kb < 600 * 1024, f"{max_rss_kb / 1024:.0f} MB"


# --- the suite stopped: the candidate and its directory go with it -------------------------------------


@pytest.mark.parametrize(
    ("signum", "code", "candidate"),
    [
        (signal.SIGTERM, 143, "cmd"),
        (signal.SIGHUP, 129, "cmd"),
        (signal.SIGINT, 130, "cmd"),
        (signal.SIGTERM, 143, "py"),
    ],
    ids=["sigterm-cmd", "sighup-cmd", "ctrl-c-cmd", "sigterm-py"],
)
def test_stopping_the_suite_stops_the_candidate_and_removes_its_directory(
    crossval_cache: CrossvalCache, tmp_path: Path, signum: int, code: int, candidate: str
) -> None:
    pid_file, dir_file = tmp_path / "candidate.pid", tmp_path / "candidate.dir"
    temp = tmp_path / "tmp"  # the suite's temporary directories go here, and must not stay
    temp.mkdir()
    env = {
        **crossval_cache.env,
        "CANDIDATE_PID_FILE": str(pid_file),
        "CANDIDATE_DIR_FILE": str(dir_file),
        "TMPDIR": str(temp),
    }
    spec = program("hang") if candidate == "cmd" else f"{PY}:sleeps"
    suite = subprocess.Popen(
        [sys.executable, "-m", "invoke", "crossval-per-token", "--repair", "never", *ARGS, "--candidate", spec],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(pid_file, timeout=240, proc=suite)
        time.sleep(0.5)  # the pid is written as the candidate starts: let it settle into its sleep
        pid = int(pid_file.read_text().split()[0])
        suite.send_signal(signum)
        _out, err = suite.communicate(timeout=60)
    finally:
        if suite.poll() is None:
            suite.kill()
            suite.wait()
    assert suite.returncode == code, err[-3000:]
    assert "Traceback" not in err
    assert gone_soon(pid), f"the candidate (pid {pid}) outlived the suite"
    if candidate == "cmd":
        assert str(temp) in dir_file.read_text()  # it did run in the suite's temporary directory
    assert list(temp.iterdir()) == [], "temporary files outlived the suite"
