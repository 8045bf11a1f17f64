"""No shell, ever: user input (paths, URLs, catalog entries, UI parameters) reaches no command line.

Read with ``ast`` over the library, the tasks, the flows and the command line: no ``os.system``,
``os.popen``, ``os.exec*``/``os.spawn*``, ``pty.spawn``, ``asyncio.create_subprocess_shell``,
no ``shell=True`` anywhere, no builtin ``eval``/``exec``. Remote inputs are read through GDAL
only (``microchange.types.is_remote``), never by a downloader program.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for folder in ("microchange", "cli", "flows", "tasks")
           for p in sorted((ROOT / folder).rglob("*.py"))]
FORBIDDEN_CALLS = {"os.system", "os.popen", "pty.spawn", "asyncio.create_subprocess_shell",
                   "commands.getoutput", "subprocess.getoutput", "subprocess.getstatusoutput"}
FORBIDDEN_PREFIXES = ("os.exec", "os.spawn", "os.posix_spawn")


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _offences(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("os", "pty"):
            names = {f"{node.module}.{a.name}" for a in node.names}
            found += [f"from-import {n}" for n in names
                      if n in FORBIDDEN_CALLS or n.startswith(FORBIDDEN_PREFIXES)]
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in FORBIDDEN_CALLS or name.startswith(FORBIDDEN_PREFIXES):
            found.append(name)
        if isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec"):
            found.append(f"builtin {node.func.id}")
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant)
                                          and kw.value.value is False):
                found.append(f"{name}(shell=...)")
    return found


def test_no_shell_is_ever_invoked() -> None:
    found = {}
    for path in SOURCES:
        if offences := _offences(ast.parse(path.read_text())):
            found[str(path.relative_to(ROOT))] = offences
    assert found == {}


def test_the_check_catches_what_it_looks_for() -> None:
    code = ("import os, subprocess\nfrom os import system\nos.system('ls')\n"
            "subprocess.run('ls', shell=True)\nos.execvp('ls', ['ls'])\neval('1')\n"
            "subprocess.run(['ls'], shell=False)\nmodel.eval()\n")
    assert _offences(ast.parse(code)) == ["from-import os.system", "os.system",
                                          "subprocess.run(shell=...)", "os.execvp",
                                          "builtin eval"]
