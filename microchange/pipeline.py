"""The stages of one detection run, each a plain function that passes paths, not arrays.

``plan_detection`` -> ``fit_detection`` -> ``score_tiles`` (any number of calls, in any process)
-> ``finalise_detection``. :func:`run_detection` chains them in one process (the CLI); the Prefect
flow ``flows/detect.py`` wraps each stage in a task. Both produce identical outputs.

Every stage keeps its state in a staging folder ``OUT/.microchange-staging/<run_id>/``: the plan,
the fitted detector, and one part file per tile. Final outputs are written under temporary names
and renamed into place only when all of them are complete, so a failed run never leaves a partial
file under a final name and never touches the outputs of an earlier run.
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Self

import numpy as np
import pyarrow as pa
import shapely

from microchange.blocks import (
    DaskBlocks,
    LocalBlocks,
    SampleBlocks,
    available_cpus,
    ordered_map,
)
from microchange.config import DetectConfig, PreprocessConfig
from microchange.coregistration import (
    ShiftField,
    block_shift,
    estimate_shift,
    estimate_shift_field,
    median_shift,
)
from microchange.detector import Detector, build_detector
from microchange.errors import InputError, MicrochangeError, NoOverlapError, OutputError
from microchange.features.base import FeatureSample
from microchange.features.devices import sharing_cpus
from microchange.io.cog import assemble_cog, read_part, write_part
from microchange.io.manifest import (
    file_fingerprint,
    library_versions,
    read_json,
    write_json_atomic,
)
from microchange.io.rasters import Grid, PairReader, PathLike, TileArrays
from microchange.io.tables import write_geoparquet
from microchange.postprocess import make_mask
from microchange.preprocess import preprocess_image
from microchange.regions import Regions, extract_regions, remove_small_regions
from microchange.sampling import sample_blocks
from microchange.scoring.thresholds import Threshold, fit_threshold
from microchange.tiling import Tile, iter_blocks, plan_tiles

__all__ = (
    "OUTPUT_NAMES",
    "STAGING_DIR",
    "discard_run",
    "finalise_detection",
    "fit_detection",
    "plan_detection",
    "prepared_sample",
    "run_detection",
    "score_tiles",
    "tile_batches",
)

log = logging.getLogger("microchange")

STAGING_DIR = ".microchange-staging"
OUTPUT_NAMES = ("change_mask.tif", "change_score.tif", "tiles.parquet", "changes.parquet",
                "run.json")
Progress = Callable[[int], None]


# -- plan helpers ----------------------------------------------------------------------------
class _Plan:
    """Typed view of plan.json."""

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self.doc: dict[str, Any] = read_json(self.path)
        self.staging = self.path.parent
        self.config = DetectConfig.model_validate(self.doc["config"])
        g = self.doc["grid"]
        self.grid = Grid(g["height"], g["width"], tuple(g["transform"]), g["crs_wkt"])
        halo = int(self.doc["halo"])
        self.tiles = [Tile(*t, halo=halo) for t in self.doc["tiles"]]  # type: ignore[misc]
        self.out = Path(self.doc["out"])

    def reader(self) -> PairReader:
        coreg = self.doc["coregistration"]
        shift = coreg["applied_shift"]
        field = ShiftField.from_dict(coreg["field"]) if coreg.get("field") else None
        return PairReader(self.doc["before"], self.doc["after"], bands=self.config.bands,
                          after_shift=(shift[0], shift[1]), after_shift_field=field,
                          masks=self.config.masks)

    def detector(self) -> Detector:
        det = build_detector(self.config)
        det.load_state(self.staging / "model.npz")
        return det

    def part(self, kind: str, tile_id: int) -> Path:
        suffix = "json" if kind == "tile" else "tif"
        return self.staging / "parts" / f"{kind}_{tile_id:06d}.{suffix}"


def _input_info(path: str, files: Sequence[str], ds: Any, fingerprints: dict[str, Any],
                bands: Sequence[Any] | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "path": str(Path(path).resolve()),
        "width": ds.width,
        "height": ds.height,
        "count": ds.count,
        "dtype": ds.dtypes[0],
        "driver": ds.driver,
        "crs": ds.crs.to_string() if ds.crs else None,
        "nodata": ds.nodata,
        "files": [fingerprints[f] for f in files],
    }
    if bands is not None:  # a stack of single-band files: which file each band came from
        info["bands"] = [b.as_dict() for b in bands]
    return info


_COREG_BLOCKS = 16
_COREG_MIN_BLOCKS = 3
_COREG_MAX_SPREAD = 0.3
_COREG_MAX_SHIFT = 3.0
_COREG_CELL_BLOCK = 128
_COREG_MAX_CELLS = 4096


def _prepared_block(pair: PairReader, pre: PreprocessConfig, r: int, c: int, h: int, w: int
                    ) -> tuple[Any, Any, Any]:
    arr = pair.read(r, r + h, c, c + w)
    if pre.denoise == "bilateral":  # its noise level is fitted later: smooth alike for the shift
        pre = pre.model_copy(update={"denoise": "gaussian"})
    return (preprocess_image(arr.before, arr.valid, pre),
            preprocess_image(arr.after, arr.valid, pre), arr.valid)


def _cell_shifts(pair: PairReader, pre: PreprocessConfig, cell: int
                 ) -> tuple[list[float], list[float], list[list[tuple[float, float] | None]]]:
    """Phase-correlation shift of a central block of every cell of a coarse grid.

    Each cell's block (:data:`_COREG_CELL_BLOCK` px) sits at the cell centre, moved (by at most
    half its size) into the input's internal block that holds the centre, so that reading it
    decodes one block per date rather than the four it would straddle. The returned row and
    column positions are those of the blocks' centres. Rows of cells are read and correlated on
    threads, each with its own reader.
    """
    g = pair.grid
    grain = pair.block_shape or (0, 0)

    def place(start: int, extent: int, inner: int) -> tuple[int, int]:
        """(first pixel, size) of the block of the cell starting at ``start`` along one axis."""
        size = min(_COREG_CELL_BLOCK, cell, extent - start)
        centre = start + (min(cell, extent - start) - 1) / 2
        first = min(max(0, round(centre - size / 2)), extent - size)
        if inner >= size:
            lo = int(centre) // inner * inner
            hi = min(lo + inner, extent)
            if hi - lo >= size:
                first = min(max(first, lo), hi - size)
        return first, size

    row_blocks = [place(r, g.height, grain[0]) for r in range(0, g.height, cell)]
    col_blocks = [place(c, g.width, grain[1]) for c in range(0, g.width, cell)]
    rows = [r0 + (h - 1) / 2 for r0, h in row_blocks]
    cols = [c0 + (w - 1) / 2 for c0, w in col_blocks]

    def line(k: int) -> list[tuple[float, float] | None]:
        r0, h = row_blocks[k]
        with pair.reopen() as own:
            return [block_shift(*_prepared_block(own, pre, r0, c0, h, w))
                    for c0, w in col_blocks]

    return rows, cols, ordered_map(line, range(len(row_blocks)), available_cpus())


def _estimate_coregistration(
    pair: PairReader, pre: PreprocessConfig, *, seed: int
) -> dict[str, Any]:
    """Sub-pixel shift of AFTER: a field over a coarse grid of cells, or one global shift.

    With ``coregister_cell`` > 0 and a raster of at least 2x2 cells, a shift is estimated in
    every cell (:func:`microchange.coregistration.estimate_shift_field`); the global shift is
    their median. The field is applied when it departs from the global shift by more than
    ``coregister_min_shift`` somewhere, stays within 3 px, and the cells agree with it (median
    distance of a cell's estimate from the field at most 0.3 px). Otherwise one global shift (from
    the cells, or from up to 16 blocks of a smaller raster) is applied when it is trustworthy:
    at least 3 usable blocks agreeing within 0.3 px (median absolute deviation) on a shift of at
    most 3 px (residual misregistration, not a different scene). The reason for not correcting
    is recorded.
    """
    if not pre.coregister:
        return {"enabled": False, "applied": False, "mode": None, "applied_shift": [0.0, 0.0],
                "field": None}
    g = pair.grid
    cell = pre.coregister_cell
    local: ShiftField | None = None
    cells_doc: dict[str, Any] | None = None
    use_cells = (cell > 0 and g.height >= 2 * cell and g.width >= 2 * cell
                 and math.ceil(g.height / cell) * math.ceil(g.width / cell) <= _COREG_MAX_CELLS)
    if use_cells:
        rows, cols, shifts = _cell_shifts(pair, pre, cell)
        usable = [s for line in shifts for s in line if s is not None]
        est = median_shift(usable)
        cells_doc = {"size": cell, "grid": [len(rows), len(cols)], "usable": len(usable)}
        if est.n_blocks >= _COREG_MIN_BLOCKS:
            field = estimate_shift_field(rows, cols, shifts, (est.dy, est.dx))
            dev = float(np.hypot(np.asarray(field.dy) - est.dy,
                                 np.asarray(field.dx) - est.dx).max())
            # the cells must agree with the smooth field, as blocks must agree on a global shift
            misfit = float(np.median([
                math.hypot(sh[0] - field.dy[i][j], sh[1] - field.dx[i][j])
                for i, line in enumerate(shifts) for j, sh in enumerate(line) if sh is not None]))
            cells_doc["misfit"] = misfit
            if (dev >= max(pre.coregister_min_shift, 1e-9)
                    and field.max_magnitude() <= _COREG_MAX_SHIFT and misfit <= _COREG_MAX_SPREAD):
                local = field
    else:
        block = 256 if min(g.height, g.width) >= 1024 else 128
        grid_blocks = list(iter_blocks(g.height, g.width, block))
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(len(grid_blocks), size=min(_COREG_BLOCKS, len(grid_blocks)),
                                    replace=False))
        est = estimate_shift([_prepared_block(pair, pre, *grid_blocks[j]) for j in chosen.tolist()])
    if local is not None:
        reason = ""
    elif est.n_blocks < _COREG_MIN_BLOCKS:
        reason = f"only {est.n_blocks} usable block(s) (< {_COREG_MIN_BLOCKS})"
    elif est.spread > _COREG_MAX_SPREAD:
        reason = f"blocks disagree (spread {est.spread:.2f} px > {_COREG_MAX_SPREAD})"
    elif est.magnitude > _COREG_MAX_SHIFT:
        reason = f"shift {est.magnitude:.2f} px > {_COREG_MAX_SHIFT} px is not a residual"
    elif est.magnitude < pre.coregister_min_shift:
        reason = f"shift {est.magnitude:.3f} px below coregister_min_shift"
    else:
        reason = ""
    applied = not reason
    mode = ("local" if local is not None else "global") if applied else None
    if local is not None:
        log.info("co-registration: AFTER shifted by a field over %dx%d cells (up to %.3f px)",
                 len(local.rows), len(local.cols), local.max_magnitude())
    elif applied:
        log.info("co-registration: AFTER shifted by (%.3f, %.3f) px", est.dy, est.dx)
    else:
        log.info("co-registration not applied: %s", reason)
    return {"enabled": True, "estimate": est.as_dict(), "cells": cells_doc, "applied": applied,
            "mode": mode, "reason": reason or None,
            "applied_shift": [est.dy, est.dx] if mode == "global" else [0.0, 0.0],
            "field": local.as_dict() if local is not None else None}


def plan_detection(before: PathLike, after: PathLike, out: PathLike, config: DetectConfig) -> str:
    """Stage 1: check both inputs, plan the tile grid and create the staging folder.

    Args:
        before: Raster at t0; defines the output grid.
        after: Raster at t1.
        out: Output folder (created if missing).
        config: Run parameters.

    Returns:
        Path of the plan (``plan.json``) that the next stages take.

    Raises:
        InputError: If an input, the output folder or a parameter is bad (the message says
            which and how to fix it).
    """
    t0 = time.perf_counter()
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {str(out)!r} is a file: give a folder for the outputs")
    detector = build_detector(config)  # unknown method -> clear error before any I/O
    pre = config.resolved_preprocess()
    with (PairReader(before, after, bands=config.bands, masks=config.masks) as pair,
          ThreadPoolExecutor(1) as hasher):
        files = [*pair._before.files, *pair._after_src.files, *pair.mask_files.values()]
        # checksums while the co-registration runs (hashlib releases the GIL)
        hashed = hasher.submit(lambda: {f: file_fingerprint(f) for f in files})
        coreg = _estimate_coregistration(pair, pre, seed=config.seed)
        grid = pair.grid
        fingerprints = hashed.result()
        inputs = {
            "before": _input_info(str(before), pair._before.files, pair._before, fingerprints,
                                  pair.sources["before"]),
            "after": _input_info(str(after), pair._after_src.files, pair._after_src,
                                 fingerprints, pair.sources["after"]),
        }
        if pair.mask_files:
            inputs["masks"] = {k: fingerprints[v] for k, v in pair.mask_files.items()}
        alignment, warnings, bands = pair.alignment, list(pair.warnings), pair.bands
        pixel_area = pair.pixel_area_m2()
    for w in warnings:
        log.warning(w)
    post = config.resolved_postprocess()
    min_region_px = post.min_region_px
    if post.min_region_m2 is not None:
        if not math.isfinite(pixel_area):
            raise InputError(
                f"min_region_m2={post.min_region_m2!r} needs a georeferenced grid but "
                f"{str(before)!r} has none: use min_region_px instead"
            )
        min_region_px = max(1, math.ceil(post.min_region_m2 / pixel_area))
    halo = detector.halo + post.halo
    tiles = plan_tiles(grid.height, grid.width, tile_size=config.tile_size, halo=halo)
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]
    try:
        staging = out_dir / STAGING_DIR / run_id
        (staging / "parts").mkdir(parents=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {str(out)!r} ({exc}): "
                          "choose a writable --out") from exc
    plan = {
        "run_id": run_id,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "before": str(Path(before).resolve()),
        "after": str(Path(after).resolve()),
        "out": str(out_dir.resolve()),
        "config": config.model_dump(mode="json"),
        "bands": list(bands),
        "grid": {"height": grid.height, "width": grid.width, "transform": list(grid.transform),
                 "crs_wkt": grid.crs_wkt, "pixel_area_m2": pixel_area},
        "alignment": alignment,
        "coregistration": coreg,
        "warnings": warnings,
        "halo": halo,
        "post_halo": post.halo,
        "min_region_px": min_region_px,
        "tiles": [[t.tile_id, t.row_off, t.col_off, t.height, t.width] for t in tiles],
        "inputs": inputs,
        "timings": {"plan_s": round(time.perf_counter() - t0, 3)},
    }
    path = staging / "plan.json"
    write_json_atomic(path, plan)
    log.info("planned %d tiles of %d px (halo %d) on a %dx%d grid", len(tiles),
             config.tile_size, halo, grid.height, grid.width)
    return str(path)


def _read_blocks(plan_path: str, blocks: list[Tile]) -> list[TileArrays]:
    """Read a run of sample blocks (one reader for all), dropping those without a valid pixel."""
    out = []
    with _Plan(plan_path).reader() as pair:
        for block in blocks:
            arrays = pair.read_tile(block)
            if arrays.valid.any():
                out.append(arrays)
    return out


def fit_detection(plan_path: PathLike, *, client: Any = None) -> str:
    """Stage 2: fit the detector and the threshold on a sample spread over the whole raster.

    Args:
        plan_path: Path returned by :func:`plan_detection`.
        client: A ``distributed.Client``: the sample blocks are read, reduced to the
            preprocessing statistics and prepared on its cluster (:mod:`microchange.blocks`);
            None does it all in this process. The result is the same.

    Returns:
        Path of the fitted detector state (``model.npz``); the threshold is in ``fit.json``.

    Raises:
        NoOverlapError: If the sample holds no valid pixel (the inputs are all nodata).
    """
    t0 = time.perf_counter()
    plan = _Plan(plan_path)
    cfg = plan.config
    detector = build_detector(cfg)
    blocks, samples, where = _load_sample(plan, detector.halo, client)
    scores = detector.fit(samples)
    del samples
    threshold = fit_threshold(cfg.threshold or detector.default_threshold, scores)
    model = plan.staging / "model.npz"
    detector.save(model)
    q = np.quantile(scores, [0.5, 0.9, 0.99, 0.999]) if scores.size else [math.nan] * 4
    write_json_atomic(plan.staging / "fit.json", {
        "threshold": {"method": threshold.method, "value": threshold.value,
                      "n_sample": threshold.n_sample, "detail": threshold.detail},
        "sample": {"blocks": len(blocks), "pixels": int(scores.size), "fitted_on": where,
                   "score_quantiles": dict(zip(["p50", "p90", "p99", "p99.9"],
                                               [float(v) for v in q], strict=True))},
        "fitted_preprocess": detector.fitted_preprocess(),
        "features": detector.fitted_features(),
        "fit_s": round(time.perf_counter() - t0, 3),
    })
    log.info("fitted %s on %d sample pixels; threshold %s = %.4g", detector.method, scores.size,
             threshold.method, threshold.value)
    return str(model)


def _load_sample(plan: _Plan, halo: int, client: Any = None
                 ) -> tuple[list[Any], SampleBlocks[TileArrays], str]:
    """The plan's global sample blocks (read here or on ``client``'s cluster) and where."""
    cfg = plan.config
    blocks = sample_blocks(plan.grid.height, plan.grid.width, halo=halo,
                           n_pixels=cfg.sample_pixels, seed=cfg.seed)
    samples: SampleBlocks[TileArrays]
    if client is None:
        samples = LocalBlocks.load(blocks, partial(_read_blocks, str(plan.path)),
                                   threads=available_cpus())
        where = "local"
    else:
        samples = DaskBlocks.load(blocks, partial(_read_blocks, str(plan.path)), client)
        n = len(client.nthreads())
        where = f"dask ({n} worker{'' if n == 1 else 's'})"
    if not len(samples):
        raise NoOverlapError(
            f"no valid pixel in {plan.doc['before']!r} and {plan.doc['after']!r} where both "
            "overlap: check nodata values and footprints"
        )
    return blocks, samples, where


def prepared_sample(plan_path: PathLike) -> list[FeatureSample]:
    """The planned pair's global sample, preprocessed as a detection would before its features.

    Used to train the 'learned' extractor on several pairs: each pair is read, and its
    preprocessing fitted, exactly as in :func:`fit_detection`.

    Args:
        plan_path: Path returned by :func:`plan_detection`.

    Returns:
        The sample blocks after the preprocessing fitted on them.

    Raises:
        NoOverlapError: If the sample holds no valid pixel.
    """
    plan = _Plan(plan_path)
    detector = build_detector(plan.config)
    _, samples, _ = _load_sample(plan, detector.halo)
    return detector.prepare_sample(samples)


def tile_batches(plan_path: PathLike, *, batch_size: int = 16) -> list[list[int]]:
    """Split the planned tile ids into batches (one scoring task each)."""
    ids = [t.tile_id for t in _Plan(plan_path).tiles]
    return [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)]


def _tile_stats(score: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    valid = mask != 255
    n_valid = int(valid.sum())
    n_changed = int((mask == 1).sum())
    if n_valid:
        s = score[valid]
        mean, p95, mx = float(s.mean()), float(np.quantile(s, 0.95)), float(s.max())
    else:
        mean = p95 = mx = math.nan
    return {"n_valid": n_valid, "n_changed": n_changed,
            "changed_fraction": n_changed / n_valid if n_valid else 0.0,
            "score_mean": mean, "score_p95": p95, "score_max": mx}


class _TileScorer:
    """What scoring tiles needs, opened once: fitted detector, threshold and the pair's reader."""

    def __init__(self, plan: _Plan) -> None:
        self.plan = plan
        self.detector = plan.detector()
        self.threshold = Threshold(**read_json(self.plan.staging / "fit.json")["threshold"])
        self.by_id = {t.tile_id: t for t in self.plan.tiles}
        self.post = self.plan.config.resolved_postprocess()
        self.keep = int(self.plan.doc["post_halo"])
        self.pair = self.plan.reader()

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
            mask, score = make_mask(block, self.threshold.value, self.post, keep=self.keep)
            write_part(plan.part("score", tile.tile_id), score, plan.grid, tile, nodata=math.nan)
            write_part(plan.part("mask", tile.tile_id), mask, plan.grid, tile, nodata=255)
            write_json_atomic(plan.part("tile", tile.tile_id), _tile_stats(score, mask))


