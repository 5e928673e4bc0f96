"""``--trace`` and the self-check against the real pinned llama.cpp (the shim's graph-callback trace)
and the real NumPy engine.

- every broken candidate of the self-check (each fault that applies, on each synthetic
  architecture) ends in divergence and the trace names the tensor the fault touches, as the
  engine's ``fault_site`` says (one ``invoke crossval-selfcheck --format json`` per module, exit 0);
- a correct candidate with ``--trace``: parity, ``"trace": null``, nothing traced, no trace lines;
- external candidates (``cmd:`` and ``py:``) that write a partial trace in their own layout: the
  comparison uses what they wrote (the layout says how it was mapped), lists what is missing and
  what only they wrote, and still names the faulty tensor;
- ``--trace-layers 5-5`` on a 12-layer model writes a small part of a full trace, on both sides;
- the self-check fails (exit 1, one sentence naming the cases) when a fault is not caught or is
  mislocated.

The cache these tests use is their own: a constants file recording the session's shim (built
once by tests/conftest.py's ``llama_shim``) against the session's llama.cpp (``LLAMA_CPP_DIR``),
and llama.cpp's SentencePiece vocabulary under ``sources/`` for the synthetic models. The bitnet
cases (slow) use the 2024 bitnet.cpp built from ``../shared/data/bitnet-cpp-2024.tar.gz`` and a
shim against it (the fixtures of tests/integration/reference/test_dequantize_bitnet2024.py), and
skip when the archive, or clang to build it, is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from invoke.context import Context
from invoke.exceptions import Exit

from bitnet_crossval.backends.specs import BITNET, LLAMA
from bitnet_crossval.context import SuiteContext, load_context
from bitnet_crossval.crossval import CrossvalRequest, CrossvalResult, parse_candidate, parse_model, run_crossval
from bitnet_crossval.crossval.candidates.numpy_engine import NumpyCandidate
from bitnet_crossval.crossval.engine import FAULTS, EngineOptions, Fault, TraceSite, load_engine
from bitnet_crossval.crossval.engine.engine import Engine
from bitnet_crossval.crossval.engine.graph import Run
from bitnet_crossval.crossval.models import resolve_model
from bitnet_crossval.crossval.synthetic import SyntheticSpec, write_synthetic_model
from bitnet_crossval.errors import BadInput
from bitnet_crossval.reference.client import Shim, TraceResult
from tests.bitnet2024 import SKIPS
from tests.helpers import REPO_ROOT, run_invoke
from tests.shim_cache import cache_env_with_shim

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

VOCAB_NAME = "ggml-vocab-llama-spm.gguf"
ARCHS = ("llama", "bitnet", "gemma3")
PARTIAL = REPO_ROOT / "tests" / "data" / "crossval_trace" / "partial_trace.py"
PARTIAL_PY = "py:tests.data.crossval_trace.partial_trace"
FLOAT_KL = 0.002


@dataclass(frozen=True)
class TraceCache:
    root: Path
    env: dict[str, str]
    ctx: SuiteContext
    vocab: Path

    def invoke(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """A task as a user runs it, never repairing (the cache is complete)."""
        return run_invoke([*args, "--repair", "never"], env=self.env, timeout=timeout)

    def model(self, arch: str) -> Path:
        return resolve_model(parse_model(f"synthetic:{arch}"), cache=self.ctx.cache, env=self.ctx.env, source_dirs=[])


@pytest.fixture(scope="module")
def cache(
    tmp_path_factory: pytest.TempPathFactory, llama_install: Path, llama_source: Path, llama_shim: Shim
) -> TraceCache:
    """What `invoke rebuild` writes, with the session's shim instead of a second build of it."""
    root = tmp_path_factory.mktemp("trace-real") / "cache"
    vocab = root / "sources" / "llama-vocab" / "models" / VOCAB_NAME
    vocab.parent.mkdir(parents=True)
    shutil.copyfile(llama_source / "models" / VOCAB_NAME, vocab)
    env = cache_env_with_shim(root, LLAMA, llama_install, llama_shim)
    return TraceCache(root=root, env=env, ctx=load_context(env), vocab=vocab)


