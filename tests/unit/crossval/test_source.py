"""Reading the bitnet FFN activation from a llama.cpp-family source tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from bitnet_crossval.crossval.engine import bitnet_activation_from_source

CURRENT_BITNET = """
void llama_model_bitnet::load_arch_tensors(llama_model_loader &) {
    /* LLM_FFN_RELU_SQR in a comment before the graph */
}
llama_model_bitnet::graph::graph(const llama_model & model, const llm_graph_params & params) {
        cur = build_ffn(cur,
                model.layers[il].ffn_up,   NULL, model.layers[il].ffn_up_s,
                NULL,
                {act}, LLM_FFN_PAR, il);
}
"""

MONOLITH_2024 = """
struct llm_build_context {
    struct ggml_cgraph * build_bitnet() {
        cur = llm_build_ffn(ctx0, lctx, cur, model.layers[il].ffn_up, NULL, NULL,
                NULL, LLM_FFN_SILU, LLM_FFN_PAR, cb, il);
        if (x) { y(); }
    }

    struct ggml_cgraph * build_bitnet_158() {
        cur = llm_build_ffn(ctx0, lctx, cur, model.layers[il].ffn_up, NULL, NULL,
                NULL, LLM_FFN_RELU_SQR, LLM_FFN_PAR, cb, il);
    }
};
"""


def tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(("token", "expected"), [("LLM_FFN_SILU", "silu"), ("LLM_FFN_RELU_SQR", "relu2")])
def test_current_layout(tmp_path: Path, token: str, expected: str) -> None:
    root = tree(tmp_path, {"src/models/bitnet.cpp": CURRENT_BITNET.replace("{act}", token)})
    assert bitnet_activation_from_source(root) == expected


def test_2024_layout_reads_the_graph_of_the_architecture(tmp_path: Path) -> None:
    # the 2024 tree has a build_ffn-less llama.cpp: llm_build_ffn, two bitnet graphs
    root = tree(tmp_path, {"src/llama.cpp": MONOLITH_2024.replace("llm_build_ffn", "build_ffn")})
    assert bitnet_activation_from_source(root) == "silu"
    assert bitnet_activation_from_source(root, architecture="bitnet-b1.58") == "relu2"
    assert bitnet_activation_from_source(root, architecture="bitnet-25") == "relu2"


def test_unknown_tree_gives_none(tmp_path: Path) -> None:
    assert bitnet_activation_from_source(tmp_path) is None
    root = tree(tmp_path, {"src/llama.cpp": "int main() { return 0; }"})
    assert bitnet_activation_from_source(root) is None
