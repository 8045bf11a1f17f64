"""Stage 3: score, threshold and write tiles, in batches, in any number of processes."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from typing import Self

import numpy as np
from numpy.typing import NDArray

from microchange.features.devices import sharing_cpus
from microchange.io.cog import write_part
from microchange.io.outdir import writing_outputs
from microchange.pipeline.records import FitRecord, Plan, TileStats
from microchange.scoring.mask import make_mask
from microchange.types import MaskValue, PathLike

__all__ = ("TASKS_PER_SLOT", "score_tiles", "tile_batches")

Progress = Callable[[int], None]

TASKS_PER_SLOT = 2
"""Scoring tasks per slot of a task runner or cluster (a thread or a Dask worker thread), as
``tile_batches(plan, groups=TASKS_PER_SLOT * slots)``: enough to balance the load, few enough
that the orchestration overhead per task does not count."""


def tile_batches(plan_path: PathLike, *, groups: int | None = None) -> list[list[int]]:
    """The planned tile ids in batches of ``batch_tiles``, or those batches in a few groups.

    Args:
        plan_path: Path returned by :func:`~microchange.pipeline.plan_detection`.
        groups: At most this many lists of whole batches (contiguous, in tile order, sizes
            within one batch of each other): one scoring task each, since a task costs an
            orchestrator a fixed overhead. None: one list per batch.

    Returns:
        Lists of tile ids covering every planned tile once.
    """
    plan = Plan.load(plan_path)
    size = plan.config.batch_tiles
    ids = [t[0] for t in plan.tiles]
    batches = [ids[i:i + size] for i in range(0, len(ids), size)]
    if groups is None or groups >= len(batches):
        return batches
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    bounds = [len(batches) * g // groups for g in range(groups + 1)]
    return [[tid for batch in batches[a:b] for tid in batch] for a, b in pairwise(bounds)]


def tile_stats(score: NDArray[np.float32], mask: NDArray[np.uint8]) -> TileStats:
    """Statistics of one tile's core (a row of ``tiles.parquet``)."""
    valid = mask != MaskValue.NODATA
    n_valid = int(valid.sum())
    n_changed = int((mask == MaskValue.CHANGED).sum())
    if n_valid:
        s = score[valid]
        mean, p95, mx = float(s.mean()), float(np.quantile(s, 0.95)), float(s.max())
    else:
        mean = p95 = mx = math.nan
    return TileStats(n_valid=n_valid, n_changed=n_changed,
                     changed_fraction=n_changed / n_valid if n_valid else 0.0,
                     score_mean=mean, score_p95=p95, score_max=mx)


class _TileScorer:
    """What scoring tiles needs, opened once: fitted detector, threshold and the pair's reader."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.detector = plan.detector()
        self.threshold = FitRecord.load(plan.fit_path).threshold.value
        self.by_id = {t.tile_id: t for t in plan.tile_list()}
        self.post = plan.config.postprocess
        self.keep = plan.post_halo
        self.pair = plan.reader()
        self.grid = plan.output_grid

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pair.close()

    def run(self, ids: Sequence[int]) -> None:
        """Score, threshold and write one batch of tiles (one CNN batch)."""
        plan, tiles = self.plan, [self.by_id[tid] for tid in ids]
        blocks = self.detector.score_batch([self.pair.read_tile(t) for t in tiles],
                                           keep=self.keep)
        for tile, block in zip(tiles, blocks, strict=True):
            mask, score = make_mask(block, self.threshold, self.post, keep=self.keep)
            with writing_outputs(plan.out, plan.staging):
                write_part(plan.part("score", tile.tile_id), score, self.grid, tile,
                           nodata=math.nan)
                write_part(plan.part("mask", tile.tile_id), mask, self.grid, tile,
                           nodata=int(MaskValue.NODATA))
                tile_stats(score, mask).save(plan.part("tile", tile.tile_id))


def score_tiles(plan_path: PathLike, tile_ids: Sequence[int], *, threads: int = 1,
                progress: Progress | None = None) -> list[int]:
    """Stage 3: score, threshold and write the given tiles (safe to run in parallel).

    Tiles whose part files already exist (an interrupted earlier attempt) are skipped. Batches of
    ``batch_tiles`` tiles go through the detector together. With ``threads > 1`` that many
    threads take batches in turn, each with its own reader and detector and its share of the
    CPUs for torch (NumPy, SciPy, GDAL and torch release the GIL); the outputs do not depend on
    the thread count.

    Args:
        plan_path: Path returned by :func:`~microchange.pipeline.plan_detection`, after
            :func:`~microchange.pipeline.fit_detection`.
        tile_ids: Tiles to process.
        threads: Threads scoring batches concurrently in this process.
        progress: Called with the number of tiles after each batch (from any thread).

    Returns:
        The tile ids processed or found done.
    """
    plan = Plan.load(plan_path)
    todo = [tid for tid in tile_ids if not plan.part("tile", tid).exists()]
    if progress is not None and len(todo) < len(tile_ids):
        progress(len(tile_ids) - len(todo))
    if not todo:
        return list(tile_ids)
    size = plan.config.batch_tiles
    queue = iter([todo[i:i + size] for i in range(0, len(todo), size)])
    workers = max(1, min(threads, math.ceil(len(todo) / size)))
    lock = threading.Lock()
    failed = threading.Event()

    def _drain(scorer: _TileScorer) -> None:
        """Score batches from the shared queue until it is empty or a thread failed."""
        while not failed.is_set():
            with lock:
                ids = next(queue, None)
            if ids is None:
                return
            try:
                scorer.run(ids)
            except BaseException:
                failed.set()
                raise
            if progress is not None:
                progress(len(ids))

    if workers == 1:
        with _TileScorer(plan) as scorer:
            _drain(scorer)
        return list(tile_ids)

    def _worker() -> None:
        with sharing_cpus(workers), _TileScorer(plan) as scorer:
            _drain(scorer)

    with ThreadPoolExecutor(workers, thread_name_prefix="microchange-score") as pool:
        for future in [pool.submit(_worker) for _ in range(workers)]:
            future.result()
    return list(tile_ids)
