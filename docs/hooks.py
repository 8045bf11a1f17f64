"""MkDocs hooks: pages generated from the code and from measured results.

Registered in ``mkdocs.yml`` (``hooks: [docs/hooks.py]``). Two markers are replaced when a page
is rendered, so these pages cannot drift from what they describe:

* ``<!-- cli-reference -->`` (``cli.md``): the ``--help`` text of the ``microchange`` parser and
  of every subcommand, from :func:`microchange.cli.build_parser`.
* ``<!-- benchmark-results -->`` (``benchmarks.md``): the latest results of each benchmark, read
  from ``benchmarks/results/*.json`` (written by the benchmark scripts).

The figures under ``benchmarks/figures/`` are added to the site under ``figures/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

CLI_MARKER = "<!-- cli-reference -->"
RESULTS_MARKER = "<!-- benchmark-results -->"
RESULTS_DIR = Path("benchmarks") / "results"
FIGURES_DIR = Path("benchmarks") / "figures"
HELP_COLUMNS = 96  # width of the rendered --help text, whatever the terminal
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_REQUIRED = ("benchmark", "title", "commit", "date", "machine", "command", "tables")


def _root(config: MkDocsConfig) -> Path:
    """The repository root: the folder of ``mkdocs.yml``."""
    return Path(config.config_file_path).resolve().parent


# --- figures -------------------------------------------------------------------------------


def on_files(files: Files, *, config: MkDocsConfig) -> Files:
    """Add ``benchmarks/figures/*`` to the site as ``figures/*`` (one copy in the repository)."""
    folder = _root(config) / FIGURES_DIR
    for path in sorted(folder.glob("*")) if folder.is_dir() else []:
        if path.suffix.lower() in {".jpg", ".jpeg", ".png", ".svg"}:
            files.append(File.generated(config, f"figures/{path.name}", abs_src_path=str(path)))
    return files


# --- command line --------------------------------------------------------------------------


@contextmanager
def _plain_terminal() -> Iterator[None]:
    """A fixed help width and no colour while argparse formats help text."""
    saved = {k: os.environ.get(k) for k in ("COLUMNS", "NO_COLOR")}
    os.environ["COLUMNS"] = str(HELP_COLUMNS)
    os.environ["NO_COLOR"] = "1"
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Subcommand name -> its parser, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _fence(text: str) -> str:
    return f"```text\n{_ANSI.sub('', text).rstrip()}\n```"


def cli_reference() -> str:
    """Markdown of the ``--help`` text of ``microchange`` and of each subcommand."""
    try:
        from microchange.cli import build_parser
    except ImportError as exc:  # e.g. the package is not installed in this environment
        raise PluginError(f"cli.md: cannot import microchange.cli.build_parser ({exc}): "
                          "install the project first (make docs does)") from exc
    with _plain_terminal():
        parser = build_parser()
        parts = ["### `microchange`", "", _fence(parser.format_help())]
        for name, sub in _subcommands(parser).items():
            parts += ["", f"### `microchange {name}`", "", _fence(sub.format_help())]
    return "\n".join(parts) + "\n"


# --- benchmark results ---------------------------------------------------------------------


def _cell(value: Any) -> str:
    """One table cell: floats with 3 decimals, None as a dash, pipes escaped."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.3f}"
    if isinstance(value, list | tuple):
        return ", ".join(_cell(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _machine(machine: Any) -> str:
    """``{"cpus": 2, "platform": ..., "python": ...}`` in words."""
    if not isinstance(machine, Mapping):
        return str(machine)
    words = []
    if "cpus" in machine:
        words.append(f"{machine['cpus']} CPUs")
    if "platform" in machine:
        words.append(str(machine["platform"]))
    if "python" in machine:
        words.append(f"Python {machine['python']}")
    words += [f"{k} {v}" for k, v in machine.items() if k not in ("cpus", "platform", "python")]
    return ", ".join(words)


def _table(table: Mapping[str, Any], where: str) -> str:
    columns = table.get("columns")
    rows = table.get("rows")
    if not isinstance(columns, list) or not columns or not isinstance(rows, list):
        raise PluginError(f"{where}: a table needs 'columns' (a non-empty list) and 'rows' "
                          "(a list of objects keyed by column)")
    lines = []
    if table.get("caption"):
        lines += [f"**{_cell(table['caption'])}**", ""]
    lines.append("| " + " | ".join(_cell(c) for c in columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for row in rows:
        if not isinstance(row, Mapping):
            raise PluginError(f"{where}: each row must be an object keyed by column, got {row!r}")
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def load_results(folder: Path) -> list[dict[str, Any]]:
    """The latest result of each benchmark in ``folder`` (by date, then file name).

    Raises:
        PluginError: If a file is not valid JSON or lacks a required key.
    """
    latest: dict[str, tuple[tuple[str, str], dict[str, Any]]] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise PluginError(f"{path}: not a readable JSON results file ({exc})") from exc
        missing = [k for k in _REQUIRED if not isinstance(doc, dict) or k not in doc]
        if missing:
            raise PluginError(f"{path}: missing key(s) {', '.join(missing)}; a results file "
                              f"holds {', '.join(_REQUIRED)} (and optional 'notes')")
        doc["_path"] = path
        key = (str(doc["date"]), path.name)
        name = str(doc["benchmark"])
        if name not in latest or key > latest[name][0]:
            latest[name] = (key, doc)
    return [doc for _, doc in sorted(latest.values(), key=lambda kd: str(kd[1]["benchmark"]))]


def results_markdown(folder: Path) -> str:
    """Markdown of the latest benchmark results, or how to produce them when there are none."""
    docs = load_results(folder)
    if not docs:
        return ("No benchmark results are recorded yet. Produce them with "
                "`python benchmarks/accuracy.py` and `python benchmarks/throughput.py`; each "
                "writes its results file under `benchmarks/results/`, which this page "
                "renders.\n")
    parts = []
    for doc in docs:
        where = str(doc["_path"].name)
        tables = doc["tables"]
        if not isinstance(tables, list):
            raise PluginError(f"{where}: 'tables' must be a list of tables")
        stamp = (f"commit `{doc['commit']}`, date {doc['date']}, machine "
                 f"{_machine(doc['machine'])}")
        parts += [f"### {_cell(doc['title'])}", "", stamp, "",
                  "```bash", str(doc["command"]), "```", ""]
        for table in tables:
            if not isinstance(table, Mapping):
                raise PluginError(f"{where}: each table must be an object")
            parts += [_table(table, where), ""]
        if doc.get("notes"):
            parts += [str(doc["notes"]), ""]
    return "\n".join(parts)


# --- page hook -----------------------------------------------------------------------------


def on_page_markdown(markdown: str, *, page: Page, config: MkDocsConfig, files: Files) -> str:
    """Replace the markers of generated content in a page's Markdown."""
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if RESULTS_MARKER in markdown:
        markdown = markdown.replace(RESULTS_MARKER,
                                    results_markdown(_root(config) / RESULTS_DIR))
    return markdown
