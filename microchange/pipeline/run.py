"""The four stages chained in one process (the command line's default runner)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from microchange.config import DetectConfig
from microchange.errors import InputError
from microchange.parallel import available_cpus
from microchange.pipeline.finalise import finalise_detection
from microchange.pipeline.fit import fit_detection
from microchange.pipeline.plan import plan_detection
from microchange.pipeline.records import Plan
from microchange.pipeline.score import score_tiles
from microchange.types import PathLike

__all__ = ("discard_run", "run_detection")


def run_detection(
    before: PathLike,
    after: PathLike,
    out: PathLike,
    config: DetectConfig,
    *,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run every stage in this process (the flow ``detect-changes`` runs the same stages).

    A run interrupted earlier (killed, crashed) with the same inputs and parameters is resumed:
    its fitted detector and finished tiles are reused and the outputs are the same.

    Args:
        before: Raster at t0; defines the output grid.
        after: Raster at t1.
        out: Output folder.
        config: Run parameters.
        threads: Threads scoring tiles (default: the CPUs available, ``OMP_NUM_THREADS`` if set).
        progress: Called with (tiles done, tiles total) as tiles finish.

    Returns:
        The summary of :func:`~microchange.pipeline.finalise_detection`.
    """
    started = time.time()
    plan = plan_detection(before, after, out, config)
    try:
        fit_detection(plan)
        ids = [t[0] for t in Plan.load(plan).tiles]
        done = 0
        lock = threading.Lock()

        def _tick(n: int) -> None:
            nonlocal done
            with lock:
                done += n
                if progress is not None:
                    progress(done, len(ids))

        score_tiles(plan, ids, threads=threads or available_cpus(), progress=_tick)
        return finalise_detection(plan, started=started)
    except InputError:
        discard_run(plan)
        raise


def discard_run(plan_path: PathLike) -> None:
    """Remove the staging folder of a run that failed on bad input (nothing worth resuming).

    The output folder goes too when nothing else is left in it, so that a bad input leaves no
    trace. Any other failure (a crash, a kill, a full disk) keeps the staging folder: the next
    run with the same inputs and parameters resumes from it. Final outputs are never touched.
    """
    staging = Path(plan_path).parent
    shutil.rmtree(staging, ignore_errors=True)
    for empty in (staging.parent, staging.parent.parent):  # OUT/.microchange-staging, OUT
        try:
            empty.rmdir()
        except OSError:  # not empty (other runs, earlier outputs), or gone
            break
