"""Deliberate faults for the hf candidate's seam (``BITNET_HF_PATCH=hf_faults:NAME``, this
directory on PYTHONPATH): each function breaks one module of the loaded transformers model."""

from __future__ import annotations

from typing import Any


def scale_up_proj(model: Any) -> None:
    """Layer 1's FFN up projection returns 1.25 times its output (llama.cpp's ``ffn_up-1``)."""
    module = model.model.layers[1].mlp.up_proj
    original = module.forward
    module.forward = lambda x: original(x) * 1.25


def skip_q_norm(model: Any) -> None:
    """Layer 2's per-head Q norm (gemma3) is skipped (llama.cpp's ``Qcur_normed-2``)."""
    model.model.layers[2].self_attn.q_norm.forward = lambda x: x
