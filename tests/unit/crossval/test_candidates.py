"""Candidates: parsing --candidate, the output check, and the cmd: and py: protocols with tiny
fake candidates (small Python programs and modules written into the test's directory)."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bitnet_crossval.crossval import nonfinite
from bitnet_crossval.crossval.candidates import TraceRequest, check_logits, parse_candidate
from bitnet_crossval.crossval.candidates.command import CommandCandidate, CommandSpec
from bitnet_crossval.crossval.candidates.numpy_engine import NumpySpec
from bitnet_crossval.crossval.candidates.python import PythonCandidate, PythonSpec
from bitnet_crossval.errors import BadInput, CandidateFailed

N_VOCAB = 11
TOKENS = np.array([1, 5, 7], dtype=np.int32)


def cmd_spec(text: str) -> CommandSpec:
    spec = parse_candidate(text)
    assert isinstance(spec, CommandSpec)
    return spec


def py_spec(text: str) -> PythonSpec:
    spec = parse_candidate(text)
    assert isinstance(spec, PythonSpec)
    return spec


# --- parse_candidate ------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "numpy", "  numpy  "])
def test_numpy_is_the_default(text: str) -> None:
    spec = parse_candidate(text)
    assert isinstance(spec, NumpySpec)
    assert (spec.kind, spec.label, spec.fault) == ("numpy", "numpy", None)


def test_numpy_with_a_fault() -> None:
    spec = parse_candidate("numpy:rope_type")
    assert isinstance(spec, NumpySpec)
    assert (spec.kind, spec.fault, spec.label) == ("numpy", "rope_type", "numpy:rope_type")


@pytest.mark.parametrize("backend", ["llama", "bitnet"])
def test_a_backend_as_candidate(backend: str) -> None:
    assert parse_candidate(backend).kind == backend


def test_cmd_is_split_like_a_shell_without_one() -> None:
    spec = parse_candidate("cmd:my-engine --model '{model}' \"two words\" {tokens} {out}")
    assert isinstance(spec, CommandSpec)
    assert spec.kind == "cmd"
    assert spec.argv == ("my-engine", "--model", "{model}", "two words", "{tokens}", "{out}")
    assert spec.label == "cmd:my-engine --model '{model}' \"two words\" {tokens} {out}"
    assert not spec.can_trace
    assert parse_candidate("cmd:e {model} {tokens} {out} --trace {trace}").can_trace


def test_py_names_a_module_and_a_function() -> None:
    spec = parse_candidate("py:pkg.sub.module:logits")
    assert isinstance(spec, PythonSpec)
    assert (spec.kind, spec.module, spec.function) == ("py", "pkg.sub.module", "logits")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("torch", "is not a candidate"),
        ("NUMPY", "is not a candidate"),
        ("numpy:", "is not a fault the numpy engine can make"),
        ("numpy:bogus", "is not a fault the numpy engine can make"),
        ("cmd:", "names no command"),
        ("cmd:   ", "names no command"),
        ("cmd:'open", "cannot be split"),
        ("py:", "is not py:module:function"),
        ("py:module", "is not py:module:function"),
        ("py::function", "is not py:module:function"),
        ("py:module:", "is not py:module:function"),
        ("py:module:not-a-name", "is not py:module:function"),
        ("py:module:1st", "is not py:module:function"),
    ],
)
def test_bad_specs_are_bad_input(text: str, fragment: str) -> None:
    with pytest.raises(BadInput, match="--candidate") as info:
        parse_candidate(text)
    assert fragment in info.value.message
    assert info.value.exit_code == 6 and info.value.next_step


# --- check_logits -----------------------------------------------------------------------------------


def check(array: Any, n_tokens: int = 3) -> np.ndarray:
    return check_logits(array, label="cmd:x", n_tokens=n_tokens, n_vocab=N_VOCAB)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_arrays_of_the_right_shape_are_accepted_as_float32(dtype: Any) -> None:
    out = check(np.ones((3, N_VOCAB), dtype=dtype))
    assert out.dtype == np.float32 and out.shape == (3, N_VOCAB)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ([[0.0] * N_VOCAB] * 3, "returned list"),
        (None, "returned NoneType"),
        (np.zeros((3, N_VOCAB), dtype=np.int32), "returned dtype int32"),
        (np.zeros((3, N_VOCAB), dtype=bool), "returned dtype bool"),
        (np.zeros((3, N_VOCAB), dtype=np.complex64), "returned dtype complex64"),
        (np.zeros((N_VOCAB, 3), dtype=np.float32), f"returned shape [{N_VOCAB}, 3]"),
        (np.zeros(3 * N_VOCAB, dtype=np.float32), f"returned shape [{3 * N_VOCAB}]"),
        (np.zeros((1, 3, N_VOCAB), dtype=np.float32), f"returned shape [1, 3, {N_VOCAB}]"),
        (np.zeros((2, N_VOCAB), dtype=np.float32), f"returned shape [2, {N_VOCAB}]"),
    ],
)
def test_anything_else_is_a_candidate_failure_naming_what_was_expected(value: Any, fragment: str) -> None:
    with pytest.raises(CandidateFailed) as info:
        check(value)
    message = info.value.message
    assert fragment in message and "the candidate cmd:x" in message
    assert f"[n_tokens, n_vocab] = [3, {N_VOCAB}]" in message
    assert info.value.exit_code == 11


def test_non_finite_values_pass_the_check_and_are_located_by_the_comparison() -> None:
    logits = np.zeros((5, N_VOCAB), dtype=np.float32)
    logits[1, 3] = np.nan
    logits[3, 0] = np.inf
    logits[4, 1] = -np.inf
    found = nonfinite.find(check(logits, n_tokens=5), side="candidate", label="the candidate cmd:x")
    assert found is not None and found.positions == [1, 3, 4]
    assert (found.counts.nan, found.counts.pos_inf, found.counts.neg_inf) == (1, 1, 1)
    assert found.exit_code == 11


def test_float64_values_beyond_float32_become_infinity_and_are_located() -> None:
    logits = np.zeros((3, N_VOCAB), dtype=np.float64)
    logits[0, 0] = 1e300
    found = nonfinite.find(check(logits), side="candidate", label="the candidate cmd:x")
    assert found is not None and found.positions == [0] and found.counts.pos_inf == 1


# --- cmd: ----------------------------------------------------------------------------------------

PROGRAM = textwrap.dedent(
    """
    import os, subprocess, sys, time
    import numpy as np
    mode, model, tokens, out = sys.argv[1:5]
    ids = np.load(tokens)
    print("fake candidate here", mode, file=sys.stderr)
    if mode == "ok":
        assert ids.dtype == np.int32 and ids.ndim == 1
        logits = np.zeros((len(ids), int(sys.argv[5])), dtype=np.float32)
        logits[np.arange(len(ids)), ids] = 1.0  # a recognisable answer
        np.save(out, logits)
    elif mode == "fail":
        sys.exit(7)
    elif mode == "sleep":
        time.sleep(60)
    elif mode == "garbage":
        open(out, "wb").write(b"nope")
    elif mode == "fifo":
        os.mkfifo(out)
    elif mode == "empty":
        open(out, "wb").close()
    elif mode == "huge":
        np.save(out, np.zeros((2, 2), dtype=np.float32))
        raw = open(out, "rb").read().replace(b"(2, 2)", b"(4611686018427387904, 1)")
        open(out, "wb").write(raw)
    elif mode == "device":
        os.symlink("/dev/zero", out)
    elif mode == "replace_dir":
        import shutil
        shutil.rmtree(os.path.dirname(out))
        open(os.path.dirname(out), "w").write("not a directory")
    elif mode == "pickle":
        np.save(out, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif mode == "signal":
        os.kill(os.getpid(), 9)
    """
)


@pytest.fixture
def program(tmp_path: Path) -> Path:
    path = tmp_path / "fake_candidate.py"
    path.write_text(PROGRAM)
    return path


def command(program: Path | str, mode: str = "", *, timeout: float = 60, placeholders: bool = True) -> CommandCandidate:
    extra = f"{{model}} {{tokens}} {{out}} {N_VOCAB}" if placeholders else ""
    spec = cmd_spec(f"cmd:{sys.executable} {program} {mode} {extra}" if mode else f"cmd:{program} {extra}")
    return CommandCandidate(spec, env={"PATH": str(Path(sys.executable).parent)}, n_vocab=N_VOCAB, timeout=timeout)


def test_argv_placeholders_are_filled_anywhere_in_an_argument(tmp_path: Path) -> None:
    spec = cmd_spec("cmd:engine --model={model} --ids {tokens} -o {out} --trace={trace}")
    candidate = CommandCandidate(spec, env={}, n_vocab=N_VOCAB, timeout=1)
    m, t, o = tmp_path / "m.gguf", tmp_path / "t.npy", tmp_path / "o.npy"
    assert candidate.argv_for(model=m, tokens=t, out=o, trace=None) == [
        "engine", f"--model={m}", "--ids", str(t), "-o", str(o), "--trace=",
    ]  # fmt: skip
    assert candidate.argv_for(model=m, tokens=t, out=o, trace=tmp_path)[-1] == f"--trace={tmp_path}"


def test_without_placeholders_the_three_paths_are_appended(tmp_path: Path) -> None:
    candidate = CommandCandidate(cmd_spec("cmd:engine --fast"), env={}, n_vocab=N_VOCAB, timeout=1)
    argv = candidate.argv_for(model=tmp_path / "m", tokens=tmp_path / "t", out=tmp_path / "o", trace=None)
    assert argv == ["engine", "--fast", str(tmp_path / "m"), str(tmp_path / "t"), str(tmp_path / "o")]


def test_a_command_candidate_that_works(program: Path, tmp_path: Path) -> None:
    out = command(program, "ok").run(tmp_path / "m.gguf", TOKENS, work_dir=tmp_path, trace=False)
    assert out.logits.shape == (3, N_VOCAB) and out.logits.dtype == np.float32
    assert [int(i) for i in out.logits.argmax(axis=1)] == TOKENS.tolist()
    assert out.seconds > 0 and out.trace_dir is None
    assert out.details["argv"][0] == sys.executable


def test_each_run_gets_a_new_directory(program: Path, tmp_path: Path) -> None:
    candidate = command(program, "ok")
    first = candidate.run(tmp_path / "m.gguf", TOKENS, work_dir=tmp_path, trace=False).details["argv"]
    second = candidate.run(tmp_path / "m.gguf", TOKENS, work_dir=tmp_path, trace=False).details["argv"]
    assert Path(first[-2]).parent != Path(second[-2]).parent  # {out} of two runs
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["candidate-1", "candidate-2"]


def test_a_command_that_fails_is_a_candidate_failure_with_its_output_kept(program: Path, tmp_path: Path) -> None:
    with pytest.raises(CandidateFailed, match="exited with code 7") as info:
        command(program, "fail").run(tmp_path / "m.gguf", TOKENS, work_dir=tmp_path, trace=False)
    assert "fake candidate here fail" in info.value.detail


def test_a_command_killed_by_a_signal_says_so(program: Path, tmp_path: Path) -> None:
    with pytest.raises(CandidateFailed, match="was killed by signal 9"):
        command(program, "signal").run(tmp_path / "m.gguf", TOKENS, work_dir=tmp_path, trace=False)


def test_a_command_that_hangs_is_stopped(program: Path, tmp_path: Path) -> None:
    with pytest.raises(CandidateFailed, match=r"did not finish within 0\.5s and was stopped") as info:
        command(program, "sleep", timeout=0.5).run(tmp_path / "m.gguf", TOKENS, work_dir=tmp_path, trace=False)
    assert "--candidate-timeout" in info.value.next_step


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("garbage", "it is not in NumPy's .npy format"),
        ("empty", "it is empty"),
        ("fifo", "it is a FIFO (named pipe), not a regular file"),
        ("device", "it is a character device (through a symbolic link), not a regular file"),
        ("huge", "its header describes a float32 array of shape [4611686018427387904, 1]"),
        ("pickle", "it holds Python objects (a pickle), which are never loaded"),
    ],
)
def test_output_that_cannot_be_read_is_one_sentence(program: Path, tmp_path: Path, mode: str, reason: str) -> None:
    with pytest.raises(CandidateFailed) as info:
        command(program, mode).run(tmp_path / "m.gguf", TOKENS, work_dir=tmp_path, trace=False)
    assert "wrote candidate-logits.npy, which is not a readable .npy file" in info.value.message
    assert reason in info.value.message


def test_output_never_written_is_one_sentence(program: Path, tmp_path: Path) -> None:
    with pytest.raises(CandidateFailed, match=r"finished but wrote no candidate-logits\.npy"):
        command(program, "none").run(tmp_path / "m.gguf", TOKENS, work_dir=tmp_path, trace=False)


def test_a_candidate_that_replaces_its_directory_is_its_failure(program: Path, tmp_path: Path) -> None:
    with pytest.raises(CandidateFailed, match="removed or replaced its working directory"):
        command(program, "replace_dir").run(tmp_path / "m.gguf", TOKENS, work_dir=tmp_path, trace=False)


def _not_executable(tmp_path: Path) -> str:
    path = tmp_path / "plain.txt"
    path.write_text("just text\n")
    return str(path)


def _bad_elf(tmp_path: Path) -> str:
    path = tmp_path / "bad-elf"
    path.write_bytes(b"\x7fELF" + b"\x00" * 60)
    path.chmod(0o755)
    return str(path)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda tmp: str(tmp / "nope"), "was not found"),
        (lambda tmp: "no-such-program-on-path-xyz", "was not found"),
        (lambda tmp: str(tmp), "(it is a directory)"),
        (_not_executable, "(it is not executable (permission denied))"),
        (_bad_elf, "(it is not a program this system can run"),
    ],
    ids=["missing", "not-on-path", "directory", "not-executable", "bad-elf"],
)
def test_a_program_that_cannot_start_is_a_candidate_failure(tmp_path: Path, make: Any, reason: str) -> None:
    program = make(tmp_path)
    with pytest.raises(CandidateFailed) as info:
        command(program).run(tmp_path / "m.gguf", TOKENS, work_dir=tmp_path / "work", trace=False)
    assert f"could not start: `{program}" in info.value.message
    assert reason in info.value.message and info.value.exit_code == 11


# --- py: -------------------------------------------------------------------------------------------

MODULE = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from bitnet_crossval.errors import BadInput

    N_VOCAB = 11
    not_callable = 3

    class Stop(BaseException):
        pass

    def good(model_path, tokens):
        assert isinstance(model_path, str) and tokens.dtype == np.int32
        print("the candidate prints on stdout")
        return np.ones((len(tokens), N_VOCAB), dtype=np.float32)

    def traced(model_path, tokens, trace=None):
        if trace is not None:
            np.save(trace + "/l_out-0.npy", np.zeros((len(tokens), 4), dtype=np.float32))
        return np.ones((len(tokens), N_VOCAB), dtype=np.float32)

    def raises(model_path, tokens):
        print("CANDIDATE-SAYS before the error")
        raise RuntimeError("no\\n   such   layer")

    def silent_raise(model_path, tokens):
        raise ValueError()

    def suite_error(model_path, tokens):
        raise BadInput("the candidate's own bad input", next_step="fix it")

    def exits_0(model_path, tokens):
        sys.exit(0)

    def exits_3(model_path, tokens):
        sys.exit(3)

    def os_exit(model_path, tokens):
        os._exit(0)

    def base_exception(model_path, tokens):
        raise Stop("stop here")

    def interrupts(model_path, tokens):
        raise KeyboardInterrupt

    def returns_str(model_path, tokens):
        return "logits"

    def returns_objects(model_path, tokens):
        return np.array([None, 1], dtype=object)

    def closes_stdout(model_path, tokens):
        sys.stdout.close()
        return np.ones((len(tokens), N_VOCAB), dtype=np.float32)

    def drops_streams(model_path, tokens):
        sys.stdout = sys.stderr = None
        return np.ones((len(tokens), N_VOCAB), dtype=np.float32)
    """
)


