"""Candidates: parsing --candidate, the output check, and the cmd: and py: protocols with tiny
fake candidates (small Python programs and modules written into the test's directory)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bitnet_crossval.crossval.candidates import check_logits, parse_candidate
from bitnet_crossval.crossval.candidates.command import CommandCandidate, CommandSpec
from bitnet_crossval.crossval.candidates.numpy_engine import NumpySpec
from bitnet_crossval.crossval.candidates.python import PythonCandidate, PythonSpec, load_function
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


def test_non_finite_values_are_located() -> None:
    logits = np.zeros((5, N_VOCAB), dtype=np.float32)
    logits[1, 3] = np.nan
    logits[3, 0] = np.inf
    logits[4, 1] = -np.inf
    with pytest.raises(CandidateFailed, match=r"non-finite values \(NaN or infinity\) at position 1 and 2 more"):
        check(logits, n_tokens=5)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_float64_values_beyond_float32_are_refused_not_turned_into_infinity() -> None:
    logits = np.zeros((3, N_VOCAB), dtype=np.float64)
    logits[0, 0] = 1e300
    with pytest.raises(CandidateFailed, match="non-finite"):
        check(logits)


# --- cmd: ----------------------------------------------------------------------------------------

PROGRAM = textwrap.dedent(
    """
    import sys, time
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
    """
)


@pytest.fixture
def program(tmp_path: Path) -> Path:
    path = tmp_path / "fake_candidate.py"
    path.write_text(PROGRAM)
    return path


def command(program: Path, mode: str, *, timeout: float = 60, placeholders: bool = True) -> CommandCandidate:
    extra = f"{{model}} {{tokens}} {{out}} {N_VOCAB}" if placeholders else ""
    spec = cmd_spec(f"cmd:{sys.executable} {program} {mode} {extra}")
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
    out = command(program, "ok").run(tmp_path / "m.gguf", TOKENS, work_dir=tmp_path, trace_dir=None)
    assert out.logits.shape == (3, N_VOCAB) and out.logits.dtype == np.float32
    assert [int(i) for i in out.logits.argmax(axis=1)] == TOKENS.tolist()
    assert out.seconds > 0 and out.trace_dir is None
    assert out.details["argv"][0] == sys.executable


def test_a_command_that_fails_is_a_candidate_failure_with_its_output_kept(program: Path, tmp_path: Path) -> None:
    with pytest.raises(CandidateFailed, match="exited with code 7") as info:
        command(program, "fail").run(tmp_path / "m.gguf", TOKENS, work_dir=tmp_path, trace_dir=None)
    assert "fake candidate here fail" in info.value.detail


def test_a_command_that_hangs_is_stopped(program: Path, tmp_path: Path) -> None:
    with pytest.raises(CandidateFailed, match=r"did not finish within 0\.5s and was stopped") as info:
        command(program, "sleep", timeout=0.5).run(tmp_path / "m.gguf", TOKENS, work_dir=tmp_path, trace_dir=None)
    assert "--candidate-timeout" in info.value.next_step


def test_a_command_that_writes_garbage_or_nothing(program: Path, tmp_path: Path) -> None:
    with pytest.raises(CandidateFailed, match=r"not a readable \.npy file"):
        command(program, "garbage").run(tmp_path / "m.gguf", TOKENS, work_dir=tmp_path, trace_dir=None)
    (tmp_path / "candidate-logits.npy").unlink()
    with pytest.raises(CandidateFailed, match=r"finished but wrote no candidate-logits\.npy"):
        command(program, "none").run(tmp_path / "m.gguf", TOKENS, work_dir=tmp_path, trace_dir=None)


def test_a_missing_program_is_bad_input(tmp_path: Path) -> None:
    spec = cmd_spec(f"cmd:{tmp_path / 'nope'}")
    with pytest.raises(BadInput, match="was not found"):
        CommandCandidate(spec, env={}, n_vocab=N_VOCAB, timeout=5).run(
            tmp_path / "m.gguf", TOKENS, work_dir=tmp_path, trace_dir=None
        )


# --- py: -------------------------------------------------------------------------------------------

MODULE = textwrap.dedent(
    """
    import numpy as np
    from bitnet_crossval.errors import BadInput

    N_VOCAB = 11
    not_callable = 3

    def good(model_path, tokens):
        assert isinstance(model_path, str) and tokens.dtype == np.int32
        tokens[0] = 99  # the caller's array must not change
        return np.ones((len(tokens), N_VOCAB), dtype=np.float32)

    def traced(model_path, tokens, trace=None):
        if trace is not None:
            np.save(trace + "/l_out-0.npy", np.zeros((len(tokens), 4), dtype=np.float32))
        return np.ones((len(tokens), N_VOCAB), dtype=np.float32)

    def raises(model_path, tokens):
        raise RuntimeError("no\\n   such   layer")

    def silent_raise(model_path, tokens):
        raise ValueError()

    def suite_error(model_path, tokens):
        raise BadInput("the candidate's own bad input", next_step="fix it")
    """
)


@pytest.fixture
def module_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    name = f"fake_py_candidate_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    (tmp_path / "broken_on_import.py").write_text("raise RuntimeError('import-time failure')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def py(module: str, function: str) -> PythonCandidate:
    return PythonCandidate(py_spec(f"py:{module}:{function}"), n_vocab=N_VOCAB)


def test_a_python_candidate_that_works(module_name: str, tmp_path: Path) -> None:
    tokens = TOKENS.copy()
    out = py(module_name, "good").run(tmp_path / "m.gguf", tokens, work_dir=tmp_path, trace_dir=None)
    assert out.logits.shape == (3, N_VOCAB)
    assert tokens.tolist() == TOKENS.tolist()  # it got a copy
    assert out.trace_dir is None


def test_the_trace_keyword_is_passed_only_when_asked_and_accepted(module_name: str, tmp_path: Path) -> None:
    candidate = py(module_name, "traced")
    assert candidate.accepts_trace and not py(module_name, "good").accepts_trace
    assert candidate.run(tmp_path / "m", TOKENS, work_dir=tmp_path, trace_dir=None).trace_dir is None
    out = candidate.run(tmp_path / "m", TOKENS, work_dir=tmp_path, trace_dir=tmp_path / "trace")
    assert out.trace_dir == tmp_path / "trace" and (tmp_path / "trace" / "l_out-0.npy").is_file()


@pytest.mark.parametrize(
    ("function", "message"),
    [("raises", "raised RuntimeError: no such layer"), ("silent_raise", "raised ValueError: (no message)")],
)
def test_an_exception_is_one_line(module_name: str, tmp_path: Path, function: str, message: str) -> None:
    with pytest.raises(CandidateFailed) as info:
        py(module_name, function).run(tmp_path / "m", TOKENS, work_dir=tmp_path, trace_dir=None)
    assert message in info.value.message and "\n" not in info.value.message
    assert "--verbose" in info.value.next_step


def test_a_suite_error_of_the_candidate_passes_through(module_name: str, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="the candidate's own bad input"):
        py(module_name, "suite_error").run(tmp_path / "m", TOKENS, work_dir=tmp_path, trace_dir=None)


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("no_such_module_anywhere:f", "cannot be imported (ModuleNotFoundError"),
        ("broken_on_import:f", "cannot be imported (RuntimeError: import-time failure)"),
        ("{module}:missing", "has no function 'missing'"),
        ("{module}:not_callable", "has no function 'not_callable'"),
    ],
)
def test_functions_that_cannot_be_loaded_are_bad_input(module_name: str, target: str, fragment: str) -> None:
    spec = py_spec("py:" + target.format(module=module_name))
    with pytest.raises(BadInput) as info:
        load_function(spec)
    assert fragment in info.value.message


def test_the_current_directory_is_importable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cwd_candidate_mod.py").write_text("def f(m, t):\n    return None\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    spec = PythonSpec(kind="py", text="py:cwd_candidate_mod:f", module="cwd_candidate_mod", function="f")
    assert callable(load_function(spec))
