"""bitnet_crossval.reference.client without C++: a fake ``bitnet-shim`` (tests/unit/reference/fakes.py)
records the arguments it gets and answers as the plan says."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bitnet_crossval.errors import BackendUnavailable, BadInput, SuiteError, UnclassifiedError
from bitnet_crossval.reference import client as shim
from bitnet_crossval.reference.client import Shim
from bitnet_crossval.util import ui
from tests.unit.reference.fakes import Plan, calls, option

# ----- argument building -------------------------------------------------------------------------


def test_tokenize_passes_explicit_flags_and_utf8_text(plan: Plan, tmp_path: Path) -> None:
    text = "héllo 🙂"
    client = plan(stdout=json.dumps({"tokens": [1, 7], "pieces_hex": ["3c733e", "f09f"]}))
    result = client.tokenize(Path("m.gguf"), text, add_bos=True, parse_special=False)

    (call,) = calls(tmp_path)
    argv = call["argv"]
    assert argv[0] == "tokenize"
    assert option(argv, "--model") == "m.gguf"
    assert (option(argv, "--add-bos"), option(argv, "--parse-special")) == ("1", "0")
    assert bytes.fromhex(call["files"]["--text-file"]) == text.encode("utf-8")
    assert result.tokens == (1, 7)
    assert result.pieces == (b"<s>", b"\xf0\x9f")  # a partial character survives as bytes


def test_detokenize_sends_token_file_and_decodes_hex_text(plan: Plan, tmp_path: Path) -> None:
    client = plan(stdout=json.dumps({"text_hex": "68c3a9f0", "pieces_hex": ["68", "c3a9", "f0"]}))
    result = client.detokenize(Path("m.gguf"), [5, 6, 7], remove_special=True)

    (call,) = calls(tmp_path)
    assert json.loads(bytes.fromhex(call["files"]["--tokens-file"])) == [5, 6, 7]
    assert (option(call["argv"], "--remove-special"), option(call["argv"], "--unparse-special")) == ("1", "0")
    assert result.text_bytes == b"h\xc3\xa9\xf0"
    assert result.text == "hé\ufffd"


def test_logits_passes_run_settings_and_reads_the_array(plan: Plan, tmp_path: Path) -> None:
    client = plan(stdout=json.dumps({"n_vocab": 5, "kv_type": "f16"}), npy_shape=[3, 5])
    logits, meta = client.logits(Path("m.gguf"), [1, 2, 3], threads=4, kv_type="f16")

    (call,) = calls(tmp_path)
    argv = call["argv"]
    assert argv[0] == "logits"
    assert (option(argv, "--threads"), option(argv, "--kv-type")) == ("4", "f16")
    assert json.loads(bytes.fromhex(call["files"]["--tokens-file"])) == [1, 2, 3]
    assert logits.shape == (3, 5)
    assert logits.dtype == np.float32
    assert logits[2, 4] == 14.0
    assert meta["kv_type"] == "f16"
    assert not Path(option(argv, "--out")).exists(), "without out_dir no file is kept"


def test_logits_defaults_are_one_thread_and_auto_kv(plan: Plan, tmp_path: Path) -> None:
    # auto: F32 where the backend allows it, else the fallback the shim reports
    client = plan(stdout=json.dumps({"n_vocab": 2}), npy_shape=[1, 2])
    client.logits(Path("m.gguf"), [1])
    client.generate(Path("m.gguf"), [1], n=1)
    for call in calls(tmp_path):
        argv = call["argv"]
        assert (option(argv, "--threads"), option(argv, "--kv-type")) == ("1", "auto")


def test_logits_with_out_dir_memory_maps_a_kept_file(plan: Plan, tmp_path: Path) -> None:
    client = plan(stdout=json.dumps({"n_vocab": 4}), npy_shape=[2, 4])
    logits, _ = client.logits(Path("m.gguf"), [1, 2], out_dir=tmp_path / "arrays")
    assert isinstance(logits, np.memmap)
    out = Path(option(calls(tmp_path)[0]["argv"], "--out"))
    assert out.parent == tmp_path / "arrays"
    assert out.exists()


def test_logits_of_the_wrong_shape_are_rejected(plan: Plan) -> None:
    client = plan(stdout=json.dumps({"n_vocab": 5}), npy_shape=[2, 5])
    with pytest.raises(UnclassifiedError, match="shape"):
        client.logits(Path("m.gguf"), [1, 2, 3])


def test_generate_passes_n_and_returns_tokens_with_logits(plan: Plan, tmp_path: Path) -> None:
    client = plan(stdout=json.dumps({"tokens": [4, 4], "n_vocab": 3}), npy_shape=[2, 3])
    generation = client.generate(Path("m.gguf"), [1], n=2)
    argv = calls(tmp_path)[0]["argv"]
    assert argv[0] == "generate"
    assert option(argv, "--n") == "2"
    assert "--out-logits" in argv
    assert generation.tokens == (4, 4)
    assert generation.logits.shape == (2, 3)


def test_info_without_model_asks_only_for_build_facts(plan: Plan, tmp_path: Path) -> None:
    client = plan(stdout=json.dumps({"api": "legacy"}))
    assert client.info()["api"] == "legacy"
    client.info(Path("m.gguf"))
    client.info(Path("m.gguf"), load_weights=True)
    argvs = [c["argv"] for c in calls(tmp_path)]
    assert argvs[0] == ["info"]
    assert argvs[1] == ["info", "--model", "m.gguf", "--weights", "0"]
    assert argvs[2][-1] == "1"


def test_log_dir_adds_a_log_file_per_command(plan: Plan, tmp_path: Path) -> None:
    client = plan(stdout="{}", log_dir=tmp_path / "logs")
    client.info()
    argv = calls(tmp_path)[0]["argv"]
    assert option(argv, "--log-file") == str(tmp_path / "logs" / "shim-info.log")


def test_a_tagged_call_has_a_log_of_its_own(plan: Plan, tmp_path: Path) -> None:
    # Two evaluations running at once must not append to one log.
    client = plan(stdout=json.dumps({"n_vocab": 2}), npy_shape=[1, 2], log_dir=tmp_path / "logs")
    client.logits(Path("m.gguf"), [1])
    client.logits(Path("copy.gguf"), [1], log_tag="float-copy")
    first, second = (option(call["argv"], "--log-file") for call in calls(tmp_path))
    assert first == str(tmp_path / "logs" / "shim-logits.log")
    assert second == str(tmp_path / "logs" / "shim-logits-float-copy.log")


def test_setting_stop_interrupts_the_shim_and_the_call_fails(plan: Plan) -> None:
    client = plan(stdout=json.dumps({"n_vocab": 2}), npy_shape=[1, 2], sleep=60)
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    started = time.monotonic()
    with pytest.raises(SuiteError):
        client.logits(Path("m.gguf"), [1], stop=stop)
    assert time.monotonic() - started < 30  # interrupted, not slept out


def test_verbose_mode_asks_for_llama_cpp_log_when_no_log_dir(
    plan: Plan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ui, "_verbose", True)
    plan(stdout="{}").info()
    plan(stdout="{}", log_dir=tmp_path / "logs").info()
    first, second = (c["argv"] for c in calls(tmp_path))
    assert "--verbose" in first
    assert "--verbose" not in second  # the log file already keeps it


def test_json_is_found_after_stray_output(plan: Plan) -> None:
    client = plan(stdout='ggml noise\n{"api": "current"}\n')
    assert client.info() == {"api": "current"}


# ----- exit-code mapping ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error", "contract_exit"),
    [
        (shim.EXIT_USAGE, BadInput, 6),
        (shim.EXIT_MODEL, BadInput, 6),
        (shim.EXIT_UNSUPPORTED, BadInput, 6),
        (shim.EXIT_DECODE, UnclassifiedError, 1),
        (shim.EXIT_OTHER, UnclassifiedError, 1),
        (7, UnclassifiedError, 1),
    ],
)
def test_exit_codes_map_to_suite_errors(
    plan: Plan, tmp_path: Path, code: int, error: type[SuiteError], contract_exit: int
) -> None:
    client = plan(exit=code, stderr="bitnet-shim: error: the precise reason\n", log_dir=tmp_path / "logs")
    with pytest.raises(error) as caught:
        client.info(Path("m.gguf"))
    assert type(caught.value) is error
    assert caught.value.exit_code == contract_exit
    assert "the precise reason" in caught.value.message
    assert caught.value.log_path == tmp_path / "logs" / "shim-info.log"


def test_a_shim_killed_by_a_signal_is_unclassified(plan: Plan) -> None:
    client = plan(signal=9)
    with pytest.raises(UnclassifiedError, match="signal 9"):
        client.info()


def test_success_without_a_json_document_is_unclassified(plan: Plan) -> None:
    client = plan(stdout="not json\n")
    with pytest.raises(UnclassifiedError, match="no JSON document"):
        client.info()


def test_a_missing_executable_says_to_rebuild(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailable) as caught:
        Shim(tmp_path / "nowhere" / "bitnet-shim").info()
    assert "invoke rebuild" in caught.value.next_step


# ----- trace, quantize and the run report ----------------------------------------------------------


def _manifest(**overrides: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "format": "bitnet-shim-trace",
        "version": 1,
        "n_vocab": 5,
        "tokens": [1, 2, 3],
        "positions": [0, 2],
        "filters": {"layers": [0, 0], "names": "Qcur-.*|l_out-.*", "positions": [0, 2]},
        "tensors": [
            {
                "index": 0,
                "name": "Qcur-0",
                "layer": 0,
                "op": "ROPE",
                "n_nodes": 3,
                "ops": ["MUL_MAT", "RESHAPE", "ROPE"],
                "node": 7,
                "type": "f32",
                "ne": [4, 2, 3, 1],
                "token_dim": 2,
                "shape": [2, 2, 4],
                "dtype": "float32",
                "file": "Qcur-0.npy",
                "bytes": 192,
                "positions": [0, 2],
            },
            {
                "index": 1,
                "name": "result_output",
                "layer": None,
                "op": "MUL_MAT",
                "n_nodes": 1,
                "ops": ["MUL_MAT"],
                "node": 20,
                "type": "f32",
                "ne": [5, 3, 1, 1],
                "token_dim": 1,
                "shape": [2, 5],
                "dtype": "float32",
                "file": "result_output.npy",
                "bytes": 168,
                "positions": [0, 2],
            },
        ],
        "skipped": {"token_axis_inner": ["kq-0"]},
        "logits": {"file": "logits.npy", "shape": [3, 5]},
    }
    manifest.update(overrides)
    return manifest


def test_trace_passes_filters_and_parses_the_manifest(plan: Plan, tmp_path: Path) -> None:
    doc = {
        "manifest": "trace.json",
        "kv_type": "mixed",
        "kv_type_k": "f32",
        "kv_type_v": "f16",
        "kv_type_requested": "auto",
        "kv_fallback": "f32 K / f32 V refused: V cache quantization requires flash_attn",
        "threads": 1,
        "api": "legacy",
    }
    client = plan(stdout=json.dumps(doc), trace_manifest=_manifest())
    out = tmp_path / "trace"
    result = client.trace(Path("m.gguf"), [1, 2, 3], out_dir=out, layers=0, names="Qcur-.*|l_out-.*", positions=[0, 2])

    (call,) = calls(tmp_path)
    argv = call["argv"]
    assert argv[0] == "trace"
    assert option(argv, "--out-dir") == str(out)
    assert (option(argv, "--layers"), option(argv, "--names"), option(argv, "--positions")) == (
        "0-0",
        "Qcur-.*|l_out-.*",
        "0,2",
    )
    assert option(argv, "--kv-type") == "auto"
    assert json.loads(bytes.fromhex(call["files"]["--tokens-file"])) == [1, 2, 3]

    assert result.names == ("Qcur-0", "result_output")
    q = result.tensor("Qcur-0")
    assert (q.layer, q.op, q.n_nodes, q.ops, q.shape, q.token_dim) == (
        0,
        "ROPE",
        3,
        ("MUL_MAT", "RESHAPE", "ROPE"),
        (2, 2, 4),
        2,
    )
    assert result.tensor("result_output").layer is None
    assert q.path == out / "Qcur-0.npy"
    assert result.array("Qcur-0").shape == (2, 2, 4)
    assert result.logits().shape == (3, 5)
    assert result.filters.layers == (0, 0)
    assert result.positions == (0, 2)
    assert result.skipped == {"token_axis_inner": ("kq-0",)}
    assert (result.run.kv_type_k, result.run.kv_type_v, result.run.api) == ("f32", "f16", "legacy")
    assert result.run.kv_fallback is not None and "flash_attn" in result.run.kv_fallback
    with pytest.raises(KeyError):
        result.tensor("nope")


def test_trace_without_filters_sends_none_and_a_layer_range_as_a_range(plan: Plan, tmp_path: Path) -> None:
    client = plan(stdout="{}", trace_manifest=_manifest())
    client.trace(Path("m.gguf"), [1], out_dir=tmp_path / "a")
    client.trace(Path("m.gguf"), [1], out_dir=tmp_path / "b", layers=(1, 3), kv_type="f16", threads=2)
    first, second = (c["argv"] for c in calls(tmp_path))
    assert not {"--layers", "--names", "--positions"} & set(first)
    assert option(second, "--layers") == "1-3"
    assert (option(second, "--kv-type"), option(second, "--threads")) == ("f16", "2")


def test_a_trace_array_that_disagrees_with_the_manifest_is_unclassified(plan: Plan, tmp_path: Path) -> None:
    client = plan(stdout="{}", trace_manifest=_manifest(), wrong_shape=True)
    result = client.trace(Path("m.gguf"), [1, 2, 3], out_dir=tmp_path / "t")
    with pytest.raises(UnclassifiedError, match="manifest says"):
        result.array("Qcur-0")


@pytest.mark.parametrize(
    "manifest",
    [
        _manifest(format="something-else"),
        _manifest(version=2),
        _manifest(tensors=[{"name": "x"}]),
    ],
)
def test_a_manifest_of_another_format_is_unclassified(plan: Plan, tmp_path: Path, manifest: dict[str, Any]) -> None:
    client = plan(stdout="{}", trace_manifest=manifest)
    with pytest.raises(UnclassifiedError, match="not in the expected format") as caught:
        client.trace(Path("m.gguf"), [1], out_dir=tmp_path / "t")
    assert "invoke rebuild" in caught.value.next_step


def test_quantize_passes_the_type_and_reports_the_file(plan: Plan, tmp_path: Path) -> None:
    out = tmp_path / "q.gguf"
    client = plan(stdout=json.dumps({"out": str(out), "size_bytes_out": 10, "type": "Q4_K_M"}), quantized=[0] * 6)
    result = client.quantize(Path("m.gguf"), out, "Q4_K_M")
    argv = calls(tmp_path)[0]["argv"]
    assert argv[0] == "quantize"
    assert (option(argv, "--model"), option(argv, "--out"), option(argv, "--type")) == ("m.gguf", str(out), "Q4_K_M")
    assert (result.out, result.type, result.size_bytes) == (out, "Q4_K_M", 10)
    assert out.read_bytes().startswith(b"GGUF")
    assert option(argv, "--allow-requantize") == "0"  # llama.cpp's own default, stated
    client.quantize(Path("m.gguf"), out, "F32", allow_requantize=True)
    assert option(calls(tmp_path)[1]["argv"], "--allow-requantize") == "1"


def test_run_report_reads_old_documents_too() -> None:
    old = shim.run_report({"kv_type": "f32", "threads": 1, "seed": 42, "api": "legacy"})
    assert (old.kv_type_requested, old.kv_type_k, old.kv_type_v, old.kv_fallback, old.seed) == (
        "f32",
        "f32",
        "f32",
        None,
        42,
    )


@pytest.mark.parametrize(
    ("code", "detail", "error", "message", "next_step"),
    [
        (
            shim.EXIT_USAGE,
            "--out /dev/full exists and is a character device, not a regular file; refusing to write to it",
            BadInput,
            "refusing to write",
            "does not exist yet or is a regular file",
        ),
        (shim.EXIT_USAGE, "tokens file /tmp/f is a FIFO, not a regular file", BadInput, "FIFO", "regular file"),
        (
            shim.EXIT_USAGE,
            "--out-dir /tmp/t is not empty; give a new or an empty directory",
            BadInput,
            "not empty",
            "trace directory",
        ),
        (
            shim.EXIT_USAGE,
            "--type Q9 is not a quantization type of this backend (F32, Q8_0)",
            BadInput,
            "Q9",
            "quantize_types",
        ),
        (
            shim.EXIT_USAGE,
            "this backend's llama_context_params has no cb_eval, so it cannot be traced",
            BackendUnavailable,
            "cb_eval",
            "backend",
        ),
        (
            shim.EXIT_DECODE,
            "llama.cpp could not create a context with an f32 K / f32 V cache: "
            "llama_new_context_with_model: V cache quantization requires flash_attn",
            UnclassifiedError,
            "V cache quantization requires flash_attn",
            "kv_type='auto'",
        ),
        (shim.EXIT_MODEL, "model file /tmp/m is a FIFO, not a regular file", BadInput, "FIFO", "complete GGUF"),
        (shim.EXIT_OTHER, "llama_model_quantize failed for m.gguf -> Q4_K_M", UnclassifiedError, "quantize", "verbose"),
    ],
)
def test_new_shim_errors_map_to_suite_errors_with_a_next_step(
    plan: Plan, code: int, detail: str, error: type[SuiteError], message: str, next_step: str
) -> None:
    client = plan(exit=code, stderr=f"bitnet-shim: error: {detail}\n")
    with pytest.raises(error) as caught:
        client.info()
    assert type(caught.value) is error
    assert message in caught.value.message
    assert next_step in caught.value.next_step
