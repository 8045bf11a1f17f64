"""Small modules, short functions, short module docstrings (history goes to CHANGELOG.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for folder in ("microchange", "cli", "flows", "tasks")
           for p in sorted((ROOT / folder).rglob("*.py"))]
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
MAX_DOCSTRING_LINES = 25


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_modules_are_small() -> None:
    long = {_rel(p): n for p in SOURCES if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert long == {}


def test_functions_are_short() -> None:
    """Lines from ``def`` to the end, docstring included."""
    long = {}
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{_rel(path)}:{node.lineno} {node.name}"] = n
    assert long == {}


def test_module_docstrings_are_short() -> None:
    long = {}
    for path in SOURCES:
        doc = ast.get_docstring(ast.parse(path.read_text()), clean=False)
        if doc and (n := len(doc.splitlines())) > MAX_DOCSTRING_LINES:
            long[_rel(path)] = n
    assert long == {}
