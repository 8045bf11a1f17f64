"""Stage 4: clean the masks, assemble the COGs, write the tables and run.json, then publish.

Every output is written complete in the run's staging folder, then published into ``OUT`` as
one unit (:mod:`microchange.io.publish`, ``run.json`` last): a failed or killed run leaves no
partial file under a final name, and never the outputs of two runs under one ``run.json``.
"""

from __future__ import annotations

import math
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from microchange.errors import MicrochangeError
from microchange.io.cog import assemble_cog, cog_settings, read_part, write_part
from microchange.io.manifest import code_version, library_versions, write_json_atomic
from microchange.io.outdir import writing_outputs
from microchange.io.publish import JOURNAL, complete_publish, publish_outputs, staged_outputs
from microchange.parallel import available_cpus, ordered_map
from microchange.pipeline.records import FitRecord, Plan, ResumeRecord, TileStats
from microchange.pipeline.tables import write_changes_table, write_tiles_table
from microchange.scoring.regions import Regions, extract_regions, remove_small_regions
from microchange.tiling import Tile
from microchange.types import (
    CHANGE_MASK,
    CHANGE_SCORE,
    CHANGES_TABLE,
    OUTPUT_NAMES,
    RUN_MANIFEST,
    TILES_TABLE,
    MaskValue,
    PathLike,
)

__all__ = ("finalise_detection", "remove_staging")

STALE_STAGING_S = 7 * 24 * 3600
"""Staging folders of other runs untouched for this long are removed by a finished run."""


def remove_staging(staging: Path) -> None:
    """Remove a run's staging folder, stale ones of other runs, and the root once empty."""
    shutil.rmtree(staging, ignore_errors=True)
    root = staging.parent
    now = time.time()
    for other in root.glob("*"):
        try:
            stale = now - other.stat().st_mtime > STALE_STAGING_S
        except OSError:
            continue
        if stale:
            shutil.rmtree(other, ignore_errors=True)
    try:
        root.rmdir()
    except OSError:
        pass


def _nan_to_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else value


def _remove_small(plan: Plan, stats: dict[int, TileStats]) -> int:
    """Drop regions under the minimum mapping unit, across tiles; returns the pixels removed."""
    grid = plan.output_grid

    def rewrite(tile: Tile, mask: NDArray[np.uint8]) -> None:
        write_part(plan.part("kept", tile.tile_id), mask, grid, tile,
                   nodata=int(MaskValue.NODATA))
        s = stats[tile.tile_id]
        n_changed = int((mask == MaskValue.CHANGED).sum())
        stats[tile.tile_id] = s.model_copy(update={
            "n_changed": n_changed,
            "changed_fraction": n_changed / s.n_valid if s.n_valid else 0.0})

    return remove_small_regions(
        plan.tile_list(),
        lambda t: read_part(plan.part("mask", t.tile_id)),  # type: ignore[arg-type,return-value]
        rewrite, grid, min_px=plan.min_region_px)


def _mask_part(plan: Plan, tile_id: int) -> Path:
    """The tile's final mask: after the minimum mapping unit if it removed a region there."""
    kept = plan.part("kept", tile_id)
    return kept if kept.exists() else plan.part("mask", tile_id)


def _clear_kept(plan: Plan) -> None:
    """Remove ``kept`` parts left by an interrupted finish (they are made again from masks)."""
    for path in (plan.staging / "parts").glob("kept_*"):
        path.unlink(missing_ok=True)


def _write_cogs(plan: Plan, tmp: dict[str, Path]) -> None:
    """Mosaic the part files into the two COGs (side by side: GDAL releases the GIL)."""
    tiles = plan.tile_list()

    def cog(kind: str) -> None:
        name, dtype, nodata, resampling = (
            (CHANGE_MASK, "uint8", int(MaskValue.NODATA), "nearest") if kind == "mask"
            else (CHANGE_SCORE, "float32", math.nan, "average"))
        parts = [(t, _mask_part(plan, t.tile_id) if kind == "mask"
                  else plan.part("score", t.tile_id)) for t in tiles]
        assemble_cog(parts, plan.output_grid, tmp[name], dtype=dtype, nodata=nodata,
                     resampling=resampling)

    with cog_settings():
        ordered_map(cog, ["mask", "score"], available_cpus())


def _regions(plan: Plan) -> Regions:
    return extract_regions(
        plan.tile_list(),
        lambda t: (read_part(_mask_part(plan, t.tile_id)),  # type: ignore[arg-type,return-value]
                   read_part(plan.part("score", t.tile_id))),
        plan.output_grid)


def _counts(plan: Plan, stats: list[TileStats], regions: Regions, removed: int) -> dict[str, Any]:
    n_valid = sum(s.n_valid for s in stats)
    n_changed = sum(s.n_changed for s in stats)
    px_area = plan.grid.pixel_area_m2
    return {
        "valid_px": n_valid,
        "changed_px": n_changed,
        "changed_fraction": n_changed / n_valid if n_valid else 0.0,
        "changed_area_m2": _nan_to_none(n_changed * px_area) if px_area else None,
        "regions": len(regions),
        "tiles": len(plan.tiles),
        "tiles_changed": sum(1 for s in stats if s.n_changed > 0),
        "removed_by_min_region_px": removed,
    }


