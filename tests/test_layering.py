"""Imports point one way: core < tasks < flows < cli, and down the core's own layers; no cycles.

Every import statement is read with ``ast``, including those inside functions (a lazy import
that points up is still a dependency that points up).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"microchange": ROOT / "microchange", "microchange.tasks": ROOT / "tasks",
           "microchange.flows": ROOT / "flows", "microchange.cli": ROOT / "cli"}

# Layers from the bottom up; a module may import only from its own layer or those below.
LAYERS: list[tuple[str, ...]] = [
    ("microchange.errors", "microchange.types"),
    ("microchange.config",),
    ("microchange.tiling", "microchange.parallel", "microchange.sampling"),
    ("microchange.io",),
    ("microchange.preprocess",),
    ("microchange.scoring",),
    ("microchange.features",),
    ("microchange.detector",),
    ("microchange.pipeline",),
    ("microchange.training", "microchange.evaluation", "microchange.synthetic"),
    ("microchange",),  # the package's __init__: the public API
    ("microchange.tasks",),
    ("microchange.flows",),
    ("microchange.cli",),
]


def _module_name(path: Path) -> str:
    for package, folder in sorted(FOLDERS.items(), key=lambda kv: -len(str(kv[1]))):
        if path.is_relative_to(folder):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            return ".".join([package, *parts])
    raise AssertionError(path)


def _modules() -> dict[str, Path]:
    mods = {}
    for folder in FOLDERS.values():
        for path in folder.rglob("*.py"):
            mods[_module_name(path)] = path
    return mods


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules imported by a module (``from a import b`` counts ``a.b`` if a module)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _layer(name: str) -> int:
    best, rank = -1, -1
    for i, group in enumerate(LAYERS):
        for prefix in group:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank >= 0, f"module {name} is in no layer: add it to LAYERS"
    return rank


GRAPH = {name: _imports(name, path, set(_modules())) for name, path in _modules().items()}


def test_every_module_has_a_layer() -> None:
    for name in GRAPH:
        _layer(name)


def test_no_import_points_up() -> None:
    upward = [f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
              for a, deps in GRAPH.items() for b in deps
              if _layer(b) > _layer(a) and not b.startswith(a + ".")]
    assert upward == []


def test_no_cycle_among_modules() -> None:
    """Depth-first search; a package importing its own submodules (re-exports) is no cycle."""
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(GRAPH[node]):
            if dep.startswith(node + "."):
                continue
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep):], dep] if dep in stack else [node, dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_core_never_imports_prefect_or_the_layers_above() -> None:
    core = {n: p for n, p in _modules().items() if _layer(n) <= _layer("microchange")}
    offenders = []
    for name, path in core.items():
        for node in ast.walk(ast.parse(path.read_text())):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{name}: {m}" for m in mods
                          if m.split(".")[0] in ("prefect", "prefect_dask", "flows", "tasks")]
    assert offenders == []


def test_importing_the_core_loads_neither_prefect_nor_torch() -> None:
    code = ("import sys, microchange, microchange.pipeline, microchange.evaluation\n"
            "assert 'prefect' not in sys.modules, 'microchange imported prefect'\n"
            "assert 'torch' not in sys.modules, 'microchange imported torch'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_wheel_has_no_top_level_flows_or_tasks(tmp_path) -> None:
    """``pip install .`` puts only the ``microchange`` package into site-packages."""
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("microchange-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"microchange"}
    packaged = {str(Path(n).parent).replace("/", ".") for n in names if n.endswith(".py")}
    assert packaged == {name for name, path in _modules().items() if path.name == "__init__.py"}
