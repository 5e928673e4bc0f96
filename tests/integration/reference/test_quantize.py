"""`quantize`: llama.cpp's own quantiser makes K-quant fixtures the shim then loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bitnet_crossval.errors import BadInput, UnclassifiedError
from bitnet_crossval.reference.client import Shim

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _tensor_types(path: Path) -> dict[str, str]:
    import gguf

    reader = gguf.GGUFReader(path)
    return {t.name: t.tensor_type.name for t in reader.tensors}


def test_q4_k_m_fixture_is_made_and_loads(shim: Shim, wide_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "wide-q4_k_m.gguf"
    result = shim.quantize(wide_model, out, "Q4_K_M")
    assert result.size_bytes == out.stat().st_size
    assert out.stat().st_size < wide_model.stat().st_size / 4
    types = _tensor_types(out)
    assert types["blk.0.attn_q.weight"] == "Q4_K"
    assert "Q6_K" in types.values()  # Q4_K_M keeps some tensors at 6 bits
    assert types["blk.0.attn_norm.weight"] == "F32"

    info = shim.info(out, load_weights=True)
    assert "Q4_K - Medium" in info["description"]
    tokens = [1, 70, 71, 72, 73]
    quantized, _ = shim.logits(out, tokens)
    reference, _ = shim.logits(wide_model, tokens)
    assert np.isfinite(quantized).all()
    assert not np.array_equal(quantized, reference)
    # the same weights at 4 bits (random ones, so the error is large; 0.93 measured)
    assert np.corrcoef(quantized.ravel(), reference.ravel())[0, 1] > 0.8


def test_quantize_replaces_a_regular_file_and_leaves_no_temporary(shim: Shim, wide_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "q8.gguf"
    out.write_bytes(b"an older file")
    shim.quantize(wide_model, out, "Q8_0")
    assert out.read_bytes()[:4] == b"GGUF"
    assert _tensor_types(out)["blk.1.ffn_down.weight"] == "Q8_0"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q8.gguf"]


def test_unknown_type_and_unreadable_input_are_bad_input(shim: Shim, wide_model: Path, tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="not a quantization type") as caught:
        shim.quantize(wide_model, tmp_path / "x.gguf", "Q9_K")
    assert "quantize_types" in caught.value.next_step
    with pytest.raises(BadInput, match="not found"):
        shim.quantize(tmp_path / "missing.gguf", tmp_path / "x.gguf", "Q8_0")
    assert list(tmp_path.iterdir()) == []
    assert "Q4_K_M" in shim.info()["quantize_types"]


def test_a_refused_quantization_carries_llama_cpps_reason(shim: Shim, wide_model: Path, tmp_path: Path) -> None:
    with pytest.raises(UnclassifiedError) as caught:
        shim.quantize(wide_model, tmp_path / "iq2.gguf", "IQ2_XXS")  # needs an importance matrix
    assert "requires an importance matrix" in caught.value.message
    assert list(tmp_path.iterdir()) == []