def score_tiles(plan_path: PathLike, tile_ids: Sequence[int], *, threads: int = 1,
                progress: Progress | None = None) -> list[int]:
    """Stage 3: score, threshold and write the given tiles (safe to run in parallel).

    Tiles whose part files already exist (an interrupted earlier attempt) are skipped. Batches of
    ``batch_tiles`` tiles go through the detector together. With ``threads > 1`` that many
    threads take batches in turn, each with its own reader and detector and its share of the
    CPUs for torch (NumPy, SciPy, GDAL and torch release the GIL); the outputs do not depend on
    the thread count.

    Args:
        plan_path: Path returned by :func:`plan_detection` (after :func:`fit_detection`).
        tile_ids: Tiles to process.
        threads: Threads scoring batches concurrently in this process.
        progress: Called with the number of tiles after each batch (from any thread).

    Returns:
        The tile ids processed or found done.
    """
    plan = _Plan(plan_path)
    todo = [tid for tid in tile_ids if not plan.part("tile", tid).exists()]
    if progress is not None and len(todo) < len(tile_ids):
        progress(len(tile_ids) - len(todo))
    if not todo:
        return list(tile_ids)
    size = max(1, plan.config.batch_tiles)
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


# -- finalise --------------------------------------------------------------------------------
def _tile_footprint(grid: Grid, tile: Tile) -> Any:
    a = grid.affine
    r0, c0, r1, c1 = tile.row_off, tile.col_off, tile.row_off + tile.height, tile.col_off + tile.width
    return shapely.Polygon([a @ (c0, r0), a @ (c1, r0), a @ (c1, r1), a @ (c0, r1)])


