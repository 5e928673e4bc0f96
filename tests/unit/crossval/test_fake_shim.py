"""The fake reference shim (fake_shim.py) speaks the shim's protocol: the suite's own client
(``reference.client.Shim``) reads its documents, arrays and traces, and its numbers are the
engine's. What the flow tests rely on is checked here, where a failure names the fake."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bitnet_crossval.context import SuiteContext
from bitnet_crossval.crossval.engine import TraceRecorder, load_engine
from bitnet_crossval.crossval.models import parse_model, resolve_model
from bitnet_crossval.errors import BadInput
from bitnet_crossval.reference.client import Shim
from bitnet_crossval.reference.lookup import recorded_shim
from bitnet_crossval.util import proc
from tests.gguf_models import BOS_ID, EOS_ID, spm_vocabulary
from tests.unit.crossval import fake_shim
from tests.unit.crossval.fake_reference import FakeCache

pytestmark = pytest.mark.usefixtures("one_blas_thread_here")

TOKENS = [BOS_ID, 300, 301, 302, 303, 304, 305]


@pytest.fixture
def ctx(fake_cache: FakeCache) -> SuiteContext:
    return fake_cache.context()


@pytest.fixture
def shim(ctx: SuiteContext) -> Shim:
    """The shim as the crossval gets it: the constants file's record, checked."""
    return recorded_shim(ctx.constants, "llama", env=ctx.env)


@pytest.fixture
def llama(ctx: SuiteContext) -> Path:
    return resolve_model(parse_model("synthetic:llama"), cache=ctx.cache, env=ctx.env, source_dirs=[])


def test_info_reports_the_models_facts(shim: Shim, llama: Path) -> None:
    info = shim.info(llama)

    assert (info["architecture"], info["vocab_size"], info["n_layer"]) == ("llama", len(spm_vocabulary()[0]), 3)
    assert (info["bos"], info["eos"], info["add_bos"]) == (BOS_ID, EOS_ID, True)
    assert info["context_length"] == 512 and info["api"] == "current" and info["trace_supported"] is True


def test_tokenize_and_detokenize_use_the_models_vocabulary(shim: Shim, llama: Path) -> None:
    tokens = shim.tokenize(llama, "hello world", add_bos=True, parse_special=False)
    tokens_list = spm_vocabulary()[0]

    assert tokens.tokens == (BOS_ID, tokens_list.index("▁hello"), tokens_list.index("▁world"))
    assert tokens.pieces == (b"<s>", b" hello", b" world")
    back = shim.detokenize(llama, tokens.tokens)
    assert back.text == "hello world" and back.pieces == (b"", b" hello", b" world")
    # what no piece covers goes byte by byte
    assert shim.tokenize(llama, "é", add_bos=False, parse_special=False).pieces == (b" ", b"\xc3", b"\xa9")


def test_logits_and_generate_are_the_engines(shim: Shim, llama: Path) -> None:
    expected = load_engine(llama).forward(TOKENS)

    logits, doc = shim.logits(llama, TOKENS)
    assert np.array_equal(logits, expected)
    assert (doc["kv_type_k"], doc["kv_type_v"], doc["n_ctx"], doc["threads"]) == ("f32", "f32", len(TOKENS), 1)

    generated = shim.generate(llama, TOKENS[:3], n=3)
    prompt_only = load_engine(llama).forward(TOKENS[:3])  # the first token comes from the prompt's last row
    assert np.array_equal(generated.logits[0], prompt_only[-1])
    assert generated.tokens[0] == int(np.argmax(prompt_only[-1]))
    assert generated.metadata["n_prompt"] == 3 and generated.metadata["sampling"] == "greedy"