@pytest.fixture
def module_name(tmp_path: Path) -> str:
    name = f"fake_py_candidate_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    (tmp_path / "broken_on_import.py").write_text("raise RuntimeError('import-time failure')\n")
    (tmp_path / "exits_on_import.py").write_text("import sys\nsys.exit(0)\ndef f(m, t):\n    return None\n")
    return name


def py(module: str, function: str, tmp_path: Path, *, timeout: float = 120) -> PythonCandidate:
    # The child process finds the module through PYTHONPATH, as a user's would through the
    # current directory or an installed package.
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    return PythonCandidate(py_spec(f"py:{module}:{function}"), n_vocab=N_VOCAB, env=env, timeout=timeout)


def test_a_python_candidate_that_works(module_name: str, tmp_path: Path) -> None:
    tokens = TOKENS.copy()
    out = py(module_name, "good", tmp_path).run(tmp_path / "m.gguf", tokens, work_dir=tmp_path, trace=False)
    assert out.logits.shape == (3, N_VOCAB)
    assert out.trace_dir is None
    assert out.details["process_seconds"] >= out.seconds > 0


def test_the_trace_keyword_is_passed_only_when_asked_and_accepted(module_name: str, tmp_path: Path) -> None:
    candidate = py(module_name, "traced", tmp_path)
    assert candidate.accepts_trace and not py(module_name, "good", tmp_path).accepts_trace
    assert candidate.run(tmp_path / "m", TOKENS, work_dir=tmp_path, trace=False).trace_dir is None
    out = candidate.run(tmp_path / "m", TOKENS, work_dir=tmp_path, trace=True)
    assert out.trace_dir is not None and (out.trace_dir / "l_out-0.npy").is_file()


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("raises", "raised RuntimeError: no such layer"),
        ("silent_raise", "raised ValueError: (no message)"),
        ("suite_error", "raised BadInput: the candidate's own bad input"),
        ("base_exception", "raised Stop: stop here"),
        ("interrupts", "raised KeyboardInterrupt: (no message)"),
        ("exits_0", "called sys.exit(0) instead of returning logits"),
        ("exits_3", "called sys.exit(3) instead of returning logits"),
        ("os_exit", "ended its process with exit code 0 before returning logits"),
        ("returns_str", "returned str, expected a float array of shape [n_tokens, n_vocab] = [3, 11]"),
        ("returns_objects", "returned an array of dtype object, expected"),
    ],
)
def test_whatever_the_function_does_is_its_failure(
    module_name: str, tmp_path: Path, function: str, message: str
) -> None:
    with pytest.raises(CandidateFailed) as info:
        py(module_name, function, tmp_path).run(tmp_path / "m", TOKENS, work_dir=tmp_path, trace=False)
    assert message in info.value.message and "\n" not in info.value.message
    assert info.value.exit_code == 11


