"""Nothing in the repository reaches into gguf-py's private names.

gguf-py promises its public API (``GGUFWriter``, ``GGUFReader``, ``GGMLQuantizationType``,
``GGML_QUANT_SIZES``, ``gguf.quants.quantize``/``dequantize``, ...), not its underscored helpers
or the hooks of its reader: a release may change those, and ``pyproject.toml`` lets a range of
releases in. The GGUF header is read by ``crossval/engine/gguf_header.py`` for that reason. This
test reads every Python file of the repository (the tests too) and fails on any private use:
importing a private name or module of gguf, an underscored attribute of anything that comes from
gguf, ``getattr`` of one, or a class deriving from a gguf class that defines or calls underscored
methods (overriding the reader's hooks).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SKIPPED_DIRECTORIES = {"build", "dist", "node_modules", "__pycache__"}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _gguf_module(name: str | None) -> bool:
    return name is not None and (name == "gguf" or name.startswith("gguf."))


def _root(node: ast.expr) -> str | None:
    """The name an expression starts from: ``a`` for ``a.b(c)[d].e``."""
    while True:
        if isinstance(node, ast.Attribute | ast.Subscript):
            node = node.value
        elif isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Name):
            return node.id
        else:
            return None


def private_gguf_uses(source: str) -> list[str]:
    """Each private use of gguf-py in ``source``, as ``line: what``."""
    tree = ast.parse(source)
    problems: list[str] = []
    bound: set[str] = set()  # names that hold gguf, something of it, or a value made by it
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _gguf_module(alias.name):
                    if any(_private(part) for part in alias.name.split(".")):
                        problems.append(f"{node.lineno}: imports {alias.name}")
                    bound.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and _gguf_module(node.module):
            assert node.module is not None
            if any(_private(part) for part in node.module.split(".")):
                problems.append(f"{node.lineno}: imports from {node.module}")
            for alias in node.names:
                if _private(alias.name):
                    problems.append(f"{node.lineno}: imports {alias.name} from {node.module}")
                bound.add(alias.asname or alias.name)
    if not bound:
        return problems
    # Names assigned from gguf values hold gguf objects too (reader = gguf.GGUFReader(path)).
    assignments = [node for node in ast.walk(tree) if isinstance(node, ast.Assign | ast.AnnAssign)]
    grew = True
    while grew:
        grew = False
        for node in assignments:
            if node.value is None or _root(node.value) not in bound:
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and target.id not in bound:
                    bound.add(target.id)
                    grew = True
    for node in ast.walk(tree):
        private_attribute = isinstance(node, ast.Attribute) and _private(node.attr) and _root(node.value) in bound
        private_getattr = (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"getattr", "hasattr", "setattr", "delattr"}
            and len(node.args) >= 2
            and _root(node.args[0]) in bound
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
        )
        if private_attribute or private_getattr:
            problems.append(f"{node.lineno}: uses {ast.unparse(node)}")  # type: ignore[attr-defined]
        elif isinstance(node, ast.ClassDef) and any(_root(base) in bound for base in node.bases):
            for inner in ast.walk(node):
                if isinstance(inner, ast.FunctionDef | ast.AsyncFunctionDef) and _private(inner.name):
                    problems.append(f"{inner.lineno}: defines {inner.name} in {node.name}, a subclass of gguf-py's")
                elif (
                    isinstance(inner, ast.Attribute)
                    and _private(inner.attr)
                    and isinstance(inner.value, ast.Name)
                    and inner.value.id in {"self", "cls", "super"}
                ):
                    problems.append(
                        f"{inner.lineno}: uses {ast.unparse(inner)} in {node.name}, a subclass of gguf-py's"
                    )
    return problems


def python_files() -> list[Path]:
    return sorted(
        path
        for path in REPO.rglob("*.py")
        if not any(part.startswith(".") or part in SKIPPED_DIRECTORIES for part in path.relative_to(REPO).parts)
    )


def test_no_file_of_the_repository_uses_a_private_name_of_gguf_py() -> None:
    files = python_files()
    users = [path for path in files if "gguf" in path.read_text(encoding="utf-8")]
    assert len(users) > 10, "the scan found too few files that use gguf: is REPO right?"
    problems = [
        f"{path.relative_to(REPO)}:{problem}"
        for path in users
        for problem in private_gguf_uses(path.read_text(encoding="utf-8"))
    ]
    assert problems == []


PRIVATE_USES = [
    ("from gguf.quants import _type_traits", "imports _type_traits from gguf.quants"),
    ("import gguf\nok = gguf.quants._type_traits", "uses gguf.quants._type_traits"),
    ("import gguf.quants as q\nq._type_traits.get(1)", "uses q._type_traits"),
    ("import gguf._private", "imports gguf._private"),
    ("from gguf._internal import thing", "imports from gguf._internal"),
    ("from gguf import GGUFReader\nr = GGUFReader('m')\nr._get(0, int)", "uses r._get"),
    ("import gguf\nreader = gguf.GGUFReader('m')\nfield = reader.fields\nfield._x", "uses field._x"),
    ("import gguf\ngetattr(gguf.quants, '_type_traits')", "uses getattr(gguf.quants, '_type_traits')"),
    (
        "from gguf import GGUFReader\nclass R(GGUFReader):\n    def _build_fields(self, offs, n):\n        return 0",
        "defines _build_fields in R",
    ),
    (
        "import gguf\nclass R(gguf.GGUFReader):\n    def fields_of(self):\n        return self._get_str(0)",
        "uses self._get_str in R",
    ),
]


@pytest.mark.parametrize(("source", "found"), PRIVATE_USES, ids=[found for _, found in PRIVATE_USES])
def test_the_scan_finds_each_kind_of_private_use(source: str, found: str) -> None:
    problems = private_gguf_uses(source)
    assert any(found in problem for problem in problems), problems


PUBLIC_USES = [
    "import gguf\nw = gguf.GGUFWriter('m', 'llama')\nw.add_uint32('k', 1)",
    "from gguf import GGML_QUANT_SIZES, GGMLQuantizationType\nGGML_QUANT_SIZES[GGMLQuantizationType.Q8_0]",
    "from gguf.quants import dequantize, quantize\nquantize(x, t)",
    "import gguf\nr = gguf.GGUFReader('m')\nr.fields['k'].contents()\nr.__class__",
    "class Mine:\n    def _helper(self):\n        return self._x",  # not gguf's
    "from mypackage import _private\nimport gguf_like\ngguf_like._x",  # other packages
]


@pytest.mark.parametrize("source", PUBLIC_USES)
def test_the_scan_passes_public_uses(source: str) -> None:
    assert private_gguf_uses(source) == []
