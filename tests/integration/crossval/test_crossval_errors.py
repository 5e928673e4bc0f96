"""Every way `invoke crossval-per-token` can be given something wrong, run as a user would.

Each case must end with its documented exit code (6 bad input, 11 a candidate that fails) and
one sentence: exactly one `error:` line, a `next:` line, no traceback; with --format json, one
JSON document on stdout saying so. Bad option values are refused before anything runs; bad
models, token ids and candidates once the run reaches them.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bitnet_crossval.crossval.synthetic import write_synthetic_model
from tests.gguf_models import BOS_ID, EOS_ID, UNK_ID, spm_vocabulary
from tests.helpers import HANG_SECONDS
from tests.integration.crossval.conftest import CrossvalCache, assert_one_error, json_error, strict_json

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CANDIDATES = Path(__file__).with_name("candidate_fns.py")
PY = "py:tests.integration.crossval.candidate_fns"


def broken(mode: str) -> str:
    return f"cmd:{sys.executable} {CANDIDATES} {mode}"


# --- option values: refused before any lock, model or process ------------------------------------

OPTION_CASES = [
    # Each parser's every rule is in tests/unit/crossval/test_options.py; here, one of each kind
    # through the command, as a user meets them.
    (["--max-tokens", "x"], "--max-tokens 'x' is not a whole number from 0 to 4096"),
    (["--kl-max", "-1"], "--kl-max '-1' is not a number of nats, at least 0"),
    (["--kl-max", "nan"], "--kl-max 'nan' is not a number of nats, at least 0"),
    (["--tie-margin", "-0.5"], "--tie-margin '-0.5'"),
    (["--threads", "0"], "--threads '0'"),
    (["--cores", "-1"], "--cores '-1' is not a whole number from 0 to 512"),
    (["--backend", "gpt"], "gpt"),
    (["--prompt", "hi", "--tokens-file", "ids.txt"], "--prompt and --tokens-file both give the tokens"),
    (["--model", "synthetic:llama:Q3_K"], "is not a synthetic model the suite can write"),
    (["--model", "{tmp}/missing.gguf"], "does not exist"),
    (["--model", "{tmp}/empty.gguf"], "is empty"),
    (["--model", "{tmp}/text.gguf"], "is not a GGUF file"),
    (["--model", "{tmp}"], "is not a regular file"),
    (["--candidate", "torch"], "--candidate 'torch' is not a candidate"),
    (["--candidate", "cmd:'unclosed"], "cannot be split"),
    (["--candidate", "py:just_a_module"], "is not py:module:function"),
    (["--plot", "{tmp}/no/such/dir/plot.png"], "the directory of the --plot file"),
    (["--junit", "{tmp}"], "the --junit file"),
]


@pytest.mark.parametrize(("args", "fragment"), OPTION_CASES, ids=[" ".join(a) for a, _ in OPTION_CASES])
def test_bad_option_values_are_exit_6_before_anything_runs(
    crossval_cache: CrossvalCache, tmp_path: Path, args: list[str], fragment: str
) -> None:
    (tmp_path / "empty.gguf").write_bytes(b"")
    (tmp_path / "text.gguf").write_text("not a model at all\n" * 10)
    filled = [a.replace("{tmp}", str(tmp_path)) for a in args]
    before = _tree(crossval_cache.root)
    result = crossval_cache.run(*filled, "--format", "json")
    assert_one_error(result, 6, fragment.replace("{tmp}", str(tmp_path)))
    json_error(result, 6)
    assert "cross-validation:" not in result.stderr  # nothing ran
    assert _tree(crossval_cache.root) == before  # no lock, model, log or constants touched


def _tree(root: Path) -> dict[str, int]:
    """Every entry under ``root`` with its modification time."""
    return {str(p.relative_to(root)): p.lstat().st_mtime_ns for p in sorted(root.rglob("*"))}


def test_format_yaml_is_exit_6_and_prints_no_json(crossval_cache: CrossvalCache) -> None:
    result = crossval_cache.run("--format", "yaml")
    assert_one_error(result, 6, "--format 'yaml' is not one of text, json")
    assert result.stdout == ""


# --- models ---------------------------------------------------------------------------------------


def write_tiny_vocab(path: Path) -> Path:
    import gguf

    tokens, scores, types = spm_vocabulary()
    writer = gguf.GGUFWriter(path, "llama")
    try:
        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_bos_token_id(BOS_ID)
        writer.add_eos_token_id(EOS_ID)
        writer.add_unk_token_id(UNK_ID)
        writer.add_add_bos_token(True)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


def rewrite_gguf(src: Path, dst: Path, *, arch: str | None = None, as_f64: frozenset[str] = frozenset()) -> Path:
    """``src`` written again with gguf-py: another architecture name (keys renamed with it), or
    some tensors stored as F64. With neither, the bytes are the same as ``src``'s."""
    import gguf

    reader = gguf.GGUFReader(src)
    old = str(reader.fields["general.architecture"].contents())
    new = arch or old
    writer = gguf.GGUFWriter(dst, new)
    try:
        for field in reader.fields.values():
            if field.name.startswith("GGUF.") or field.name == "general.architecture":
                continue
            name = new + field.name[len(old) :] if field.name.startswith(old + ".") else field.name
            vtype = field.types[0]
            sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(name, field.contents(), vtype, sub_type=sub_type)
        for tensor in reader.tensors:
            if tensor.name in as_f64:
                writer.add_tensor(tensor.name, np.asarray(tensor.data, dtype=np.float64))
            else:
                shape = [int(d) for d in reversed(tensor.shape)]
                writer.add_tensor(tensor.name, np.asarray(tensor.data), raw_shape=shape, raw_dtype=tensor.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return dst


@pytest.fixture(scope="module")
def bad_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small llama model (tiny vocabulary, ~2 MB) and broken variants of it."""
    d = tmp_path_factory.mktemp("bad-models")
    good = write_synthetic_model(d / "good.gguf", arch="llama", vocab=write_tiny_vocab(d / "vocab.gguf"))
    data = good.read_bytes()
    corrupt = bytearray(data)
    corrupt[4:8] = b"\xff\xff\xff\xff"  # GGUF version 4294967295
    models = {
        "good": good,
        "truncated": d / "truncated.gguf",
        "header-only": d / "header-only.gguf",
        "corrupt": d / "corrupt.gguf",
        "qwen2": rewrite_gguf(good, d / "qwen2.gguf", arch="qwen2"),
        "unknown-arch": rewrite_gguf(good, d / "unknown-arch.gguf", arch="notanarch"),
        "f64": rewrite_gguf(good, d / "f64.gguf", as_f64=frozenset({"blk.0.attn_q.weight"})),
    }
    models["truncated"].write_bytes(data[: len(data) * 2 // 3])
    models["header-only"].write_bytes(data[:300])
    models["corrupt"].write_bytes(bytes(corrupt))
    assert rewrite_gguf(good, d / "same.gguf").read_bytes() == data  # the rewrite itself changes nothing
    return models


def test_the_small_model_itself_is_fine(crossval_cache: CrossvalCache, bad_models: dict[str, Path]) -> None:
    result = crossval_cache.run("--model", str(bad_models["good"]), "--max-tokens", "2", "--format", "json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert strict_json(result.stdout)["verdict"] == "parity"


MODEL_CASES = [
    ("truncated", "corrupt or incomplete"),
    ("header-only", "corrupt or incomplete"),
    ("corrupt", "corrupt or incomplete"),
    ("qwen2", "architecture 'qwen2' is not supported by the NumPy reference engine"),
    ("unknown-arch", "unknown model architecture: 'notanarch'"),
    ("f64", "has type F64"),
]


@pytest.mark.parametrize(("name", "fragment"), MODEL_CASES, ids=[n for n, _ in MODEL_CASES])
def test_bad_models_are_exit_6(
    crossval_cache: CrossvalCache, bad_models: dict[str, Path], name: str, fragment: str
) -> None:
    result = crossval_cache.run("--model", str(bad_models[name]), "--max-tokens", "2", "--format", "json")
    assert_one_error(result, 6, fragment)
    json_error(result, 6)


def test_the_log_an_error_names_exists(crossval_cache: CrossvalCache, bad_models: dict[str, Path]) -> None:
    result = crossval_cache.run("--model", str(bad_models["truncated"]), "--max-tokens", "2")
    assert_one_error(result, 6)
    logs = [line.split("log:", 1)[1].strip() for line in result.stderr.splitlines() if line.strip().startswith("log:")]
    assert logs, result.stderr
    assert Path(logs[0]).is_file()


# --- tokens and prompt ----------------------------------------------------------------------------

TOKEN_CASES = [
    ("1 450 32000", [], "holds token id 32000, outside the model's vocabulary of 32000 ids"),
    ("[1, -3, 40000]", [], "holds token id -3, outside the model's vocabulary of 32000 ids (1 more)"),
    ("1 2 three", [], "holds a word of 5 characters at line 1, column 5 that is not a token id"),
    ("[1, 2.5]", [], "is not a JSON list of integers"),
    ("", [], "holds no token ids"),
    (" ".join(["1"] * 600), [], "need 616 positions, more than the context of 512"),
    ("1 2 3", ["--max-tokens", "510"], "need 513 positions, more than the context of 512"),
]


@pytest.mark.parametrize(("content", "extra", "fragment"), TOKEN_CASES, ids=[c[2][:30] for c in TOKEN_CASES])
def test_bad_token_files_are_exit_6(
    crossval_cache: CrossvalCache, tmp_path: Path, content: str, extra: list[str], fragment: str
) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text(content)
    result = crossval_cache.run("--tokens-file", str(ids), *extra, "--format", "json")
    assert_one_error(result, 6, fragment)
    json_error(result, 6)


def test_missing_tokens_file_is_exit_6(crossval_cache: CrossvalCache, tmp_path: Path) -> None:
    result = crossval_cache.run("--tokens-file", str(tmp_path / "nope.txt"))
    assert_one_error(result, 6, "does not exist")


def test_a_prompt_longer_than_the_context_is_exit_6(crossval_cache: CrossvalCache) -> None:
    result = crossval_cache.run("--prompt", "hello world " * 300, "--format", "json")
    assert_one_error(result, 6, "more than the context of 512", "was trained for")
    json_error(result, 6)


def test_an_empty_prompt_is_exit_6(crossval_cache: CrossvalCache) -> None:
    assert_one_error(crossval_cache.run("--prompt", ""), 6, "the prompt is empty")


@pytest.mark.parametrize("content", [None, "{ not json"], ids=["missing", "garbage"])
def test_a_bad_tokenizer_file_is_exit_6(crossval_cache: CrossvalCache, tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "tokenizer.json"
    if content is not None:
        path.write_text(content)
    result = crossval_cache.run("--tokenizer", str(path), "--format", "json")
    assert_one_error(result, 6, "the tokenizer")
    json_error(result, 6)


# --- candidates -------------------------------------------------------------------------------------

CANDIDATE_CASES = [
    # bad specs found when the candidate is loaded or started: bad input
    pytest.param(f"{PY}:no_such_function", 6, "has no function 'no_such_function'", id="py-no-function"),
    pytest.param("py:no_such_package.module:f", 6, "cannot be imported", id="py-no-module"),
    # candidates that cannot start, or run and fail: exit 11
    pytest.param("cmd:/no/such/program {model} {tokens} {out}", 11,
                 "could not start: `/no/such/program` was not found", id="cmd-no-file"),
    pytest.param("cmd:no-such-program-on-path", 11, "could not start: `no-such-program-on-path` was not found",
                 id="cmd-not-on-path"),
    pytest.param(broken("crash"), 11, "exited with code 3", id="cmd-crash"),
    pytest.param(broken("silent"), 11, "finished but wrote no candidate-logits.npy", id="cmd-writes-nothing"),
    pytest.param(broken("garbage"), 11, "which is not a readable .npy file", id="cmd-not-npy"),
    pytest.param(broken("wrong_shape"), 11, "returned shape [6, 7], expected", id="cmd-wrong-shape"),
    pytest.param(broken("wrong_dtype"), 11, "returned dtype int32, expected", id="cmd-wrong-dtype"),
    pytest.param(broken("nan_at_2"), 11, "hold NaN and +inf at 2 of 6 positions, the first at position 2, which "
                 "cannot be compared", id="cmd-nan"),
    pytest.param(f"{PY}:raises", 11, "raised RuntimeError: the candidate's own bug second line", id="py-raises"),
    pytest.param(f"{PY}:returns_list", 11, "returned list, expected", id="py-not-an-array"),
    pytest.param(f"{PY}:wrong_shape", 11, "returned shape [6, 7], expected", id="py-wrong-shape"),
    pytest.param(f"{PY}:transposed", 11, "returned shape [32000, 6], expected a float array of shape "
                 "[n_tokens, n_vocab] = [6, 32000]", id="py-transposed"),
    pytest.param(f"{PY}:nan_at_2", 11, "hold NaN and +inf at 2 of 6 positions", id="py-nan"),
    pytest.param(f"{PY}:wrong_dtype", 11, "returned dtype int32", id="py-wrong-dtype"),
]  # fmt: skip


@pytest.mark.parametrize(("candidate", "code", "fragment"), CANDIDATE_CASES)
def test_bad_and_failing_candidates(crossval_cache: CrossvalCache, candidate: str, code: int, fragment: str) -> None:
    # 4 prompt tokens + 2 generated = 6 positions: small, and the shapes above name them.
    result = crossval_cache.run(
        "--prompt", "The cat sat", "--max-tokens", "2", "--candidate", candidate, "--format", "json"
    )
    line = assert_one_error(result, code, fragment)
    assert candidate.strip() in line or candidate.split(maxsplit=1)[0] in line  # the sentence names the candidate
    json_error(result, code, verdict="non-finite" if "nan" in candidate else "error")


def test_a_hanging_candidate_is_stopped_after_its_timeout(crossval_cache: CrossvalCache, tmp_path: Path) -> None:
    pid_file = tmp_path / "candidate.pid"
    env = {**crossval_cache.env, "CANDIDATE_PID_FILE": str(pid_file)}
    # The candidate sleeps an hour, longer than any bound of this test: only the suite stops it.
    result = crossval_cache.run(
        "--max-tokens", "1", "--candidate", broken("hang"), "--candidate-timeout", "2", "--format", "json", env=env
    )
    assert_one_error(result, 11, "did not finish within 2s and was stopped")
    assert "--candidate-timeout" in result.stderr  # the next step says what to raise
    json_error(result, 11)
    pid, started = pid_file.read_text().split()
    deadline = time.monotonic() + HANG_SECONDS
    while _alive(int(pid)):
        assert time.monotonic() < deadline, f"the hanging candidate (pid {pid}) is still running"
        time.sleep(0.1)
    # Its life, from its first line to the moment it is seen gone: its 2 s and the stopping, not the
    # time the command took to start, load the model and run the reference, which a loaded machine
    # stretches.
    assert time.time() - float(started) < 60


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ", 1)[1].startswith("Z"))


def test_a_crashing_candidate_shows_its_own_output(crossval_cache: CrossvalCache) -> None:
    result = crossval_cache.run("--max-tokens", "1", "--candidate", broken("crash"))
    assert_one_error(result, 11, "exited with code 3")
    assert "CANDIDATE-SAYS: about to fail on purpose" in result.stderr


def test_verbose_shows_the_traceback_of_a_py_candidate(crossval_cache: CrossvalCache) -> None:
    result = crossval_cache.run("--max-tokens", "1", "--candidate", f"{PY}:raises", "--verbose")
    assert result.returncode == 11
    assert "Traceback" in result.stderr and "the candidate's own bug" in result.stderr


def test_an_unavailable_candidate_backend_is_one_sentence(crossval_cache: CrossvalCache) -> None:
    """--candidate bitnet when bitnet.cpp is not built: no shim to compare with."""
    result = crossval_cache.run("--max-tokens", "1", "--candidate", "bitnet", "--format", "json")
    line = assert_one_error(result, 1, "bitnet")
    assert "shim" in line
    json_error(result, 1)
