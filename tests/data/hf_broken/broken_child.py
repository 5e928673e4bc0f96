"""The hf candidate's child with one deliberately broken module: ``broken_child.py FAULT ARGS...``.

FAULT is ``up_proj:LAYER`` (that layer's FFN up projection returns 1.25 times its output) or
``q_norm:LAYER`` (that layer's per-head Q norm is skipped); ARGS are the child's own arguments.
The model is loaded as the real child loads it, then the one module is patched.
"""

from __future__ import annotations

import sys
from typing import Any

from bitnet_crossval.crossval.hf import load, runner


def main() -> int:
    fault, args = sys.argv[1], sys.argv[2:]
    kind, layer = fault.split(":")
    real_load = load.load_model

    def broken_load(*a: Any, **k: Any) -> Any:
        loaded = real_load(*a, **k)
        block = loaded.model.model.layers[int(layer)]
        if kind == "up_proj":
            module = block.mlp.up_proj
            original = module.forward
            module.forward = lambda x: original(x) * 1.25
        elif kind == "q_norm":
            block.self_attn.q_norm.forward = lambda x: x
        else:
            raise SystemExit(f"unknown fault {kind}")
        return loaded

    load.load_model = broken_load
    return runner.main(args)


if __name__ == "__main__":
    raise SystemExit(main())