@pytest.mark.parametrize(
    ("layers", "names", "positions", "expected"),
    [
        # a range from layer 0 keeps what comes before the layers, one to the last layer what follows
        ((0, 0), None, None, lambda n: n == "embd" or n.endswith("-0")),
        ((2, 2), None, None, lambda n: n.endswith("-2") or n in {"norm", "result_norm", "result_output"}),
        ((1, 1), None, None, lambda n: n.endswith("-1")),
        (None, "Qcur-.*|l_out-\\d+", [0, 4], lambda n: n.startswith(("Qcur-", "l_out-"))),
    ],
    ids=["first-layer", "last-layer", "middle-layer", "names-and-positions"],
)
def test_trace_filters_as_the_shim_does_and_writes_the_engines_values(
    shim: Shim,
    llama: Path,
    tmp_path: Path,
    layers: tuple[int, int] | None,
    names: str | None,
    positions: list[int] | None,
    expected: Callable[[str], bool],
) -> None:
    recorder = TraceRecorder()
    load_engine(llama).forward(TOKENS, trace=recorder)
    wanted = [name for name in recorder if expected(name)]

    trace = shim.trace(llama, TOKENS, out_dir=tmp_path / "trace", layers=layers, names=names, positions=positions)

    assert list(trace.names) == wanted
    rows = positions if positions is not None else list(range(len(TOKENS)))
    assert trace.positions == tuple(rows)
    for tensor in trace.tensors:
        assert np.array_equal(tensor.load(), recorder[tensor.name][rows])
        assert tensor.ne[tensor.token_dim] == len(TOKENS)
    assert np.array_equal(trace.logits(), load_engine(llama).forward(TOKENS))
    assert [p.name for p in tmp_path.iterdir()] == ["trace"]  # no .partial directory left


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda s, m, d: s.logits(m, [0, 99999]), "token id 99999 at index 1 is outside the vocabulary"),
        (lambda s, m, d: s.trace(m, [1, 2], out_dir=d, positions=[5]), "position 5 is past the last token"),
        (lambda s, m, d: s.trace(m, [1, 2], out_dir=d, layers=(7, 8)), "--layers 7-8 selects no layer"),
        (lambda s, m, d: s.trace(m, [1, 2], out_dir=d.parent), "is not empty"),
        (lambda s, m, d: s.info(d.parent / "missing.gguf"), "model file not found"),
    ],
    ids=["token-id", "positions", "layers", "non-empty-dir", "missing-model"],
)
def test_bad_requests_are_refused_with_the_shims_codes(
    shim: Shim, llama: Path, tmp_path: Path, call: Callable[[Shim, Path, Path], object], fragment: str
) -> None:
    (tmp_path / "occupied").touch()
    with pytest.raises(BadInput) as raised:
        call(shim, llama, tmp_path / "trace")
    assert fragment in raised.value.message


def test_an_unknown_option_is_a_usage_error(fake_cache: FakeCache) -> None:
    result = proc.run([str(fake_cache.shim.script), "info", "--colour", "red"], env=fake_cache.env(), check=False)
    assert result.returncode == 2
    assert result.output == "bitnet-shim: error: unknown option --colour for info\n"


def test_on_its_own_the_executable_answers_the_same(fake_cache: FakeCache, shim: Shim, llama: Path) -> None:
    """Without the server (no FAKE_SHIM_SOCKET) the script imports the engine itself: slower, same answers."""
    env = {k: v for k, v in fake_cache.env().items() if k != fake_shim.SOCKET_ENV}
    alone = Shim(fake_cache.shim.script, env=env)

    assert alone.info(llama) == shim.info(llama)
    assert np.array_equal(alone.logits(llama, TOKENS)[0], shim.logits(llama, TOKENS)[0])


def test_the_server_ends_with_the_process_that_started_it(tmp_path: Path) -> None:
    """A server whose parent is gone stops by itself, so none outlives a test run that crashed."""
    launcher = (
        "import subprocess, sys\n"
        "server = subprocess.Popen([sys.executable, sys.argv[1], 'fake-serve', sys.argv[2]], stdout=subprocess.PIPE)\n"
        "print(server.pid, server.stdout.readline().decode().strip(), flush=True)\n"
    )
    socket_path = tmp_path / "s.sock"
    launched = subprocess.run(
        [sys.executable, "-c", launcher, fake_shim.__file__, str(socket_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    pid, ready = launched.stdout.split(maxsplit=1)
    assert ready.strip() == fake_shim.READY_LINE
    deadline = time.monotonic() + 30  # it looks at its parent once a second
    while socket_path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if socket_path.exists():
        os.kill(int(pid), signal.SIGKILL)
        pytest.fail("the server outlived the process that started it")
