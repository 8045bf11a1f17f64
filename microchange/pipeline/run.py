"""The four stages chained in one process (the command line's default runner)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from microchange.config import DetectConfig
from microchange.errors import InputError
from microchange.features.devices import may_use_cuda
from microchange.parallel import GPU_RESOURCE, available_cpus, has_gpu_workers
from microchange.pipeline.finalise import finalise_detection
from microchange.pipeline.fit import fit_detection
from microchange.pipeline.plan import plan_detection
from microchange.pipeline.records import Plan
from microchange.pipeline.score import TASKS_PER_SLOT, score_tiles, tile_batches
from microchange.types import PathLike

if TYPE_CHECKING:
    from distributed import Client

__all__ = ("discard_run", "run_detection")


def run_detection(
    before: PathLike,
    after: PathLike,
    out: PathLike,
    config: DetectConfig,
    *,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    client: Client | None = None,
) -> dict[str, Any]:
    """Run every stage here, or with the tile work on a Dask cluster (same outputs either way).

    The flow ``detect-changes`` runs the same stages as Prefect tasks. A run interrupted earlier
    (killed, crashed) with the same inputs and parameters is resumed: its fitted detector and
    finished tiles are reused and the outputs are the same.

    Args:
        before: Raster at t0; defines the output grid.
        after: Raster at t1.
        out: Output folder.
        config: Run parameters.
        threads: Threads scoring tiles (default: the CPUs available, ``OMP_NUM_THREADS`` if set).
        progress: Called with (tiles done, tiles total) as tiles finish.
        client: A ``distributed.Client``: the fit's sample blocks are read and prepared on its
            cluster and the tiles are scored there, a few tasks per worker thread (a task lost
            with a worker runs again elsewhere and skips its finished tiles); planning, the
            network's training and the final outputs stay here. ``threads`` does not apply.

    Returns:
        The summary of :func:`~microchange.pipeline.finalise_detection`.
    """
    started = time.time()
    plan = plan_detection(before, after, out, config)
    try:
        fit_detection(plan, client=client)
        ids = [t[0] for t in Plan.load(plan).tiles]
        done = 0
        lock = threading.Lock()

        def _tick(n: int) -> None:
            nonlocal done
            with lock:
                done += n
                if progress is not None:
                    progress(done, len(ids))

        if client is None:
            score_tiles(plan, ids, threads=threads or available_cpus(), progress=_tick)
        else:
            _score_on_cluster(plan, client, _tick)
        return finalise_detection(plan, started=started)
    except InputError:
        discard_run(plan)
        raise


def _score_on_cluster(plan: str, client: Client, progress: Callable[[int], None]) -> None:
    """Score every tile on the cluster, a few tile groups per worker thread.

    Where the network runs on CUDA and workers declare a ``GPU`` resource, each task holds one.
    """
    from distributed import as_completed

    slots = max(1, sum(client.nthreads().values()))  # type: ignore[no-untyped-call]
    groups = tile_batches(plan, groups=TASKS_PER_SLOT * slots)
    gpus = may_use_cuda(Plan.load(plan).config) and has_gpu_workers(client)
    futures = client.map(score_tiles, [plan] * len(groups), groups, pure=False,
                         resources={GPU_RESOURCE: 1} if gpus else None)
    sizes = {f.key: len(g) for f, g in zip(futures, groups, strict=True)}
    for future in as_completed(futures):  # type: ignore[no-untyped-call]
        future.result()  # a task's error ends the run here
        progress(sizes[future.key])


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
