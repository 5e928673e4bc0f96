"""The ``hf`` candidate: Hugging Face transformers on the same model, position by position, traced.

transformers runs in a child process (:mod:`.runner`, ``python -m bitnet_crossval.crossval.hf``)
so that torch crashing, hanging or exhausting memory cannot take the suite down. It loads the
GGUF under test itself (dequantising every tensor; the result is cached, :mod:`.weights_cache`),
or with ``hf:PATH`` a Hugging Face checkpoint directory, checks the configuration against the
model file (:mod:`.config_check`), and evaluates the token ids in one causal float32 pass. Its
trace (:mod:`.taps`) writes the intermediates under llama.cpp's names.

This package imports neither torch nor transformers; only the child does. The optional extra
``hf`` installs them (:mod:`.availability`).

    run = run_hf(model=gguf, tokens=ids, work_dir=tmp, env=os.environ, timeout=600, cache_root=root)
    run.logits                                  # [n_tokens, n_vocab] as the child wrote them
    HfCandidate("hf", checkpoint=None, env=..., n_vocab=..., timeout=600, cache_root=root)
"""

from __future__ import annotations

from bitnet_crossval.crossval.hf.api import CHILD_MODULE, HfRun, checkpoint_dir, hf_argv, run_hf
from bitnet_crossval.crossval.hf.availability import EXTRA, INSTALL_HINT, missing_requirement, require_hf

__all__ = [
    "CHILD_MODULE",
    "EXTRA",
    "INSTALL_HINT",
    "HfRun",
    "checkpoint_dir",
    "hf_argv",
    "missing_requirement",
    "require_hf",
    "run_hf",
]
