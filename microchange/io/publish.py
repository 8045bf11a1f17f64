"""Publish a run's outputs into ``OUT`` as one unit, and finish a publish that a kill cut short.

The outputs are first written complete in the run's staging folder (``<staging>/outputs/``).
Publishing then writes the journal ``<staging>/publish.json`` (the commit point), removes the
previous ``run.json`` (the folder no longer claims to be complete), renames the outputs into
place with ``run.json`` last, and deletes the journal. Each rename is atomic. A process killed
before the journal leaves the previous outputs as they were; one killed after it leaves the
journal, and :func:`complete_publish` (run by the next detection in that folder, and before an
evaluation reads it) finishes the renames. So a folder with ``run.json`` and no journal holds
one run's outputs, never old and new ones mixed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from microchange.errors import MicrochangeError
from microchange.types import OUTPUT_NAMES, RUN_MANIFEST, STAGING_DIR, PathLike

__all__ = ("JOURNAL", "STAGED_DIR", "complete_publish", "pending_publishes", "publish_outputs",
           "staged_outputs")

JOURNAL = "publish.json"
"""In a run's staging folder while its outputs are being renamed into place."""
STAGED_DIR = "outputs"
"""Folder of the run's staging folder holding its complete outputs before they are published."""


def staged_outputs(staging: Path) -> dict[str, Path]:
    """Where a run writes each output before publishing it, in publishing order."""
    return {name: staging / STAGED_DIR / name for name in OUTPUT_NAMES}


def _move(src: Path, dst: Path) -> None:
    os.replace(src, dst)  # atomic: the name holds the old file or the new one


def _write_journal(path: Path, run_id: str, names: list[str]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({"run_id": run_id, "outputs": names}) + "\n")
        _move(tmp, path)  # the commit point
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _apply(staging: Path, out: Path) -> None:
    """Rename what is left of the staged outputs into ``out`` (``run.json`` last)."""
    staged = staged_outputs(staging)
    if staged[RUN_MANIFEST].exists():
        (out / RUN_MANIFEST).unlink(missing_ok=True)
    for name, src in staged.items():
        if src.exists():
            _move(src, out / name)
    (staging / JOURNAL).unlink(missing_ok=True)


def publish_outputs(staging: Path, out: Path, run_id: str) -> None:
    """Move the complete staged outputs of run ``run_id`` into ``out`` under their final names.

    Raises:
        MicrochangeError: If a staged output is missing (nothing is moved then).
    """
    staged = staged_outputs(staging)
    if missing := [name for name, path in staged.items() if not path.is_file()]:
        raise MicrochangeError(f"cannot publish run {run_id}: {missing} not written")
    _write_journal(staging / JOURNAL, run_id, list(staged))
    _apply(staging, out)


def pending_publishes(out: PathLike) -> list[Path]:
    """Staging folders under ``out`` whose publish was cut short, oldest first."""
    journals = Path(out).glob(f"{STAGING_DIR}/*/{JOURNAL}")
    return [j.parent for j in sorted(journals, key=lambda j: j.stat().st_mtime)]


def complete_publish(out: PathLike, *, keep: str | None = None) -> list[str]:
    """Finish every publish in ``out`` that a killed process left halfway (roll forward).

    Args:
        out: Output folder.
        keep: Run id whose staging folder stays (the run starting now resumes from it); the
            staging folders of the other completed runs are removed.

    Returns:
        The run ids whose outputs were completed.
    """
    done = []
    for staging in pending_publishes(out):
        try:
            run_id = str(json.loads((staging / JOURNAL).read_text())["run_id"])
        except (OSError, ValueError, KeyError, TypeError):
            run_id = staging.name
        _apply(staging, Path(out))
        if staging.name != keep:
            shutil.rmtree(staging, ignore_errors=True)
            with contextlib.suppress(OSError):  # the staging root, once empty
                staging.parent.rmdir()
        done.append(run_id)
    return done