@pytest.fixture(scope="module")
def bitnet_trace_cache(
    tmp_path_factory: pytest.TempPathFactory,
    cache: TraceCache,
    bitnet_install: Path,
    bitnet: Shim,
) -> TraceCache:
    """The same for the 2024 bitnet.cpp (``BITNET_CPP_DIR``) and a shim built against it."""
    root = tmp_path_factory.mktemp("trace-real-bitnet") / "cache"
    vocab = root / "sources" / "llama-vocab" / "models" / VOCAB_NAME
    vocab.parent.mkdir(parents=True)
    shutil.copyfile(cache.vocab, vocab)
    env = cache_env_with_shim(root, BITNET, bitnet_install, bitnet)
    return TraceCache(root=root, env=env, ctx=load_context(env), vocab=vocab)


def strict_json(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise AssertionError(f"stdout holds {constant}, which is not JSON")

    return json.loads(text, parse_constant=refuse)


def fault_site(model: Path, fault: str) -> str:
    """Where the engine says the fault first shows (independently of the self-check's own call)."""
    site = load_engine(model, EngineOptions(fault=Fault(name=fault))).fault_site()  # type: ignore[arg-type]
    assert site is not None
    return site.key


def applies(model: Path, fault: str) -> bool:
    try:
        load_engine(model, EngineOptions(fault=Fault(name=fault)))  # type: ignore[arg-type]
    except BadInput:
        return False
    return True


# --- the self-check: every broken candidate caught and located -----------------------------------


@pytest.fixture(scope="module")
def selfcheck(cache: TraceCache) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`invoke crossval-selfcheck --candidate numpy --format json`, all three architectures, once per module."""
    result = cache.invoke("crossval-selfcheck", "--candidate", "numpy", "--format", "json", timeout=900)
    return result, strict_json(result.stdout) if result.stdout.strip() else {}


def test_the_selfcheck_exits_0_with_one_json_document(
    selfcheck: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    result, document = selfcheck
    assert result.returncode == 0, result.stderr[-3000:]
    assert document["ok"] is True
    assert all(case["ok"] and case["caught"] and case["located"] for case in document["cases"])
    assert not [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "crossval self-check" in result.stderr  # the table, on stderr


def test_the_selfcheck_runs_every_fault_that_applies_on_each_architecture(
    selfcheck: tuple[subprocess.CompletedProcess[str], dict[str, Any]], cache: TraceCache
) -> None:
    _result, document = selfcheck
    ran = [(case["architecture"], case["fault"]) for case in document["cases"]]
    expected = []
    for arch in ARCHS:
        model = cache.model(arch)
        expected += [(arch, None)] + [(arch, name) for name in FAULTS if applies(model, name)]
    assert sorted(ran, key=str) == sorted(expected, key=str)
    assert len(ran) == len(set(ran))


FAULT_CASES = [(arch, name) for arch in ARCHS for name, spec in FAULTS.items() if arch in spec.families]


@pytest.mark.parametrize(("arch", "fault"), FAULT_CASES)
def test_each_broken_candidate_is_caught_and_located(
    selfcheck: tuple[subprocess.CompletedProcess[str], dict[str, Any]], cache: TraceCache, arch: str, fault: str
) -> None:
    _result, document = selfcheck
    case = next(c for c in document["cases"] if c["architecture"] == arch and c["fault"] == fault)
    assert case["verdict"] == "divergence"
    assert case["first_failure"] is not None and case["kl_at_first_failure"] > FLOAT_KL
    site = fault_site(cache.model(arch), fault)
    assert case["found_site"] == site, f"{arch}/{fault}: traced {case['found_site']}, the fault touches {site}"
    assert case["expected_site"] == site


@pytest.mark.parametrize("arch", ARCHS)
def test_the_engine_as_it_is_passes_the_selfcheck(
    selfcheck: tuple[subprocess.CompletedProcess[str], dict[str, Any]], arch: str
) -> None:
    _result, document = selfcheck
    case = next(c for c in document["cases"] if c["architecture"] == arch and c["fault"] is None)
    assert case["verdict"] == "parity" and case["first_failure"] is None and case["found_site"] is None


@pytest.mark.parametrize(
    ("arch", "fault"), [("llama", "rope_type"), ("bitnet", "missing_sub_norm"), ("gemma3", "missing_qk_norm")]
)
def test_the_located_tensor_is_the_first_in_the_references_order_that_departs(
    cache: TraceCache, tmp_path: Path, arch: str, fault: str
) -> None:
    """Through run_crossval as the self-check calls it: everything the reference traced before the
    fault's tensor was compared and agrees, and the comparison stopped there."""
    request = CrossvalRequest(
        model=parse_model(f"synthetic:{arch}"), candidate=parse_candidate(f"numpy:{fault}"), trace=True
    )
    result = run_crossval(request, cache.ctx, work_dir=tmp_path)
    assert result.verdict == "divergence" and result.summary is not None
    first = result.summary.first_failure
    assert first is not None
    trace = result.trace
    assert trace is not None and trace.candidate_traced
    assert trace.positions == list(range(first + 1))
    site = fault_site(cache.model(arch), fault)
    assert trace.first_departure is not None and trace.first_departure.name == site
    reference_order = [
        t["name"] for t in json.loads((tmp_path / "reference-trace" / "trace.json").read_text())["tensors"]
    ]
    compared = [c.name for c in trace.compared]
    assert compared == reference_order[: len(compared)]
    assert all(c.agrees for c in trace.compared[:-1]) and not trace.compared[-1].agrees
    assert trace.last_agreement is not None and trace.last_agreement.name == compared[-2]
    assert trace.missing_in_candidate == [] and trace.only_in_candidate == []
    assert result.to_json()["trace"]["first_departure"]["name"] == site
    assert f"{site} (" in result.failure_sentence()


# --- a correct candidate: parity and no trace noise ----------------------------------------------


@dataclass
class Spy:
    calls: list[str]


@pytest.fixture
def trace_spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    """Records every trace made in this process: the shim's and the NumPy candidate's."""
    spy = Spy(calls=[])
    shim_trace, numpy_trace = Shim.trace, NumpyCandidate.trace

    def on_shim(self: Shim, *args: Any, **kwargs: Any) -> TraceResult:
        spy.calls.append("shim")
        return shim_trace(self, *args, **kwargs)

    def on_numpy(self: NumpyCandidate, *args: Any, **kwargs: Any) -> Any:
        spy.calls.append("numpy")
        return numpy_trace(self, *args, **kwargs)

    monkeypatch.setattr(Shim, "trace", on_shim)
    monkeypatch.setattr(NumpyCandidate, "trace", on_numpy)
    return spy


def _traces_nothing(cache: TraceCache, tmp_path: Path, trace_spy: Spy, backend: str, arch: str) -> None:
    crossval = CrossvalRequest(model=parse_model(f"synthetic:{arch}"), backend=backend, trace=True)  # type: ignore[arg-type]
    result = run_crossval(crossval, cache.ctx, work_dir=tmp_path)
    assert result.verdict == "parity", result.failure_sentence()
    assert result.trace is None and result.to_json()["trace"] is None
    assert trace_spy.calls == []
    assert "trace" not in result.timings
    assert not [p for p in tmp_path.rglob("*") if "trace" in p.name]

    cli = cache.invoke(
        "crossval-per-token", "--model", f"synthetic:{arch}", "--backend", backend, "--trace", "--format", "json"
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    document = strict_json(cli.stdout)
    assert document["verdict"] == "parity" and document["trace"] is None
    assert "trace" not in document["timings"]
    assert "parity: the candidate agrees" in cli.stderr
    noise = [line for line in cli.stderr.splitlines() if "trac" in line.lower()]
    assert noise == [], noise


@pytest.mark.parametrize("arch", ARCHS)
def test_a_correct_candidate_with_trace_traces_nothing(
    cache: TraceCache, tmp_path: Path, trace_spy: Spy, arch: str
) -> None:
    _traces_nothing(cache, tmp_path, trace_spy, "llama", arch)


# The 2024 bitnet.cpp's llama.cpp fork predates the gemma3 architecture.
@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("arch", [a for a in ARCHS if a != "gemma3"])
@SKIPS[0]
@SKIPS[1]
def test_a_correct_candidate_with_trace_traces_nothing_on_the_2024_bitnet_cpp(
    bitnet_trace_cache: TraceCache, tmp_path: Path, trace_spy: Spy, arch: str
) -> None:
    _traces_nothing(bitnet_trace_cache, tmp_path, trace_spy, "bitnet", arch)


# --- external candidates with a partial trace in their own layout ---------------------------------


def partial_cmd(fault: str, *extra: str) -> str:
    return "cmd:" + " ".join([sys.executable, str(PARTIAL), fault, "{model}", "{tokens}", "{out}", "{trace}", *extra])


def check_partial(trace: dict[str, Any], *, site: str, positions: list[int]) -> None:
    """What the comparison made of the partial trace (JSON form)."""
    assert trace["candidate_traced"] is True
    assert trace["positions"] == positions  # the candidate wrote every position: rows were selected
    assert trace["first_departure"]["name"] == site
    assert trace["first_departure"]["agrees"] is False
    compared = {c["name"]: c for c in trace["compared"]}
    qcur = compared["Qcur-0"]
    assert qcur["agrees"] and qcur["layout"].startswith("as is, heads merged"), qcur
    assert all(c["layout"] == "as is" for name, c in compared.items() if not name.startswith("Qcur"))
    assert trace["missing_in_candidate"] == ["Vcur-0"]
    assert "Vcur-0" not in compared
    assert trace["only_in_candidate"] == ["scratch-1"]
    assert trace["last_agreement"]["name"] == trace["compared"][-2]["name"]
    assert all(c["agrees"] for c in trace["compared"][:-1])


def test_a_cmd_candidate_with_a_partial_trace_is_compared_on_what_it_wrote(cache: TraceCache) -> None:
    model = cache.model("llama")
    cli = cache.invoke(
        "crossval-per-token", "--model", "synthetic:llama", "--candidate", partial_cmd("mask_ahead"), "--trace",
        "--format", "json",
    )  # fmt: skip
    assert cli.returncode == 10, cli.stderr[-3000:]
    document = strict_json(cli.stdout)
    assert document["verdict"] == "divergence"
    first = document["summary"]["first_failure"]
    site = fault_site(model, "mask_ahead")
    check_partial(document["trace"], site=site, positions=list(range(first + 1)))
    err = cli.stderr
    assert f"trace: layer 0, {site} (" in err and "first departs" in err
    assert "the candidate did not provide 1 tensors the reference computed: Vcur-0" in err
    assert "the candidate wrote tensors the reference does not name: scratch-1" in err
    assert "heads merged" in err  # the table shows how Qcur-0 was mapped
    error = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and site in error[0]


def test_a_py_candidate_with_a_trace_argument_is_compared_on_what_it_wrote(cache: TraceCache, tmp_path: Path) -> None:
    model = cache.model("gemma3")
    request = CrossvalRequest(
        model=parse_model("synthetic:gemma3"), candidate=parse_candidate(f"{PARTIAL_PY}:mask_ahead"), trace=True
    )
    result = run_crossval(request, cache.ctx, work_dir=tmp_path)
    assert result.verdict == "divergence" and result.summary is not None and result.summary.first_failure is not None
    assert result.trace is not None
    # Each run of the candidate has a directory of its own: the first evaluates, the second traces.
    written = sorted(p.stem for p in (tmp_path / "candidate-2" / "trace").glob("*.npy"))
    assert "scratch-1" in written and not [n for n in written if n.startswith("Vcur")]
    check_partial(
        result.to_json()["trace"],
        site=fault_site(model, "mask_ahead"),
        positions=list(range(result.summary.first_failure + 1)),
    )


def test_a_correct_py_candidate_with_a_partial_trace_is_parity_and_traces_nothing(
    cache: TraceCache, tmp_path: Path
) -> None:
    request = CrossvalRequest(
        model=parse_model("synthetic:llama"), candidate=parse_candidate(f"{PARTIAL_PY}:correct"), trace=True
    )
    result = run_crossval(request, cache.ctx, work_dir=tmp_path)
    assert result.verdict == "parity" and result.trace is None
    assert not (tmp_path / "candidate-trace").exists() and not (tmp_path / "reference-trace").exists()


def test_a_cmd_candidate_that_writes_no_trace_is_said_to_have_written_none(cache: TraceCache, tmp_path: Path) -> None:
    request = CrossvalRequest(
        model=parse_model("synthetic:llama"),
        candidate=parse_candidate(partial_cmd("mask_ahead", "--write-nothing")),
        trace=True,
    )
    result = run_crossval(request, cache.ctx, work_dir=tmp_path)
    assert result.verdict == "divergence" and result.trace is not None
    assert result.trace.compared == []  # nothing could be compared ...
    assert "wrote no trace" in result.trace.sentence()  # ... and the report should say why


@pytest.fixture(scope="module")
def layer_filtered_cmd(cache: TraceCache, tmp_path_factory: pytest.TempPathFactory) -> CrossvalResult:
    request = CrossvalRequest(
        model=parse_model("synthetic:llama"),
        candidate=parse_candidate(partial_cmd("mask_ahead")),
        trace=True,
        trace_layers=(1, 1),
    )
    return run_crossval(request, cache.ctx, work_dir=tmp_path_factory.mktemp("filtered-cmd"))


def test_a_layer_filter_with_a_cmd_candidate_compares_that_layer(layer_filtered_cmd: CrossvalResult) -> None:
    """mask_ahead changes layer 0 already, so layer 1 departs at its first tensor, its input."""
    trace = layer_filtered_cmd.trace
    assert trace is not None and trace.first_departure is not None
    assert [c.name for c in trace.compared] == ["attn_norm-1"]
    assert trace.first_departure.name == "attn_norm-1" and trace.first_departure.layer == 1
    assert trace.last_agreement is None and trace.missing_in_candidate == []
    assert "layer 1, attn_norm-1" in trace.sentence()


def test_a_layer_filter_does_not_call_other_layers_candidate_only(layer_filtered_cmd: CrossvalResult) -> None:
    trace = layer_filtered_cmd.trace
    assert trace is not None
    assert trace.only_in_candidate == ["scratch-1"]


# --- bounded output: one layer of a deep model ----------------------------------------------------


N_DEEP = 12


@dataclass(frozen=True)
class TracedRun:
    result: CrossvalResult
    reference: TraceResult
    tensor_files: dict[str, int]  # name -> bytes of the reference's tensor files
    candidate_entries: dict[str, int]  # name -> bytes the NumPy candidate recorded


@pytest.fixture(scope="module")
def deep_model(cache: TraceCache, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_model(
        tmp_path_factory.mktemp("deep") / "llama-12-layers.gguf",
        arch="llama",
        vocab=cache.vocab,
        spec=SyntheticSpec(n_layer=N_DEEP),
    )


@pytest.fixture(scope="module")
def deep_runs(
    cache: TraceCache, deep_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[tuple[int, int] | None], TracedRun]:
    """``run(layers)``: the 12-layer model, numpy:norm_eps, --trace [--trace-layers A-B], with
    what each side traced."""
    made: dict[tuple[int, int] | None, TracedRun] = {}

    def run(layers: tuple[int, int] | None) -> TracedRun:
        if layers in made:
            return made[layers]
        seen: dict[str, Any] = {}
        shim_trace, numpy_trace = Shim.trace, NumpyCandidate.trace

        def on_shim(self: Shim, *args: Any, **kwargs: Any) -> TraceResult:
            seen["reference"] = shim_trace(self, *args, **kwargs)
            return seen["reference"]  # type: ignore[no-any-return]

        def on_numpy(self: NumpyCandidate, *args: Any, **kwargs: Any) -> Any:
            seen["candidate"] = numpy_trace(self, *args, **kwargs)
            return seen["candidate"]

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Shim, "trace", on_shim)
            mp.setattr(NumpyCandidate, "trace", on_numpy)
            request = CrossvalRequest(
                model=parse_model(str(deep_model)),
                candidate=parse_candidate("numpy:norm_eps"),
                trace=True,
                trace_layers=layers,
            )
            result = run_crossval(request, cache.ctx, work_dir=tmp_path_factory.mktemp("deep-run"))
        reference: TraceResult = seen["reference"]
        made[layers] = TracedRun(
            result=result,
            reference=reference,
            tensor_files={t.name: t.path.stat().st_size for t in reference.tensors},
            candidate_entries={name: int(load().nbytes) for name, load in seen["candidate"].items()},
        )
        return made[layers]

    return run


def test_a_one_layer_trace_of_a_deep_model_writes_a_small_part_of_a_full_one(
    deep_runs: Callable[[tuple[int, int] | None], TracedRun],
) -> None:
    full, one = deep_runs(None), deep_runs((5, 5))
    # The reference side: what the shim wrote, tensor files and their bytes.
    assert {t.layer for t in full.reference.tensors} == {None, *range(N_DEEP)}
    assert {t.layer for t in one.reference.tensors} == {5}
    per_layer = len([t for t in full.reference.tensors if t.layer == 5])
    assert len(one.tensor_files) == per_layer
    assert len(full.tensor_files) > N_DEEP * per_layer
    on_disk = {p.name for p in one.reference.out_dir.glob("*.npy")} - {one.reference.logits_path.name}
    assert on_disk == {t.path.name for t in one.reference.tensors}
    full_bytes, one_bytes = sum(full.tensor_files.values()), sum(one.tensor_files.values())
    assert one_bytes * N_DEEP < full_bytes, (one_bytes, full_bytes)

    # The candidate side: what the NumPy engine recorded, one layer (and the few unlayered ends,
    # none of which the numpy candidate records under a layer filter).
    def layered(entries: dict[str, int]) -> dict[str, int]:
        return {name: size for name, size in entries.items() if name.rpartition("-")[2].isdigit()}

    one_layered, full_layered = layered(one.candidate_entries), layered(full.candidate_entries)
    assert one_layered and all(name.endswith("-5") for name in one_layered)
    assert len(one_layered) == per_layer and len(full_layered) == N_DEEP * per_layer
    assert sum(one_layered.values()) * N_DEEP <= sum(full_layered.values())
    # Under a layer filter the candidate records no unlayered tensor (the reference writes none either).
    assert set(one.candidate_entries) == set(one_layered)
    assert set(full.candidate_entries) - set(full_layered)
    print(
        f"\n{N_DEEP}-layer llama, positions {full.result.trace and full.result.trace.positions}: reference trace "
        f"{len(full.tensor_files)} tensor files {full_bytes} B, --trace-layers 5-5 {len(one.tensor_files)} files "
        f"{one_bytes} B (the logits file, written either way: {one.reference.logits_path.stat().st_size} B); "
        f"candidate {len(full.candidate_entries)} entries {sum(full.candidate_entries.values())} B vs "
        f"{len(one.candidate_entries)} entries {sum(one.candidate_entries.values())} B"
    )


def test_a_one_layer_trace_still_departs_in_that_layer(
    deep_runs: Callable[[tuple[int, int] | None], TracedRun],
) -> None:
    full, one = deep_runs(None), deep_runs((5, 5))
    assert full.result.trace is not None and full.result.trace.first_departure is not None
    assert full.result.trace.first_departure.name == "attn_norm-0"  # norm_eps's site
    assert one.result.trace is not None and one.result.trace.first_departure is not None
    assert one.result.trace.first_departure.layer == 5
    assert {c.layer for c in one.result.trace.compared} == {5}
    assert one.result.trace.only_in_candidate == [] and one.result.trace.missing_in_candidate == []


# --- the self-check fails when a case is not caught or not located --------------------------------


@pytest.fixture
def in_process(cache: TraceCache, monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[int, dict[str, Any], str]]:
    """``run(**task_args)``: `invoke crossval-selfcheck --arch llama --candidate numpy --format json`
    in this process (so it can be patched), on this module's cache, with only the clean run and norm_eps."""
    import bitnet_crossval.crossval.selfcheck as selfcheck_module
    from bitnet_crossval.tasks import _runner
    from bitnet_crossval.tasks.selfcheck import crossval_selfcheck

    for name in list(os.environ):
        if name.startswith(("BITNET_", "LLAMA_CPP_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BITNET_CACHE_DIR", str(cache.root))
    monkeypatch.setenv("LLAMA_CPP_DIR", cache.env["LLAMA_CPP_DIR"])
    monkeypatch.setattr(_runner, "_context", None)
    monkeypatch.setattr(selfcheck_module, "cases_for", lambda arch: [None, "norm_eps"])

    def run(capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
        capsys.readouterr()
        code = 0
        try:
            crossval_selfcheck(Context(), arch="llama", candidate="numpy", format="json", repair="never")
        except Exit as exc:
            code = exc.code
        out, err = capsys.readouterr()
        return code, strict_json(out), err

    return run


def test_the_selfcheck_in_process_passes_unpatched(
    in_process: Callable[..., tuple[int, dict[str, Any], str]], capsys: pytest.CaptureFixture[str]
) -> None:
    code, document, err = in_process(capsys)
    assert code == 0, err[-3000:]
    assert document["ok"] is True and [c["fault"] for c in document["cases"]] == [None, "norm_eps"]


def test_a_mislocated_fault_fails_the_selfcheck(
    in_process: Callable[..., tuple[int, dict[str, Any], str]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Engine, "fault_site", lambda self: TraceSite("ffn_out", 0))
    code, document, err = in_process(capsys)
    assert code == 12
    assert document["ok"] is False
    case = document["cases"][1]
    assert case["fault"] == "norm_eps" and case["caught"] and not case["located"] and not case["ok"]
    assert (case["expected_site"], case["found_site"]) == ("ffn_out-0", "attn_norm-0")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == ["error: the self-check failed: 1 of 2 cases were not caught or not located (llama/norm_eps)"], (
        err[-3000:]
    )
    assert "next: read the self-check table above" in err
    assert "Traceback" not in err


def test_a_fault_that_changes_nothing_fails_the_selfcheck(
    in_process: Callable[..., tuple[int, dict[str, Any], str]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Run, "faulty", lambda self, name: False)  # every fault a no-op
    code, document, err = in_process(capsys)
    assert code == 12
    case = document["cases"][1]
    assert case["fault"] == "norm_eps" and case["verdict"] == "parity"
    assert not case["caught"] and not case["ok"] and case["found_site"] is None
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == ["error: the self-check failed: 1 of 2 cases were not caught or not located (llama/norm_eps)"], (
        err[-3000:]
    )
