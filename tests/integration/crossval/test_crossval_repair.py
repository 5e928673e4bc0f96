"""`invoke crossval-per-token` from an empty cache: preflight repairs the backend (installs it,
builds the shim), re-executes itself with BITNET_REPAIR_PARENT=1, and the child cross-validates.

The backend is the fake llama.cpp (tests/data/fake_llama with the 2024 C API stub) given as
LLAMA_CPP_SOURCE: it installs and the shim builds against it in seconds, where the real
llama.cpp takes minutes. Its "model" is a causal function of the token ids over a 259-token
byte vocabulary (tests/data/legacy_llama_api/src/stub_llama.c), so:

- the model file is a small GGUF written with ``bitnet_crossval.crossval.synthetic`` against a
  259-token byte vocabulary (the stub loads any GGUF; the suite reads its facts from it), and the
  prompt is plain text the stub tokenizes byte by byte. The default ``synthetic:llama`` cannot be
  used: it takes its vocabulary from a llama.cpp source tree in the cache, and the fake's has
  none (a test below shows that this is reported as bad input);
- a correct candidate is one that computes what the stub computes (``candidate_fns.stub_mirror``):
  parity at every position, exit 0; the NumPy engine computes a real transformer, so against
  the stub it must diverge (exit 10), which it does.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from bitnet_crossval.crossval.synthetic import write_synthetic_model
from bitnet_crossval.store.constants import read_constants
from tests.conftest import child_env
from tests.helpers import copy_fake_llama, run_invoke
from tests.integration.crossval.conftest import assert_one_error, json_error, strict_json

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PY = "py:tests.integration.crossval.candidate_fns"
PROMPT = "Hello"
PROMPT_IDS = [1, *(3 + b for b in PROMPT.encode())]  # BOS, then one token per byte
GENERATED = 16


def write_byte_vocab(path: Path) -> Path:
    """The stub's vocabulary as GGUF tokenizer keys: <unk>, <s>, </s>, then the 256 bytes."""
    import gguf

    writer = gguf.GGUFWriter(path, "llama")
    try:
        writer.add_tokenizer_model("llama")
        writer.add_token_list(["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))])
        writer.add_token_scores([0.0] * 259)
        writer.add_token_types([2, 3, 3, *([6] * 256)])
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
        writer.add_unk_token_id(0)
        writer.add_add_bos_token(True)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return path


@dataclass(frozen=True)
class FakeFlow:
    cache: Path
    env: dict[str, str]
    model: Path
    first: subprocess.CompletedProcess[str]

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return run_invoke(
            ["crossval-per-token", "--model", str(self.model), "--prompt", PROMPT, *args],
            env=env or self.env,
            timeout=300,
        )


@pytest.fixture(scope="module")
def fake_flow(tmp_path_factory: pytest.TempPathFactory) -> FakeFlow:
    """The first run, from an empty cache, with no --repair (auto: no CI variable is set)."""
    root = tmp_path_factory.mktemp("crossval-fake")
    source = copy_fake_llama(root / "fake-llama")
    model = write_synthetic_model(root / "byte-llama.gguf", arch="llama", vocab=write_byte_vocab(root / "vocab.gguf"))
    cache = root / "cache"
    env = {**child_env(cache), "LLAMA_CPP_SOURCE": str(source)}
    assert "CI" not in env and not cache.exists()
    flow = FakeFlow(cache=cache, env=env, model=model, first=subprocess.CompletedProcess([], 0))
    first = flow.run("--candidate", f"{PY}:stub_mirror", "--format", "json")
    return FakeFlow(cache=cache, env=env, model=model, first=first)


def test_from_an_empty_cache_it_repairs_reexecs_and_the_child_finds_parity(fake_flow: FakeFlow) -> None:
    result = fake_flow.first
    assert result.returncode == 0, result.stderr[-4000:]
    err = result.stderr
    assert "repairing llama.cpp" in err
    assert "[reexec] Attempting exec()..." in err and "Fallback" not in err
    # The comparison ran after the re-exec, in the child.
    assert err.index("[reexec] Attempting exec()...") < err.index("cross-validation: preparing the model")
    assert "parity: the candidate agrees with the reference at every position" in err
    doc = strict_json(result.stdout)  # only the child wrote to stdout, one document
    assert doc["verdict"] == "parity"
    assert doc["tokens"][: len(PROMPT_IDS)] == PROMPT_IDS and doc["n_prompt"] == len(PROMPT_IDS)
    assert len(doc["rows"]) == len(PROMPT_IDS) + GENERATED
    assert all(row["passed"] for row in doc["rows"])
    assert doc["reference"]["api"] == "legacy"  # the shim built against the fake's 2024 API
    assert doc["reference"]["source"]["kind"] == "local"
    record = read_constants(fake_flow.cache / "constants.json").record("llama")
    assert record is not None and record.available and record.shim == doc["reference"]["shim"]
    assert (fake_flow.cache / "installs" / "llama").is_dir()


def test_the_next_run_repairs_nothing_and_the_numpy_engine_diverges(fake_flow: FakeFlow) -> None:
    result = fake_flow.run("--format", "json")
    assert_one_error(result, 10, "parity failed", "first at position 0")
    assert "repairing" not in result.stderr and "[reexec]" not in result.stderr
    doc = strict_json(result.stdout)
    assert doc["verdict"] == "divergence" and doc["summary"]["first_failure"] == 0


def test_a_candidate_off_from_position_3_diverges_at_3(fake_flow: FakeFlow) -> None:
    result = fake_flow.run("--candidate", f"{PY}:stub_mirror_off_at_3", "--format", "json")
    assert_one_error(result, 10, "first at position 3")
    doc = strict_json(result.stdout)
    assert [row["passed"] for row in doc["rows"][:4]] == [True, True, True, False]
    assert doc["summary"]["failed_positions"] == list(range(3, len(doc["rows"])))


def test_repair_always_reexecs_and_the_childs_divergence_is_the_only_json(fake_flow: FakeFlow) -> None:
    result = fake_flow.run("--repair", "always", "--format", "json")
    assert "[reexec] Attempting exec()..." in result.stderr
    assert_one_error(result, 10, "parity failed")
    assert strict_json(result.stdout)["verdict"] == "divergence"


def test_repair_always_reexecs_and_the_childs_error_is_the_only_json(fake_flow: FakeFlow) -> None:
    result = fake_flow.run("--repair", "always", "--candidate", f"{PY}:wrong_shape", "--format", "json")
    assert "[reexec] Attempting exec()..." in result.stderr
    assert_one_error(result, 11, "returned shape [22, 7]")
    json_error(result, 11)


def test_token_ids_beyond_the_fakes_vocabulary_are_bad_input(fake_flow: FakeFlow, tmp_path: Path) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text("1 72 259")
    result = run_invoke(
        ["crossval-per-token", "--model", str(fake_flow.model), "--tokens-file", str(ids), "--format", "json"],
        env=fake_flow.env,
    )
    assert_one_error(result, 6, "token id 259, outside the model's vocabulary of 259 ids")
    json_error(result, 6)


def test_the_synthetic_default_needs_a_vocabulary_the_fake_tree_lacks(fake_flow: FakeFlow) -> None:
    result = run_invoke(["crossval-per-token", "--format", "json"], env=fake_flow.env)
    assert_one_error(result, 6, "models/ggml-vocab-llama-spm.gguf")
    json_error(result, 6)


def test_a_failed_repair_is_one_json_error(tmp_path: Path) -> None:
    source = copy_fake_llama(tmp_path / "fake-llama")
    env = {**child_env(tmp_path / "cache"), "LLAMA_CPP_SOURCE": str(source), "FAKE_LLAMA_BREAK": "1"}
    result = run_invoke(["crossval-per-token", "--repair", "auto", "--format", "json"], env=env)
    assert_one_error(result, 5)
    json_error(result, 5)
    assert "[reexec]" not in result.stderr


def test_in_ci_a_missing_backend_is_not_repaired(tmp_path: Path) -> None:
    env = {**child_env(tmp_path / "cache"), "CI": "true", "LLAMA_CPP_SOURCE": str(tmp_path / "unused")}
    result = run_invoke(["crossval-per-token", "--format", "json"], env=env)
    assert_one_error(result, 1, "llama.cpp is not available")
    json_error(result, 1)
    assert not (tmp_path / "cache" / "installs" / "llama").exists()
