"""Benchmark results as data: ``benchmarks/results/<benchmark>.json``, rendered by the docs.

Each file holds the latest run of one benchmark: the commit, date, machine and command that
produced it, and its tables (git keeps the history). ``docs/hooks.py`` renders them on the
*Benchmarks* page.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, text=True, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out + ("+local changes" if dirty.strip() else "")


COMMIT_AT_START = _commit()
"""The commit (and whether the tree had local changes) when the benchmark started: the code the
run imported, whatever is committed while it runs."""


def machine() -> dict[str, Any]:
    """CPUs, platform and Python of this machine."""
    cpu = ""
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in
                    Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "platform": platform.platform(),
            "python": platform.python_version()}


def write_result(benchmark: str, title: str, tables: list[dict[str, Any]], *,
                 notes: str = "", argv: list[str] | None = None) -> Path:
    """Write ``benchmarks/results/<benchmark>.json`` and return its path.

    Args:
        benchmark: Short name (the file name).
        title: Heading on the docs page.
        tables: ``{"caption": str, "columns": [...], "rows": [{column: value}]}`` each.
        notes: A line of context shown under the tables.
        argv: The script's arguments (default ``sys.argv``), recorded as the command.
    """
    args = sys.argv if argv is None else argv
    script = Path(args[0])
    script_rel = script.resolve().relative_to(ROOT) if script.is_absolute() else script
    doc = {"benchmark": benchmark, "title": title, "commit": COMMIT_AT_START,
           "date": datetime.date.today().isoformat(), "machine": machine(),
           "command": shlex.join(["python", str(script_rel), *args[1:]]),
           "tables": tables, "notes": notes}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{benchmark}.json"
    path.write_text(json.dumps(doc, indent=1, default=float) + "\n")
    return path
