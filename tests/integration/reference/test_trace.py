"""`trace` against the real pinned llama.cpp on a tiny synthetic llama: the names llama.cpp
gives its intermediate tensors, in execution order, their shapes, that the values are the ones
the evaluation used, and that the filters bound what is copied and written."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from bitnet_crossval.errors import BadInput
from bitnet_crossval.reference.client import Shim, TraceResult
from tests.gguf_models import TinyLlamaSpec, spm_vocabulary

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SPEC = TinyLlamaSpec()
N_VOCAB = len(spm_vocabulary()[0])
# What the pinned llama.cpp writes for one `llama` layer, in execution order (the last node of
# each name: Qcur/Kcur after RoPE, Vcur after the reshape, norm-<il> the FFN's RMS norm).
LAYER_NAMES = (
    "attn_norm", "Qcur", "Vcur", "Kcur", "kqv_out", "attn_out", "ffn_inp", "norm", "ffn_norm",
    "ffn_gate", "ffn_up", "ffn_swiglu", "ffn_out", "l_out",
)  # fmt: skip


def _layer(il: int) -> list[str]:
    return [f"{name}-{il}" for name in LAYER_NAMES]


@pytest.fixture(scope="module")
def full_trace(
    shim: Shim, tiny_model: Path, prompt: tuple[int, ...], tmp_path_factory: pytest.TempPathFactory
) -> TraceResult:
    return shim.trace(tiny_model, prompt, out_dir=tmp_path_factory.mktemp("trace") / "full")


def _files(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in directory.iterdir()}


def test_names_come_in_execution_order_with_numpy_shapes(full_trace: TraceResult, prompt: tuple[int, ...]) -> None:
    assert list(full_trace.names) == ["embd", *_layer(0), *_layer(1), "norm", "result_norm", "result_output"]
    nodes = [t.node for t in full_trace.tensors]
    assert nodes == sorted(nodes)
    assert [t.index for t in full_trace.tensors] == list(range(len(full_trace.tensors)))

    n = len(prompt)
    head_dim = SPEC.head_dim
    expected_shapes = {
        "embd": (n, SPEC.n_embd),
        "Qcur": (n, SPEC.n_head, head_dim),
        "Kcur": (n, SPEC.n_head_kv, head_dim),
        "Vcur": (n, SPEC.n_head_kv, head_dim),
        "kqv_out": (n, SPEC.n_head * head_dim),
        "ffn_gate": (n, SPEC.n_ff),
        "ffn_up": (n, SPEC.n_ff),
        "ffn_swiglu": (n, SPEC.n_ff),
        "result_output": (n, N_VOCAB),
    }
    for t in full_trace.tensors:
        stem = t.name.rsplit("-", 1)[0] if t.layer is not None else t.name
        assert t.shape == expected_shapes.get(stem, (n, SPEC.n_embd)), t.name
        assert t.load().shape == t.shape
        assert t.positions == tuple(range(n))
        assert t.source_type == "f32"
        assert t.layer == (int(t.name.rsplit("-", 1)[1]) if "-" in t.name else None)
        # numpy shape = ggml ne reversed from the token axis down
        assert t.shape == (t.ne[t.token_dim], *reversed(t.ne[: t.token_dim]))


def test_duplicate_names_keep_the_last_node_and_count_them(full_trace: TraceResult) -> None:
    q = full_trace.tensor("Qcur-0")
    assert (q.op, q.n_nodes, q.ops) == ("ROPE", 3, ("MUL_MAT", "RESHAPE", "ROPE"))
    v = full_trace.tensor("Vcur-0")
    assert (v.op, v.n_nodes, v.ops) == ("RESHAPE", 2, ("MUL_MAT", "RESHAPE"))
    norm = full_trace.tensor("norm-0")  # the attention's and the FFN's RMS norm share the name
    assert (norm.op, norm.n_nodes) == ("RMS_NORM", 2)
    # placed at the last node: after attn_out-0/ffn_inp-0, right before ffn_norm-0
    names = list(full_trace.names)
    assert names.index("norm-0") == names.index("ffn_norm-0") - 1
    assert full_trace.tensor("result_output").n_nodes == 1
    # the attention scores have their token axis inside ([n_kv, n_tokens, n_head]): not written
    assert set(full_trace.skipped["token_axis_inner"]) == {
        f"{name}-{il}" for name in ("kq", "kq_soft_max", "kqv") for il in (0, 1)
    }


def test_values_are_the_ones_the_evaluation_used(
    full_trace: TraceResult, shim: Shim, tiny_model: Path, prompt: tuple[int, ...]
) -> None:
    logits, _ = shim.logits(tiny_model, prompt)
    np.testing.assert_array_equal(full_trace.array("result_output"), logits)
    np.testing.assert_array_equal(full_trace.logits(), logits)
    # residual adds, recomputed in float32 from the traced operands
    for il in (0, 1):
        np.testing.assert_array_equal(
            full_trace.array(f"l_out-{il}"), full_trace.array(f"ffn_out-{il}") + full_trace.array(f"ffn_inp-{il}")
        )
    np.testing.assert_array_equal(
        full_trace.array("ffn_inp-0"), full_trace.array("attn_out-0") + full_trace.array("embd")
    )
    # a causal model: position 0 of Vcur does not depend on what follows
    short = shim.trace(tiny_model, prompt[:2], out_dir=full_trace.out_dir.parent / "short", names="Vcur-0")
    np.testing.assert_allclose(short.array("Vcur-0")[0], full_trace.array("Vcur-0")[0], rtol=0, atol=1e-6)
    manifest = json.loads((full_trace.out_dir / "trace.json").read_text())
    assert manifest["format"] == "bitnet-shim-trace"
    assert (manifest["kv_type"], manifest["flash_attn"], manifest["causal"]) == ("f32", False, True)


def test_filters_bound_what_is_copied_and_written(
    full_trace: TraceResult, shim: Shim, tiny_model: Path, prompt: tuple[int, ...], tmp_path: Path
) -> None:
    full_files = _files(full_trace.out_dir)
    layer0 = shim.trace(tiny_model, prompt, out_dir=tmp_path / "layer0", layers=0)
    layer1 = shim.trace(tiny_model, prompt, out_dir=tmp_path / "layer1", layers=(1, 1))
    assert list(layer0.names) == ["embd", *_layer(0)]  # the input side comes with layer 0
    assert list(layer1.names) == [*_layer(1), "norm", "result_norm", "result_output"]  # the output side with the last
    for part in (layer0, layer1):
        files = _files(part.out_dir)
        assert files["logits.npy"] == full_files["logits.npy"]
        for t in part.tensors:  # the same arrays, byte for byte
            assert files[t.path.name] == full_files[t.path.name]
            np.testing.assert_array_equal(t.load(), full_trace.array(t.name))
        assert set(files) == {t.path.name for t in part.tensors} | {"logits.npy", "trace.json"}
        assert part.metadata["tensor_bytes"] == sum(t.nbytes for t in part.tensors)
        assert part.metadata["bytes_copied"] < full_trace.metadata["bytes_copied"]
    assert layer0.metadata["tensor_bytes"] + layer1.metadata["tensor_bytes"] == full_trace.metadata["tensor_bytes"]
    assert layer0.filters.layers == (0, 0)
    assert layer0.manifest["n_filtered_nodes"] > 0

    only = shim.trace(tiny_model, prompt, out_dir=tmp_path / "names", names=r"l_out-\d+|result_norm")
    assert only.names == ("l_out-0", "l_out-1", "result_norm")
    assert set(_files(only.out_dir)) == {"l_out-0.npy", "l_out-1.npy", "result_norm.npy", "logits.npy", "trace.json"}
    small = sum(t.nbytes for t in only.tensors)
    assert small == only.metadata["tensor_bytes"] < full_trace.metadata["tensor_bytes"] / 10
    assert only.metadata["bytes_copied"] == 3 * len(prompt) * SPEC.n_embd * 4  # nothing else was copied


def test_positions_slice_the_token_axis(
    full_trace: TraceResult, shim: Shim, tiny_model: Path, prompt: tuple[int, ...], tmp_path: Path
) -> None:
    picked = shim.trace(tiny_model, prompt, out_dir=tmp_path / "pos", positions=[5, 0, 2, 3, 5])
    assert picked.positions == (0, 2, 3, 5)
    assert picked.names == full_trace.names
    for t in picked.tensors:
        full = full_trace.array(t.name)
        assert t.shape == (4, *full.shape[1:])
        np.testing.assert_array_equal(t.load(), full[[0, 2, 3, 5]])
    assert picked.metadata["tensor_bytes"] < full_trace.metadata["tensor_bytes"] / 2
    np.testing.assert_array_equal(picked.logits(), full_trace.logits())  # logits stay whole, as in `logits`


def test_one_token_and_a_token_count_equal_to_the_head_count(shim: Shim, tiny_model: Path, tmp_path: Path) -> None:
    one = shim.trace(tiny_model, [1], out_dir=tmp_path / "one")
    assert one.tensor("attn_norm-0").shape == (1, SPEC.n_embd)
    assert one.tensor("Qcur-0").shape == (1, SPEC.n_head, SPEC.head_dim)
    assert one.tensor("result_output").shape == (1, N_VOCAB)

    # four tokens, four heads: kq-0 [n_kv, 4, 4] looks token-first by its shape; the token
    # axis is followed through the graph instead
    four = shim.trace(tiny_model, [1, 70, 71, 72], out_dir=tmp_path / "four")
    assert four.tensor("Qcur-0").shape == (4, SPEC.n_head, SPEC.head_dim)
    assert "kq-0" in four.skipped["token_axis_inner"]
    assert "kq-0" not in four.names


def test_the_output_directory_must_be_new_or_empty(shim: Shim, tiny_model: Path, tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(BadInput, match="not empty"):
        shim.trace(tiny_model, [1, 2], out_dir=busy)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(BadInput, match="regular file, not a directory"):
        shim.trace(tiny_model, [1, 2], out_dir=a_file)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert shim.trace(tiny_model, [1, 2], out_dir=empty).names[-1] == "result_output"


def test_a_failed_trace_leaves_no_directory_behind(shim: Shim, tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + os.urandom(2000))
    with pytest.raises(BadInput):
        shim.trace(broken, [1, 2], out_dir=tmp_path / "trace")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.gguf"]  # neither the target nor a .partial


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layers": 5}, "selects no layer"),
        ({"positions": [0, 9]}, "past the last token"),
        ({"names": "(unclosed"}, "not a valid regular expression"),
    ],
)
def test_bad_filters_are_bad_input(
    shim: Shim, tiny_model: Path, tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(BadInput, match=message):
        shim.trace(tiny_model, [1, 2, 3], out_dir=tmp_path / "t", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "t").exists()
