"""The built-in NumPy reference engine: a candidate with llama.cpp's semantics.

Runs GGUF models of the registered architectures (:mod:`.archs`: ``llama``, ``gemma3`` and
``bitnet``, which also runs microsoft/BitNet's ``bitnet-b1.58`` and ``bitnet-25``) over a
whole token sequence at once and returns float32 logits of every position; optionally records
the intermediates under llama.cpp's tensor names, and injects the deliberate faults the
self-check uses.

    engine = load_engine(path)
    logits = engine.forward(tokens)                     # [n_tokens, n_vocab] float32
    recorder = TraceRecorder(layers=range(2), names=["attn_*", "l_out"])
    engine.forward(tokens, trace=recorder)              # recorder.entries: name -> array
    faulty = load_engine(path, EngineOptions(fault=Fault(name=FaultName("rope_type"))))
    faulty.fault_site()                                 # TraceSite("Qcur", 0)
"""

from __future__ import annotations

from bitnet_crossval.crossval.engine.archs import ALL_ARCHITECTURES, Architecture, register, unregister
from bitnet_crossval.crossval.engine.engine import Engine, load_engine
from bitnet_crossval.crossval.engine.faults import FAULT_NAMES, FAULTS, Fault, FaultName, FaultSpec, LocatedFault
from bitnet_crossval.crossval.engine.gguf_file import GGUFModelFile, TensorInfo
from bitnet_crossval.crossval.engine.hparams import HParams
from bitnet_crossval.crossval.engine.options import BitnetActivation, EngineOptions, KvCache, OutputWeights
from bitnet_crossval.crossval.engine.source import bitnet_activation_from_source
from bitnet_crossval.crossval.engine.trace import TraceRecorder, TraceSite, split_key, trace_key

__all__ = [
    "ALL_ARCHITECTURES",
    "FAULTS",
    "FAULT_NAMES",
    "Architecture",
    "BitnetActivation",
    "Engine",
    "EngineOptions",
    "Fault",
    "FaultName",
    "FaultSpec",
    "GGUFModelFile",
    "HParams",
    "KvCache",
    "LocatedFault",
    "OutputWeights",
    "TensorInfo",
    "TraceRecorder",
    "TraceSite",
    "bitnet_activation_from_source",
    "load_engine",
    "register",
    "split_key",
    "trace_key",
    "unregister",
]
