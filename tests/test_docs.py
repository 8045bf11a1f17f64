"""The documentation: a short README, no measurement history in docs/, a strict MkDocs build."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README_MAX_LINES = 160
# History markers such as "Stop 12" belong in CHANGELOG.md, not in the docs.
STOP_MARKER = re.compile(r"\bstop \d+\b", re.IGNORECASE)


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move details to docs/ "
        "and history to CHANGELOG.md"
    )


def test_docs_hold_no_history_markers() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sorted(DOCS.rglob("*"))
        if path.is_file() and path.suffix in {".md", ".py", ".yml", ".yaml"}
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if STOP_MARKER.search(line)
    ]
    assert found == [], "history markers in docs/ (move them to CHANGELOG.md):\n" + "\n".join(found)


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None,
                    reason="mkdocs is not installed (pip install -e '.[dev]')")
def test_docs_build_strict(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        check=False, cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert "WARNING" not in proc.stderr, proc.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    cli_page = (tmp_path / "site" / "cli" / "index.html").read_text(encoding="utf-8")
    assert "microchange detect" in cli_page and "--runner" in cli_page