def _write_tiles_table(path: Path, plan: _Plan, stats: list[dict[str, Any]]) -> None:
    tiles = plan.tiles
    cols = {
        "tile_id": pa.array([t.tile_id for t in tiles], pa.int32()),
        "row_off": pa.array([t.row_off for t in tiles], pa.int32()),
        "col_off": pa.array([t.col_off for t in tiles], pa.int32()),
        "height": pa.array([t.height for t in tiles], pa.int32()),
        "width": pa.array([t.width for t in tiles], pa.int32()),
        "n_valid": pa.array([s["n_valid"] for s in stats], pa.int64()),
        "n_changed": pa.array([s["n_changed"] for s in stats], pa.int64()),
        "changed_fraction": pa.array([s["changed_fraction"] for s in stats], pa.float64()),
        "score_mean": pa.array([s["score_mean"] for s in stats], pa.float64()),
        "score_p95": pa.array([s["score_p95"] for s in stats], pa.float64()),
        "score_max": pa.array([s["score_max"] for s in stats], pa.float64()),
        "changed": pa.array([s["n_changed"] > 0 for s in stats], pa.bool_()),
        "run_id": pa.array([plan.doc["run_id"]] * len(tiles), pa.string()),
    }
    write_geoparquet(path, cols, [_tile_footprint(plan.grid, t) for t in tiles],
                     plan.grid.crs_wkt)


