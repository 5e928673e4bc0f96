"""Fixtures of the crossval-per-token tests: a cache with a shim built against the real pinned
llama.cpp, a way to run the command as a user would, and checks of what a user sees.

The cache is a shared build (tests/shared_builds.py), made once per test session before the first
test (`invoke rebuild` with LLAMA_CPP_DIR pointing at the session's llama.cpp install: about 40 s
for the shim), not once per module: the tests only read its constants and add synthetic models to
it, and the shim build is most of their run time.
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
from tests.shared_builds import SharedBuildFailed, Workshop, shared_build, shared_result

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


@shared_build(
    "crossval_cache",
    title="a cache whose constants list a shim built against the real llama.cpp: invoke rebuild",
    bound=900,
    needs=("llama_install", "llama_source"),
)
def build_crossval_cache(shop: Workshop) -> CrossvalCache:
    llama_install = shop.result("llama_install", Path)
    root = shop.mktemp("crossval") / "cache"
    env = child_env(root)
    env["LLAMA_CPP_DIR"] = str(llama_install)
    # models.find_vocabulary looks for a llama.cpp tree under <cache>/sources: give it one that
    # holds only the vocabulary file the synthetic models take their tokenizer from.
    vocab = root / "sources" / "llama-vocab" / "models" / VOCAB_NAME
    vocab.parent.mkdir(parents=True)
    shutil.copyfile(shop.result("llama_source", Path) / "models" / VOCAB_NAME, vocab)
    built = shop.run_invoke(["rebuild"], env=env)
    if built.returncode != 0:
        raise SharedBuildFailed(f"`invoke rebuild` exited with code {built.returncode}")
    record = read_constants(root / "constants.json").record("llama")
    if record is None or not record.available or not record.shim:
        raise SharedBuildFailed(f"`invoke rebuild` listed no shim for llama.cpp: {record}")
    return CrossvalCache(root=root, env=env, llama_install=llama_install, vocab=vocab)


@pytest.fixture(scope="session")
def crossval_cache(request: pytest.FixtureRequest) -> CrossvalCache:
    return shared_result(request, "crossval_cache", CrossvalCache)


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
