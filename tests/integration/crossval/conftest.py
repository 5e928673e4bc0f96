"""Fixtures of the crossval-per-token tests: a cache with a shim built against the real pinned
llama.cpp, a way to run the command as a user would, and checks of what a user sees.

The cache is built once per test session (`invoke rebuild` with LLAMA_CPP_DIR pointing at the
session's llama.cpp install: about 40 s for the shim), not once per module: the tests only read
its constants and add synthetic models to it, and the shim build is most of their run time.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bitnet_crossval.store.constants import read_constants
from tests.conftest import child_env
from tests.helpers import run_invoke

VOCAB_NAME = "ggml-vocab-llama-spm.gguf"


@dataclass(frozen=True)
class CrossvalCache:
    """A cache whose constants list a shim built against the real llama.cpp."""

    root: Path
    env: dict[str, str]
    llama_install: Path
    vocab: Path
    """llama.cpp's SentencePiece test vocabulary, the synthetic models' vocabulary."""

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """`invoke crossval-per-token ARGS` from the repository root, never repairing (the cache is
        complete; a repair here would mean a bug, and would build llama.cpp for minutes)."""
        return run_invoke(["crossval-per-token", "--repair", "never", *args], env=env or self.env, timeout=timeout)


@pytest.fixture(scope="session")
def crossval_cache(tmp_path_factory: pytest.TempPathFactory, llama_install: Path, llama_source: Path) -> CrossvalCache:
    root = tmp_path_factory.mktemp("crossval") / "cache"
    env = child_env(root)
    env["LLAMA_CPP_DIR"] = str(llama_install)
    # models.find_vocabulary looks for a llama.cpp tree under <cache>/sources: give it one that
    # holds only the vocabulary file the synthetic models take their tokenizer from.
    vocab = root / "sources" / "llama-vocab" / "models" / VOCAB_NAME
    vocab.parent.mkdir(parents=True)
    shutil.copyfile(llama_source / "models" / VOCAB_NAME, vocab)
    built = run_invoke(["rebuild"], env=env, timeout=900)
    assert built.returncode == 0, built.stderr[-3000:]
    record = read_constants(root / "constants.json").record("llama")
    assert record is not None and record.available and record.shim, built.stderr[-3000:]
    return CrossvalCache(root=root, env=env, llama_install=llama_install, vocab=vocab)


# --- what a user sees ---------------------------------------------------------------------------


def strict_json(text: str) -> Any:
    """Exactly one JSON document (json.loads refuses trailing data), without NaN or Infinity."""

    def refuse(constant: str) -> Any:
        raise AssertionError(f"stdout holds {constant}, which is not JSON")

    return json.loads(text, parse_constant=refuse)


def assert_one_error(result: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """Exit ``code``, exactly one `error:` line (returned), a `next:` line, no traceback."""
    err = result.stderr
    assert result.returncode == code, f"exit {result.returncode}, expected {code}\n{err[-3000:]}"
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-3000:]
    assert any(line.strip().startswith("next: ") for line in err.splitlines()), err[-3000:]
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def json_error(result: subprocess.CompletedProcess[str], code: int, *, verdict: str = "error") -> dict[str, Any]:
    """A failed --format json run: one JSON document on stdout saying error, with the exit code
    (``verdict`` "non-finite": the report of the run, with the error added)."""
    document = strict_json(result.stdout)
    assert document["verdict"] == verdict and document["ok"] is False, document
    assert document["command"] == "crossval-per-token", document
    assert document["error"]["exit_code"] == code == result.returncode, document
    assert document["error"]["message"] and document["error"]["next_step"]
    return document  # type: ignore[no-any-return]