def _write_changes_table(path: Path, plan: _Plan, regions: Regions) -> None:
    px_area = plan.doc["grid"]["pixel_area_m2"]
    px_area = math.nan if px_area is None else float(px_area)
    cols = {
        "region_id": pa.array(np.arange(len(regions)), pa.int64()),
        "area_px": pa.array(regions.area_px, pa.int64()),
        "area_m2": pa.array(regions.area_px * px_area, pa.float64()),
        "score_mean": pa.array(regions.score_mean, pa.float64()),
        "score_max": pa.array(regions.score_max, pa.float64()),
        "tile_id": pa.array(regions.tile_id, pa.int32()),
        "tile_ids": pa.array(regions.tile_ids, pa.list_(pa.int32())),
        "run_id": pa.array([plan.doc["run_id"]] * len(regions), pa.string()),
    }
    write_geoparquet(path, cols, regions.geometry, plan.grid.crs_wkt)


def _nan_to_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def finalise_detection(plan_path: PathLike, *, started: float | None = None) -> dict[str, Any]:
    """Stage 4: assemble COGs, vectorise regions, write tables and run.json, then publish.

    Args:
        plan_path: Path returned by :func:`plan_detection`, after every tile was scored.
        started: ``time.time()`` when the run started, for the total in run.json.

    Returns:
        A small summary: output paths, counts, threshold and seconds.

    Raises:
        MicrochangeError: If tiles are missing (not every tile was scored).
    """
    t0 = time.perf_counter()
    plan = _Plan(plan_path)
    missing = [t.tile_id for t in plan.tiles if not plan.part("tile", t.tile_id).exists()]
    if missing:
        raise MicrochangeError(f"{len(missing)} tile(s) not scored yet (e.g. {missing[:5]}): "
                               "run score_tiles for every tile before finalising")
    out = plan.out
    run_id = plan.doc["run_id"]
    tmp = {name: out / f".{name}.{run_id}.tmp" for name in OUTPUT_NAMES}
    try:
        ids = [t.tile_id for t in plan.tiles]
        stats = {i: read_json(plan.part("tile", i)) for i in ids}

        def _rewrite(tile: Tile, mask: np.ndarray) -> None:
            write_part(plan.part("mask", tile.tile_id), mask, plan.grid, tile, nodata=255)
            s = stats[tile.tile_id]
            s["n_changed"] = int((mask == 1).sum())
            s["changed_fraction"] = s["n_changed"] / s["n_valid"] if s["n_valid"] else 0.0

        removed = remove_small_regions(
            plan.tiles,
            lambda t: read_part(plan.part("mask", t.tile_id)),  # type: ignore[arg-type,return-value]
            _rewrite,
            plan.grid,
            min_px=int(plan.doc["min_region_px"]),
        )
        def _cog(kind: str) -> None:
            name, dtype, nodata, resampling = (
                ("change_mask.tif", "uint8", 255, "nearest") if kind == "mask"
                else ("change_score.tif", "float32", math.nan, "average"))
            assemble_cog([(t, plan.part(kind, t.tile_id)) for t in plan.tiles], plan.grid,
                         tmp[name], dtype=dtype, nodata=nodata, resampling=resampling)

        ordered_map(_cog, ["mask", "score"], available_cpus())  # GDAL releases the GIL
        t_cog = time.perf_counter()
        stats_list = [stats[i] for i in ids]
        regions = extract_regions(
            plan.tiles,
            lambda t: (read_part(plan.part("mask", t.tile_id)),  # type: ignore[arg-type,return-value]
                       read_part(plan.part("score", t.tile_id))),
            plan.grid,
        )
        _write_tiles_table(tmp["tiles.parquet"], plan, stats_list)
        _write_changes_table(tmp["changes.parquet"], plan, regions)
        t_vec = time.perf_counter()
        fit = read_json(plan.staging / "fit.json")
        method, scorer = plan.config.resolved_method()
        n_valid = sum(s["n_valid"] for s in stats_list)
        n_changed = sum(s["n_changed"] for s in stats_list)
        px_area = plan.doc["grid"]["pixel_area_m2"]
        timings = dict(plan.doc["timings"])
        timings["fit_s"] = fit["fit_s"]
        timings["cog_s"] = round(t_cog - t0, 3)
        timings["vectorise_s"] = round(t_vec - t_cog, 3)
        if started is not None:
            timings["total_s"] = round(time.time() - started, 3)
        counts = {
            "valid_px": n_valid,
            "changed_px": n_changed,
            "changed_fraction": n_changed / n_valid if n_valid else 0.0,
            "changed_area_m2": _nan_to_none(n_changed * px_area) if px_area else None,
            "regions": len(regions),
            "tiles": len(plan.tiles),
            "tiles_changed": sum(1 for s in stats_list if s["n_changed"] > 0),
            "removed_by_min_region_px": removed,
        }
        manifest = {
            "run_id": run_id,
            "created": plan.doc["created"],
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "parameters": plan.doc["config"],
            "method": method,
            "scorer": scorer,
            "inputs": plan.doc["inputs"],
            "bands": plan.doc["bands"],
            "alignment": plan.doc["alignment"],
            "coregistration": plan.doc["coregistration"],
            "warnings": plan.doc["warnings"],
            "grid": {k: v for k, v in plan.doc["grid"].items()},
            "tiling": {"tile_size": plan.config.tile_size, "halo": plan.doc["halo"],
                       "tiles": len(plan.tiles)},
            "postprocess": {**plan.config.resolved_postprocess().model_dump(),
                            "min_region_px_effective": plan.doc["min_region_px"]},
            "preprocess": plan.config.resolved_preprocess().model_dump(),
            "device": fit["features"]["device"],
            "features": fit["features"],
            "threshold": fit["threshold"],
            "fitted_preprocess": fit["fitted_preprocess"],
            "sample": fit["sample"],
            "counts": counts,
            "timings": timings,
            "versions": library_versions(),
            "outputs": {name: name for name in OUTPUT_NAMES},
        }
        write_json_atomic(tmp["run.json"], manifest)
        for name in OUTPUT_NAMES:  # run.json last: its presence marks a complete run
            tmp[name].replace(out / name)
    except BaseException:
        for path in tmp.values():
            path.unlink(missing_ok=True)
        raise
    shutil.rmtree(plan.staging, ignore_errors=True)
    try:
        (out / STAGING_DIR).rmdir()
    except OSError:
        pass
    return {"out": str(out), "run_id": run_id, "counts": counts, "threshold": fit["threshold"],
            "timings": timings, "outputs": {n: str(out / n) for n in OUTPUT_NAMES}}


def run_detection(
    before: PathLike,
    after: PathLike,
    out: PathLike,
    config: DetectConfig,
    *,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run every stage in this process (what the CLI does; the flow runs the same stages).

    Args:
        before: Raster at t0; defines the output grid.
        after: Raster at t1.
        out: Output folder.
        config: Run parameters.
        threads: Threads scoring tiles (default: the CPUs available, ``OMP_NUM_THREADS`` if set).
        progress: Called with (tiles done, tiles total) as tiles finish.

    Returns:
        The summary of :func:`finalise_detection`.
    """
    started = time.time()
    plan = plan_detection(before, after, out, config)
    try:
        fit_detection(plan)
        ids = [i for batch in tile_batches(plan) for i in batch]
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
    except BaseException:
        discard_run(plan)
        raise


def discard_run(plan_path: PathLike) -> None:
    """Remove the staging folder of a failed run (final outputs are never touched)."""
    staging = Path(plan_path).parent
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.parent.rmdir()
    except OSError:
        pass
