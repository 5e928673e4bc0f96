"""The layering docs/explanation/architecture.md states, enforced: every import of every module of
the library (at the top, inside functions, under TYPE_CHECKING) points only where its layer may.

A sub-package may import the ones listed for it and nothing else of the library; the engine
(``crossval/engine``) needs only ``errors`` and ``util``, so it can be read and reused without the
rest of the suite.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[2] / "bitnet_crossval"

# unit -> the units it may import (besides itself). Keep in step with architecture.md.
_BASE = {"errors", "version"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "version": set(),
    "util": {"errors"},
    "store": {"errors", "util"},
    "backends": {"errors", "util", "store"},
    "provision": _BASE | {"util", "store", "backends"},
    "reference": _BASE | {"util", "store", "backends", "provision"},
    "context": _BASE | {"util", "store", "backends"},
    "repair": _BASE | {"util", "store", "backends", "provision", "reference", "context"},
    "crossval.engine": {"errors", "util"},
    "crossval": _BASE | {"util", "store", "backends", "provision", "reference", "context", "crossval.engine"},
    "suite": _BASE | {"util", "store", "backends", "provision", "reference", "context", "crossval", "crossval.engine"},
    "tasks": _BASE | {"util", "store", "backends", "provision", "reference", "context", "repair", "crossval", "suite"},
    "console": _BASE | {"repair", "tasks"},
    "__main__": {"console"},
}


def unit_of(module: str) -> str:
    """``bitnet_crossval.crossval.engine.ops`` -> ``crossval.engine``; the package itself -> ``version``."""
    parts = module.split(".")[1:]
    if not parts or parts == ["__version__"]:
        return "version"
    if parts[0] == "crossval" and len(parts) > 1 and parts[1] == "engine":
        return "crossval.engine"
    return parts[0]


def module_name(path: Path) -> str:
    relative = path.relative_to(LIBRARY.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, *, is_package: bool = False) -> list[tuple[int, str]]:
    """Every library module ``source`` (the text of ``module``) imports, with its line; relative
    imports resolved."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "bitnet_crossval":  # from bitnet_crossval import x: x is the module
                found += [(node.lineno, f"bitnet_crossval.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, target))
    wanted = [(line, name) for line, name in found if name == "bitnet_crossval" or name.startswith("bitnet_crossval.")]
    return sorted(wanted)


MODULES = sorted(LIBRARY.rglob("*.py"))


def test_every_unit_is_declared() -> None:
    units = {unit_of(module_name(path)) for path in MODULES}
    assert units <= set(ALLOWED), f"units missing from the layering table: {sorted(units - set(ALLOWED))}"


def violations(module: str, imports: list[tuple[int, str]]) -> list[str]:
    unit = unit_of(module)
    return [
        f"line {line}: {name} ({unit_of(name)})"
        for line, name in imports
        if unit_of(name) != unit and unit_of(name) not in ALLOWED[unit]
    ]


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(LIBRARY)))
def test_imports_follow_the_layering(path: Path) -> None:
    module = module_name(path)
    found = imports_of(path.read_text(encoding="utf-8"), module, is_package=path.name == "__init__.py")
    wrong = violations(module, found)
    assert not wrong, f"{unit_of(module)} may not import: " + "; ".join(wrong)


def test_the_checker_catches_upward_imports_of_every_form() -> None:
    source = (
        "from bitnet_crossval.repair.guard import is_repair_child\n"
        "def f():\n    from .repair import preflight\n    import bitnet_crossval.crossval.run\n"
        "from bitnet_crossval import tasks\n"
        "from bitnet_crossval.store import layout\n"
    )
    wrong = violations("bitnet_crossval.context", imports_of(source, "bitnet_crossval.context"))
    assert [entry.split(":")[0] for entry in wrong] == ["line 1", "line 3", "line 4", "line 5"]
    engine = imports_of("from bitnet_crossval.store import layout\n", "bitnet_crossval.crossval.engine.ops")
    assert violations("bitnet_crossval.crossval.engine.ops", engine) == ["line 1: bitnet_crossval.store (store)"]