@pytest.mark.parametrize("function", ["closes_stdout", "drops_streams"])
def test_a_function_that_closes_or_drops_its_streams_still_returns(
    module_name: str, tmp_path: Path, function: str
) -> None:
    out = py(module_name, function, tmp_path).run(tmp_path / "m", TOKENS, work_dir=tmp_path, trace=False)
    assert out.logits.shape == (3, N_VOCAB)


def test_an_exception_shows_the_candidates_output_but_no_traceback(module_name: str, tmp_path: Path) -> None:
    with pytest.raises(CandidateFailed) as info:
        py(module_name, "raises", tmp_path).run(tmp_path / "m", TOKENS, work_dir=tmp_path, trace=False)
    assert "CANDIDATE-SAYS before the error" in info.value.detail
    assert "Traceback" not in info.value.detail
    assert "--verbose" in info.value.next_step


def test_a_python_candidate_that_hangs_is_stopped(tmp_path: Path) -> None:
    (tmp_path / "sleepy_candidate.py").write_text("import time\ndef f(m, t):\n    time.sleep(60)\n")
    with pytest.raises(CandidateFailed, match=r"did not finish within 1s and was stopped"):
        py("sleepy_candidate", "f", tmp_path, timeout=1).run(tmp_path / "m", TOKENS, work_dir=tmp_path, trace=False)


