"""A cross-validation candidate as a Python function (the ``py:`` protocol).

    invoke crossval-per-token --candidate py:examples.py_candidate:logits

``logits(model_path, tokens)`` gets the GGUF path and a 1-D int32 array of token ids and returns
float32 logits ``[n_tokens, n_vocab]`` from one causal pass. ``rope_type_bug`` is the same engine
with a deliberate bug (RoPE of the wrong variant), to watch the check fail and locate it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from bitnet_crossval.crossval.engine import EngineOptions, Fault, FaultName, load_engine


def logits(model_path: str, tokens: npt.NDArray[np.int32]) -> npt.NDArray[np.float32]:
    return load_engine(model_path).forward(tokens)


def rope_type_bug(model_path: str, tokens: npt.NDArray[np.int32]) -> npt.NDArray[np.float32]:
    return load_engine(model_path, EngineOptions(fault=Fault(name=FaultName("rope_type")))).forward(tokens)
