"""The floor plan: container/ and vm/ stand side by side and never import each other.

What both need lives below them (images/, records.py, network/...); what
uses both lives above them (gc.py, cli.py, __init__.py).  The test reads
every module's imports with ast -- ``import``, ``from ... import`` (relative
ones resolved), and string arguments of ``importlib.import_module`` /
``__import__``, which an import-graph tool would not see.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "minibox"
SIDES = ("container", "vm")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, text: str | None = None) -> set[str]:
    """Every module ``path`` (or ``text`` as if it were at ``path``) imports, as absolute dotted names."""
    tree = ast.parse(path.read_text() if text is None else text, str(path))
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                target = node.args[0].value
                if target.startswith(".") and len(node.args) > 1:
                    target = f"{package}{target}"
                found.add(target)
    return found


def edges_between_sides() -> list[str]:
    bad = []
    for side in SIDES:
        other = next(s for s in SIDES if s != side)
        for path in sorted((PACKAGE / side).rglob("*.py")):
            for module in sorted(imported_modules(path)):
                if module == f"minibox.{other}" or module.startswith(f"minibox.{other}."):
                    bad.append(f"{path.relative_to(PACKAGE)} imports {module}")
    return bad


def test_container_and_vm_never_import_each_other() -> None:
    assert edges_between_sides() == []


@pytest.mark.parametrize("source", [
    "from ..vm import leftovers",
    "from ..vm.keeper import Keeper",
    "import minibox.vm.machine",
    "importlib.import_module('minibox.vm.agent')",
    "__import__('minibox.vm')",
])
def test_the_check_sees_every_kind_of_import(source: str) -> None:
    """The checker itself: each way of importing across is caught (so the test above can fail)."""
    found = imported_modules(PACKAGE / "container" / "x.py", "import importlib\n" + source + "\n")
    assert any(m == "minibox.vm" or m.startswith("minibox.vm.") for m in found), found
