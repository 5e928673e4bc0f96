"""Which GGUF architectures the installed transformers reads, asked of a child process.

The parent never imports transformers (:mod:`.availability`): ``python -m
bitnet_crossval.crossval.hf.gguf_support OUT.json`` imports it and writes its version and its
table of GGUF architectures; :func:`gguf_support` runs that child and reads the answer, so the
self-check can list what the hf candidate cannot load, and why, before running anything.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bitnet_crossval.errors import CandidateFailed, CommandFailed
from bitnet_crossval.util.files import write_atomic

ANSWER_FILE = "hf-gguf-support.json"
LOG_FILE = "hf-gguf-support.log"


@dataclass(frozen=True)
class GgufSupport:
    transformers: str
    architectures: frozenset[str] | None
    """None: this transformers keeps no table (its own loader decides when it runs)."""

    def reason_unreadable(self, architecture: str) -> str | None:
        """One sentence when transformers cannot read GGUF models of ``architecture``, else None."""
        if self.architectures is None or architecture in self.architectures:
            return None
        return f"transformers {self.transformers} cannot read GGUF models of architecture {architecture!r}"


def gguf_support(*, env: Mapping[str, str], work_dir: Path, timeout: float | None) -> GgufSupport:
    from bitnet_crossval.crossval.hf.api import child_env
    from bitnet_crossval.util import proc

    work_dir.mkdir(parents=True, exist_ok=True)
    answer = work_dir / ANSWER_FILE
    answer.unlink(missing_ok=True)
    argv = [sys.executable, "-m", __name__, str(answer)]
    try:
        proc.run(argv, env=child_env(env), timeout=timeout, log_path=work_dir / LOG_FILE)
        document = json.loads(answer.read_text(encoding="utf-8"))
    except (CommandFailed, OSError, ValueError) as exc:
        raise CandidateFailed(
            f"the hf candidate could not say which GGUF architectures transformers reads ({exc})",
            next_step=f"read {work_dir / LOG_FILE}; `python -c 'import transformers'` should work",
        ) from exc
    names = document.get("architectures")
    return GgufSupport(
        transformers=str(document.get("transformers", "?")),
        architectures=frozenset(str(n) for n in names) if isinstance(names, list) else None,
    )


def main(argv: Sequence[str]) -> int:
    import transformers

    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
    except ImportError:
        names: list[str] | None = None
    else:
        names = sorted(str(name) for name in GGUF_SUPPORTED_ARCHITECTURES)
    document = {"transformers": transformers.__version__, "architectures": names}
    write_atomic(Path(argv[0]), (json.dumps(document) + "\n").encode("utf-8"), what="the answer")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