def _resumed(plan: Plan) -> dict[str, Any]:
    """What this run reused of an interrupted run with the same id (run.json ``resume``)."""
    if not plan.resume_path.exists():
        return {"attempt": 1, "fit_reused": False, "tiles_reused": 0}
    record: ResumeRecord = ResumeRecord.load(plan.resume_path)
    return record.model_dump()


def _manifest(plan: Plan, fit: FitRecord, counts: dict[str, Any],
              timings: dict[str, float]) -> dict[str, Any]:
    """The run.json document."""
    cfg = plan.config
    method, scorer = cfg.resolved_method()
    return {
        "run_id": plan.run_id,
        "created": plan.created,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "parameters": cfg.model_dump(mode="json"),
        "method": method,
        "scorer": scorer,
        "inputs": plan.inputs,
        "bands": plan.bands,
        "alignment": plan.alignment,
        "coregistration": plan.coregistration.model_dump(mode="json"),
        "warnings": plan.warnings,
        "grid": plan.grid.model_dump(mode="json"),
        "tiling": {"tile_size": cfg.tile_size, "halo": plan.halo, "tiles": len(plan.tiles)},
        "postprocess": {**cfg.postprocess.model_dump(),
                        "min_region_px_effective": plan.min_region_px},
        "preprocess": cfg.preprocess.model_dump(),
        "device": fit.features["device"],
        "features": fit.features,
        "threshold": fit.threshold.model_dump(mode="json"),
        "fitted_preprocess": fit.fitted_preprocess,
        "sample": fit.sample,
        "counts": counts,
        "timings": timings,
        "resume": _resumed(plan),
        "versions": {**library_versions(), "code": code_version()},
        "outputs": {name: name for name in OUTPUT_NAMES},
    }


def finalise_detection(plan_path: PathLike, *, started: float | None = None) -> dict[str, Any]:
    """Stage 4: assemble COGs, vectorise regions, write tables and run.json, then publish.

    Args:
        plan_path: Path returned by :func:`~microchange.pipeline.plan_detection`, after every
            tile was scored.
        started: ``time.time()`` when the run started, for the total in run.json.

    Returns:
        A small summary: output paths, counts, threshold and seconds.

    Raises:
        MicrochangeError: If tiles are missing (not every tile was scored).
    """
    t0 = time.perf_counter()
    plan = Plan.load(plan_path)
    ids = [t[0] for t in plan.tiles]
    missing = [i for i in ids if not plan.part("tile", i).exists()]
    if missing:
        raise MicrochangeError(f"{len(missing)} tile(s) not scored yet (e.g. {missing[:5]}): "
                               "run score_tiles for every tile before finalising")
    out = Path(plan.out)
    tmp = staged_outputs(plan.staging)
    try:
        with writing_outputs(out, plan.staging):
            summary = _finalise(plan, tmp, ids, t0, started)
    except BaseException:
        if not (plan.staging / JOURNAL).exists():  # not published yet: drop the partial files
            for path in tmp.values():
                path.unlink(missing_ok=True)
        raise  # once published halfway, the next run in OUT completes the publish
    remove_staging(plan.staging)
    return summary


def _finalise(plan: Plan, tmp: dict[str, Path], ids: list[int], t0: float,
              started: float | None) -> dict[str, Any]:
    """Write every output complete into the staging folder, then publish them into OUT."""
    out = Path(plan.out)
    # an earlier attempt's publish cut short: finish it before its staged files are rewritten
    complete_publish(out, keep=plan.run_id)
    tmp[RUN_MANIFEST].parent.mkdir(exist_ok=True)
    stats = {i: TileStats.load(plan.part("tile", i)) for i in ids}
    _clear_kept(plan)
    removed = _remove_small(plan, stats)
    _write_cogs(plan, tmp)
    t_cog = time.perf_counter()
    stats_list = [stats[i] for i in ids]
    regions = _regions(plan)
    write_tiles_table(tmp[TILES_TABLE], plan, stats_list)
    write_changes_table(tmp[CHANGES_TABLE], plan, regions)
    t_vec = time.perf_counter()
    fit = FitRecord.load(plan.fit_path)
    timings = {**plan.timings, "fit_s": fit.fit_s, "cog_s": round(t_cog - t0, 3),
               "vectorise_s": round(t_vec - t_cog, 3)}
    if started is not None:
        timings["total_s"] = round(time.time() - started, 3)
    counts = _counts(plan, stats_list, regions, removed)
    write_json_atomic(tmp[RUN_MANIFEST], _manifest(plan, fit, counts, timings))
    publish_outputs(plan.staging, out, plan.run_id)  # run.json last: marks a complete run
    return {"out": str(out), "run_id": plan.run_id, "counts": counts,
            "threshold": fit.threshold.model_dump(mode="json"), "timings": timings,
            "outputs": {n: str(out / n) for n in OUTPUT_NAMES}}
