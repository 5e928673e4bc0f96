"""``py:`` candidates that take the suite's standard streams away, then answer correctly."""

from __future__ import annotations

import sys

import numpy as np
import numpy.typing as npt

from bitnet_crossval.crossval.engine import load_engine


def closes_stdout(model_path: str, tokens: npt.NDArray[np.int32]) -> npt.NDArray[np.float32]:
    sys.stdout.close()
    return load_engine(model_path).forward(tokens)


def drops_stdout(model_path: str, tokens: npt.NDArray[np.int32]) -> npt.NDArray[np.float32]:
    sys.stdout = None
    return load_engine(model_path).forward(tokens)
