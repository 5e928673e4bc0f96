"""No verdict on numbers that are not real: `invoke crossval-per-token` against the real pinned
llama.cpp, on real GGUF models whose weights or hyperparameters are not finite (written with
gguf-py from the synthetic model), and with candidates whose logits are NaN, all zero or constant.

Every case ends without "parity": NaN or infinity on the reference's side is bad input (exit 6,
naming the weights that hold it and, with --trace, the first tensor of llama.cpp's graph that
does); on the candidate's side it is the candidate's failure (exit 11, with --trace its first
tensor that holds it); a hyperparameter that makes llama.cpp abort or compute NaN is refused
before the reference runs (exit 6); a candidate that ranks nothing diverges (exit 10).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bitnet_crossval.crossval.synthetic import write_synthetic_model
from tests.gguf_models import BOS_ID
from tests.integration.crossval.conftest import CrossvalCache, assert_one_error, json_error, strict_json
from tests.integration.crossval.gguf_edits import all_nan, all_zero, edited_gguf, infinite_row
from tests.integration.crossval.test_crossval_errors import write_tiny_vocab

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

CANDIDATES = Path(__file__).with_name("candidate_fns.py")
PY = "py:tests.integration.crossval.candidate_fns"
TOKENS_FILE = Path(__file__).with_name("four_tokens.txt")
ARGS = ("--tokens-file", str(TOKENS_FILE), "--max-tokens", "2")  # BOS and 3 more, then 2 generated: 6 positions


def program(mode: str, *extra: str) -> str:
    return f"cmd:{sys.executable} {CANDIDATES} {mode} {{model}} {{tokens}} {{out}} {' '.join(extra)}".rstrip()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("non-finite-models")
    good = write_synthetic_model(d / "good.gguf", arch="llama", vocab=write_tiny_vocab(d / "vocab.gguf"))
    edits: dict[str, dict[str, Any]] = {
        "nan-output-norm": {"tensors": {"output_norm.weight": all_nan}},
        "inf-bos-embedding": {"tensors": {"token_embd.weight": infinite_row(BOS_ID)}},
        "zero-output-norm": {"tensors": {"output_norm.weight": all_zero}},
        "nan-rope-base": {"metadata": {"llama.rope.freq_base": float("nan")}},
        "negative-rope-base": {"metadata": {"llama.rope.freq_base": -10000.0}},
        "negative-norm-eps": {"metadata": {"llama.attention.layer_norm_rms_epsilon": -1e-5}},
        "zero-norm-eps": {"metadata": {"llama.attention.layer_norm_rms_epsilon": 0.0}},
        "inf-norm-eps": {"metadata": {"llama.attention.layer_norm_rms_epsilon": float("inf")}},
        "negative-rope-scale": {"added": {"llama.rope.scaling.factor": -2.0}},
    }
    return {"good": good, **{name: edited_gguf(good, d / f"{name}.gguf", **edit) for name, edit in edits.items()}}


def never_parity(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode != 0, result.stderr[-2000:]
    assert "parity: the candidate agrees" not in result.stderr


# --- the reference's numbers are not finite: the model is bad input ------------------------------

REFERENCE_CASES = [
    # model, candidate, the weights named
    ("nan-output-norm", "numpy", "output_norm.weight (256 values)"),
    ("nan-output-norm", program("zeros"), "output_norm.weight (256 values)"),
    ("nan-output-norm", program("constant"), "output_norm.weight (256 values)"),
    ("inf-bos-embedding", "numpy", "token_embd.weight (256 values)"),
    ("inf-bos-embedding", program("zeros"), "token_embd.weight (256 values)"),
]


@pytest.mark.parametrize(
    ("model", "candidate", "weights"), REFERENCE_CASES, ids=[f"{m}-{c[:12]}" for m, c, _ in REFERENCE_CASES]
)
def test_a_model_whose_numbers_are_not_finite_is_bad_input_never_parity(
    crossval_cache: CrossvalCache, models: dict[str, Path], model: str, candidate: str, weights: str
) -> None:
    result = crossval_cache.run("--model", str(models[model]), *ARGS, "--candidate", candidate, "--format", "json")
    never_parity(result)
    line = assert_one_error(
        result,
        6,
        "the logits of the reference hold NaN at 6 of 6 positions, the first at position 0, so they cannot "
        "judge a candidate",
        f"the model's weights hold NaN or infinity: {weights}",
    )
    assert "re-convert or re-download the model" in result.stderr
    document = json_error(result, 6, verdict="non-finite")
    assert document["passed"] is False and document["summary"] is None and document["rows"] == []
    assert document["non_finite"]["side"] == "reference" and document["non_finite"]["positions"] == [0, 1, 2, 3, 4, 5]
    assert document["error"]["message"] == line.removeprefix("error: ")
    assert '"max_kl": 0.0' not in result.stdout


@pytest.mark.parametrize(
    ("model", "tensor"),
    [
        ("nan-output-norm", "result_norm (MUL) holds NaN, first at position 0; everything traced before it is finite "
         "(last: norm)"),
        ("inf-bos-embedding", "embd (GET_ROWS) holds +inf, first at position 0"),
    ],
)  # fmt: skip
def test_with_trace_the_first_tensor_of_llama_cpp_that_is_not_finite_is_named(
    crossval_cache: CrossvalCache, models: dict[str, Path], model: str, tensor: str
) -> None:
    result = crossval_cache.run("--model", str(models[model]), *ARGS, "--trace", "--format", "json")
    assert_one_error(result, 6, f"the first traced tensor that holds them: {tensor}")
    first = json_error(result, 6, verdict="non-finite")["non_finite"]["first_tensor"]
    assert first["name"] == tensor.split(maxsplit=1)[0] and first["positions"] == [0]


def test_a_model_that_ranks_nothing_is_bad_input_also_for_an_all_zero_candidate(
    crossval_cache: CrossvalCache, models: dict[str, Path]
) -> None:
    for candidate in ("numpy", program("zeros")):
        result = crossval_cache.run("--model", str(models["zero-output-norm"]), *ARGS, "--candidate", candidate)
        never_parity(result)
        assert_one_error(
            result,
            6,
            "the reference's logits at position 0 and 5 more are the same for every token, so they rank nothing",
        )


# --- hyperparameters llama.cpp aborts on or turns into NaN: refused before the reference runs -----

HPARAM_CASES = [
    ("nan-rope-base", "declares llama.rope.freq_base = nan: it must be a finite number"),
    ("negative-rope-base", "declares llama.rope.freq_base = -10000: a RoPE base must be greater than 0"),
    ("negative-norm-eps", "declares llama.attention.layer_norm_rms_epsilon = -1e-05: a norm epsilon must be "
     "greater than 0"),
    ("zero-norm-eps", "declares llama.attention.layer_norm_rms_epsilon = 0: a norm epsilon must be greater than 0"),
    ("inf-norm-eps", "declares llama.attention.layer_norm_rms_epsilon = inf: it must be a finite number"),
    ("negative-rope-scale", "declares llama.rope.scaling.factor = -2: a RoPE scale factor must be 0 (none) or more"),
]  # fmt: skip


@pytest.mark.parametrize(("model", "fragment"), HPARAM_CASES, ids=[m for m, _ in HPARAM_CASES])
@pytest.mark.parametrize("candidate", ["numpy", program("zeros")], ids=["numpy", "cmd-zeros"])
def test_hyperparameters_llama_cpp_cannot_use_are_refused_before_the_reference_runs(
    crossval_cache: CrossvalCache, models: dict[str, Path], model: str, fragment: str, candidate: str
) -> None:
    result = crossval_cache.run("--model", str(models[model]), *ARGS, "--candidate", candidate, "--format", "json")
    assert_one_error(result, 6, fragment, "(llama.cpp would abort or compute NaN)")
    json_error(result, 6)
    assert "killed by signal" not in result.stderr
    assert "the reference generates" not in result.stderr  # refused before the reference ran


# --- the candidate's numbers are not finite, or rank nothing -------------------------------------


@pytest.mark.parametrize("candidate", [program("zeros"), program("constant"), f"{PY}:zeros", f"{PY}:constant"])
def test_an_all_zero_or_constant_candidate_diverges(
    crossval_cache: CrossvalCache, models: dict[str, Path], candidate: str
) -> None:
    result = crossval_cache.run("--model", str(models["good"]), *ARGS, "--candidate", candidate, "--format", "json")
    never_parity(result)
    assert result.returncode == 10, result.stderr[-2000:]
    document = strict_json(result.stdout)
    assert document["verdict"] == "divergence" and document["summary"]["n_failed"] == 6
    reasons = [reason for row in document["rows"] for reason in row["reasons"]]
    assert reasons.count("the candidate's logits are the same for every token, so they rank nothing") == 6


def test_with_trace_the_candidates_first_non_finite_tensor_is_named(
    crossval_cache: CrossvalCache, models: dict[str, Path]
) -> None:
    result = crossval_cache.run(
        "--model", str(models["good"]), *ARGS, "--candidate", f"{PY}:nan_from_ffn_up_0", "--trace", "--format", "json"
    )
    never_parity(result)
    assert_one_error(
        result,
        11,
        "hold NaN at 6 of 6 positions, the first at position 0, which cannot be compared; the first traced "
        "tensor that holds them: layer 0, ffn_up-0 (MUL_MAT) holds NaN, first at position 0; everything traced "
        "before it is finite (last: ffn_gate-0)",
    )
    assert "look at how the candidate computes ffn_up-0" in result.stderr
    document = json_error(result, 11, verdict="non-finite")
    assert document["non_finite"]["side"] == "candidate" and document["non_finite"]["traced"] is True
    assert all(row["kl"] is None and not row["passed"] for row in document["rows"])
    assert document["summary"]["max_kl"] is None  # never the 0.0 that reads as agreement


def test_an_all_nan_traced_tensor_departs_and_shows_no_cosine(
    crossval_cache: CrossvalCache, models: dict[str, Path]
) -> None:
    result = crossval_cache.run(
        "--model", str(models["good"]), *ARGS, "--candidate", f"{PY}:nan_attn_norm_in_trace", "--trace"
    )
    assert result.returncode == 10, result.stderr[-2000:]
    assert (
        "trace: layer 0, attn_norm-0 (MUL) first departs: it holds NaN or infinity on the candidate's side at "
        "position 0"
    ) in " ".join(result.stderr.split())
    row = next(line for line in result.stderr.splitlines() if "attn_norm-0" in line and "departs" in line)
    cells = [cell.strip() for cell in row.split("│")]
    assert (cells[5], cells[7]) == ("nan", "nan") and "1.0000" not in row  # rel. error and cosine: no number
