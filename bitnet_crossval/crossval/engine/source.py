"""Which FFN activation a llama.cpp-family source tree uses for its bitnet graph.

The activation differs between references that all call the architecture "bitnet": upstream
llama.cpp (``src/models/bitnet.cpp``) and bitnet.cpp's 2024 fork (``build_bitnet`` in
``src/llama.cpp``) use ``LLM_FFN_SILU``; the fork's ``bitnet-b1.58``/``bitnet-25`` graph
(``build_bitnet_158``) and BitNet b1.58 as trained use squared ReLU (``LLM_FFN_RELU_SQR``).
The engine must follow the reference it is compared with, so the suite reads the source it
built instead of guessing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

ActivationName = Literal["silu", "relu2"]

_TOKENS: tuple[tuple[str, ActivationName], ...] = (("LLM_FFN_RELU_SQR", "relu2"), ("LLM_FFN_SILU", "silu"))
_FORK_ARCHITECTURES = frozenset({"bitnet-b1.58", "bitnet-25"})


def bitnet_activation_from_source(source_dir: Path, *, architecture: str = "bitnet") -> ActivationName | None:
    """``"silu"`` or ``"relu2"`` as the tree's graph for ``architecture`` uses it; None if not found.

    Looks at ``src/models/*bitnet*.cpp`` (current layout) and then at ``build_bitnet`` /
    ``build_bitnet_158`` in ``src/llama.cpp`` (2024 layout). ``architecture`` is the model's
    ``general.architecture``: ``bitnet`` selects the plain graph, ``bitnet-b1.58`` and
    ``bitnet-25`` the fork's b1.58 graph.
    """
    source_dir = Path(source_dir)
    fork_graph = architecture in _FORK_ARCHITECTURES
    models_dir = source_dir / "src" / "models"
    if models_dir.is_dir():
        for path in _model_files(models_dir, fork_graph=fork_graph):
            found = _activation_in(_graph_body(_read(path)))
            if found is not None:
                return found
    monolith = source_dir / "src" / "llama.cpp"
    if monolith.is_file():
        text = _read(monolith)
        function = "build_bitnet_158" if fork_graph else "build_bitnet"
        body = _function_body(text, function)
        if body is not None:
            return _activation_in(body)
    return None


def _model_files(models_dir: Path, *, fork_graph: bool) -> list[Path]:
    candidates = sorted(p for p in models_dir.glob("*.cpp") if "bitnet" in p.name.lower())
    plain = [p for p in candidates if p.stem.lower() == "bitnet"]
    others = [p for p in candidates if p.stem.lower() != "bitnet"]
    if fork_graph:
        return [p for p in others if re.search(r"158|b1[._-]?58|25", p.stem)]
    return plain


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _graph_body(text: str) -> str:
    """The graph-building part of a src/models file (after ``::graph(``), else the whole file."""
    index = text.find("::graph(")
    return text[index:] if index >= 0 else text


def _function_body(text: str, name: str) -> str | None:
    match = re.search(rf"\b{re.escape(name)}\s*\(\s*\)\s*\{{", text)
    if match is None:
        return None
    depth = 0
    for i in range(match.end() - 1, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[match.end() : i]
    return text[match.end() :]


def _activation_in(body: str) -> ActivationName | None:
    """The activation of the (first) build_ffn call in ``body``."""
    call = body.find("build_ffn(")
    scope = body[call:] if call >= 0 else body
    positions = [(scope.find(token), name) for token, name in _TOKENS if token in scope]
    if not positions:
        return None
    return min(positions)[1]
