"""The crossval's defaults and choices, in a module that imports nothing heavy.

The commands' option tables (:mod:`bitnet_crossval.crossval.options`) are read by every
``invoke`` run, even ``invoke --list``; they take their defaults from here so that listing the
commands does not import NumPy and the run. The modules that use these values re-export them.
"""

from __future__ import annotations

from typing import Literal

# Defaults from the measurements in docs/explanation/verdict.md. Float weights (F32/F16/BF16): a
# correct engine stays below KL 2.5e-4 (BF16), every deliberate bug of the self-check reaches
# 7.9e-3 or more. Quantised weights: llama.cpp quantises activations on the fly, so a correct
# float engine reaches KL 0.038 on Gemma 3 270M Q4_K_M (worst of 264 positions over six
# prompts), while the bugs reach 0.3 and more on quantised synthetic models.
DEFAULT_KL_MAX_FLOAT = 2e-3
DEFAULT_KL_MAX_QUANTIZED = 0.1
DEFAULT_TIE_MARGIN = 0.5

DEFAULT_CANDIDATE_TIMEOUT = 600.0

DEFAULT_MODEL = "synthetic:llama"
QUANTIZED_BY_LLAMA = {"Q4_K": "Q4_K_M", "Q6_K": "Q6_K"}
"""Synthetic types llama.cpp's quantiser makes from the F32 model, with the type it is asked for."""
SYNTHETIC_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q5_0", "TQ1_0", "TQ2_0", *QUANTIZED_BY_LLAMA)

DEFAULT_PROMPT = "The capital of France is Paris. The quick brown fox jumps over the lazy dog, and then"
DEFAULT_MAX_TOKENS = 16

ReferenceMode = Literal["auto", "native", "dequantized"]
REFERENCE_MODES: tuple[ReferenceMode, ...] = ("auto", "native", "dequantized")
FloatTypeChoice = Literal["auto", "F32", "F16", "BF16"]
FLOAT_TYPE_CHOICES: tuple[FloatTypeChoice, ...] = ("auto", "F32", "F16", "BF16")

# The ``--candidate`` kinds' syntaxes for the option's help, as the built-in kinds of
# :mod:`bitnet_crossval.crossval.candidates` spell them (a unit test holds the two equal).
CANDIDATE_SYNTAXES = "numpy[:FAULT], llama or bitnet, cmd:<command line>, py:module:function, hf[:CHECKPOINT_DIR]"
