"""Whether this environment can run the hf candidate, found without importing torch.

The hf candidate needs the optional extra ``hf`` (torch, transformers 5, accelerate, which
transformers requires to load a GGUF). Looking the packages up costs milliseconds; importing
torch costs seconds, so the parent process never does it: only the child imports them.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util

from bitnet_crossval.errors import BadInput

EXTRA = "hf"
REQUIRED_MODULES = ("torch", "transformers", "accelerate")
MIN_TRANSFORMERS_MAJOR = 5
INSTALL_HINT = (
    f"pip install 'bitnet-crossval-suite[{EXTRA}]' (with a CPU build of torch installed first, from PyTorch's "
    "CPU wheel index: without one, pip takes a CUDA build of several GB)"
)


def missing_requirement() -> str | None:
    """One sentence saying what is missing, or None when the hf candidate can run here."""
    missing = [name for name in REQUIRED_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        return f"the hf candidate needs {', '.join(REQUIRED_MODULES)}, and {' and '.join(missing)} {verb} not installed"
    try:
        version = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        return None  # importable without metadata (a source checkout on the path): let it try
    major = version.split(".", 1)[0]
    if major.isdigit() and int(major) < MIN_TRANSFORMERS_MAJOR:
        return f"the hf candidate needs transformers {MIN_TRANSFORMERS_MAJOR} or newer, and {version} is installed"
    return None


def require_hf() -> None:
    """Raise :class:`BadInput` naming the extra when the hf candidate cannot run here."""
    reason = missing_requirement()
    if reason is not None:
        raise BadInput(reason, next_step=INSTALL_HINT)