@pytest.mark.parametrize(
    ("target", "error", "fragment"),
    [
        ("no_such_module_anywhere:f", BadInput, "cannot be imported (ModuleNotFoundError"),
        ("broken_on_import:f", BadInput, "cannot be imported (RuntimeError: import-time failure)"),
        ("{module}:missing", BadInput, "has no function 'missing'"),
        ("{module}:not_callable", BadInput, "has no function 'not_callable'"),
        ("exits_on_import:f", CandidateFailed, "called sys.exit(0) instead of returning logits while its module"),
    ],
)
def test_functions_that_cannot_be_loaded_are_found_when_the_candidate_is_made(
    module_name: str, tmp_path: Path, target: str, error: type[Exception], fragment: str
) -> None:
    module, _, function = target.format(module=module_name).partition(":")
    with pytest.raises(error) as info:
        py(module, function, tmp_path)
    assert fragment in str(info.value)


def test_the_current_directory_is_importable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cwd_candidate_mod.py").write_text(
        "import numpy as np\ndef f(m, t):\n    return np.zeros((len(t), 11), dtype=np.float32)\n"
    )
    monkeypatch.chdir(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    spec = PythonSpec(kind="py", text="py:cwd_candidate_mod:f", module="cwd_candidate_mod", function="f")
    out = PythonCandidate(spec, n_vocab=N_VOCAB, env=env).run(tmp_path / "m", TOKENS, work_dir=tmp_path, trace=False)
    assert out.logits.shape == (3, N_VOCAB)


def test_a_trace_directory_replaced_by_a_link_to_a_device_is_the_candidates_failure(tmp_path: Path) -> None:
    script = tmp_path / "relink.py"
    script.write_text(
        "import os, sys\nimport numpy as np\n"
        "out, trace, n = sys.argv[1], sys.argv[2], int(sys.argv[3])\n"
        "np.save(out, np.ones((3, n), np.float32))\n"
        "if trace:\n    os.rmdir(trace)\n    os.symlink('/dev/null', trace)\n"
    )
    spec = cmd_spec(f"cmd:{sys.executable} {script} {{out}} {{trace}} {N_VOCAB}")
    candidate = CommandCandidate(spec, env={"PATH": str(Path(sys.executable).parent)}, n_vocab=N_VOCAB, timeout=60)
    assert candidate.run(tmp_path / "m.gguf", TOKENS, work_dir=tmp_path / "w", trace=False).trace_dir is None
    with pytest.raises(CandidateFailed, match=r"removed or replaced its trace directory .*candidate-2/trace"):
        candidate.trace(tmp_path / "m.gguf", TOKENS, request=TraceRequest(positions=[0, 1]), work_dir=tmp_path / "w")
    assert Path("/dev/null").exists()  # nothing was written through the link
