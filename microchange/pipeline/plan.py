"""Stage 1: check both inputs, decide the co-registration, plan the tiles (``plan.json``)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from microchange.config import DetectConfig, PostprocessConfig
from microchange.detector import build_detector
from microchange.errors import InputError, OutputError
from microchange.io.datasets import input_path
from microchange.io.manifest import code_version, file_fingerprint, run_fingerprint
from microchange.io.outdir import check_output_path, writing_outputs
from microchange.io.pair import PairReader
from microchange.io.publish import complete_publish
from microchange.io.vrt import BandSource
from microchange.pipeline.records import GridRecord, Plan, ResumeRecord
from microchange.preprocess.alignment import estimate_coregistration
from microchange.tiling import plan_tiles
from microchange.types import STAGING_DIR, PathLike

__all__ = ("plan_detection",)

log = logging.getLogger("microchange")


def _input_info(path: PathLike, ds: Any, fingerprints: dict[str, Any],
                bands: Sequence[BandSource] | None) -> dict[str, Any]:
    """What run.json records of one input: its dataset, its files and, for a stack, its bands."""
    info: dict[str, Any] = {
        "path": input_path(path),
        "width": ds.width,
        "height": ds.height,
        "count": ds.count,
        "dtype": ds.dtypes[0],
        "driver": ds.driver,
        "crs": ds.crs.to_string() if ds.crs else None,
        "nodata": ds.nodata,
        "files": [fingerprints[f] for f in ds.files],
    }
    if bands is not None:  # a stack of single-band files: which file each band came from
        info["bands"] = [b.as_dict() for b in bands]
    return info


def _min_region_px(post: PostprocessConfig, pixel_area: float, before: PathLike) -> int:
    """The minimum mapping unit in pixels (from square metres on a georeferenced grid)."""
    if post.min_region_m2 is None:
        return post.min_region_px or 1
    if not math.isfinite(pixel_area):
        raise InputError(f"min_region_m2={post.min_region_m2!r} needs a georeferenced grid but "
                         f"{str(before)!r} has none: use min_region_px instead")
    return max(1, math.ceil(post.min_region_m2 / pixel_area))


def _run_key(config: DetectConfig, inputs: dict[str, Any], bands: Sequence[int]) -> str:
    """The run id: a digest of the input checksums, the parameters and the code version.

    The same inputs and parameters give the same id, so a run started again after a crash finds
    the staging folder of the interrupted one and reuses what it finished.
    """
    def files(role: str) -> list[Any]:
        info = inputs[role]
        return [[f["sha256"], f["bytes"]] for f in info["files"]] + [info.get("bands")]

    masks = {k: v["sha256"] for k, v in inputs.get("masks", {}).items()}
    return run_fingerprint({"paths": [inputs["before"]["path"], inputs["after"]["path"]],
                            "before": files("before"), "after": files("after"), "masks": masks,
                            "bands": list(bands), "config": config.model_dump(mode="json"),
                            "code": code_version()})


def _staging(out_dir: Path, run_id: str) -> Path:
    """Create the staging folder of a run (or find that of an interrupted one).

    First finishes a publish that a killed run left halfway in ``out_dir``
    (:func:`~microchange.io.publish.complete_publish`).
    """
    staging = out_dir / STAGING_DIR / run_id
    try:
        with writing_outputs(out_dir):
            (staging / "parts").mkdir(parents=True, exist_ok=True)
            for done in complete_publish(out_dir, keep=run_id):
                log.warning("completed the publish of run %s in %s (interrupted earlier)", done,
                            out_dir)
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"cannot create output folder {str(out_dir)!r} ({exc}): choose a "
                          "writable --out") from exc
    return staging


def _resume(path: Path) -> str | None:
    """The plan of an interrupted run with the same id, if one is there and readable.

    Records how much of it was done (``resume.json``), for run.json and the logs.
    """
    try:
        plan = Plan.load(path)
    except (OSError, ValueError):
        return None  # no plan yet, or a damaged one: plan again
    done = sum(1 for t in plan.tiles if plan.part("tile", t[0]).exists())
    fitted = plan.fit_path.exists()
    previous = ResumeRecord.load(plan.resume_path) if plan.resume_path.exists() else None
    ResumeRecord(attempt=(previous.attempt if previous else 1) + 1, fit_reused=fitted,
                 tiles_reused=done).save(plan.resume_path)
    log.info("resuming run %s: %s, %d of %d tiles already scored", plan.run_id,
             "detector already fitted" if fitted else "detector not fitted yet", done,
             len(plan.tiles))
    return str(path)


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
            which and how to fix it): ``OutputRootError`` if ``out`` lies outside
            ``$MICROCHANGE_OUTPUT_ROOT``, ``OutputNotWritableError`` if it cannot be written.
        DiskFullError: If the disk of ``out`` is full (the staging folder is kept).
    """
    t0 = time.perf_counter()
    out_dir = check_output_path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {str(out)!r} is a file: give a folder for the outputs")
    detector = build_detector(config)  # a bad method option fails before any I/O
    with (PairReader(before, after, bands=config.bands, masks=config.masks) as pair,
          ThreadPoolExecutor(1) as hasher):
        src_b, src_a = pair.source("before"), pair.source("after")
        files = [*src_b.files, *src_a.files, *pair.mask_files.values()]
        # checksums while the co-registration runs (hashlib releases the GIL)
        hashed = hasher.submit(lambda: {f: file_fingerprint(f) for f in files})
        coreg = estimate_coregistration(pair, config.preprocess, seed=config.seed)
        grid, fingerprints = pair.grid, hashed.result()
        inputs = {"before": _input_info(before, src_b, fingerprints, pair.sources["before"]),
                  "after": _input_info(after, src_a, fingerprints, pair.sources["after"])}
        if pair.mask_files:
            inputs["masks"] = {k: fingerprints[v] for k, v in pair.mask_files.items()}
        alignment, warnings, bands = pair.alignment, list(pair.warnings), pair.bands
        pixel_area = pair.pixel_area_m2()
    for w in warnings:
        log.warning(w)
    post = config.postprocess
    min_region_px = _min_region_px(post, pixel_area, before)
    halo = detector.halo + post.halo
    tiles = plan_tiles(grid.height, grid.width, tile_size=config.tile_size, halo=halo)
    run_id = _run_key(config, inputs, bands)
    staging = _staging(out_dir, run_id)
    with writing_outputs(out_dir, staging):
        resumed = _resume(staging / "plan.json")
    if resumed is not None:
        return resumed
    plan = Plan(
        run_id=run_id, created=datetime.now(UTC).isoformat(timespec="seconds"),
        before=input_path(before), after=input_path(after),
        out=str(out_dir.resolve()), config=config, bands=list(bands),
        grid=GridRecord(height=grid.height, width=grid.width, transform=grid.transform,
                        crs_wkt=grid.crs_wkt,
                        pixel_area_m2=pixel_area if math.isfinite(pixel_area) else None),
        alignment=alignment, coregistration=coreg, warnings=warnings, halo=halo,
        post_halo=post.halo, min_region_px=min_region_px,
        tiles=[(t.tile_id, t.row_off, t.col_off, t.height, t.width) for t in tiles],
        inputs=inputs, timings={"plan_s": round(time.perf_counter() - t0, 3)})
    path = staging / "plan.json"
    with writing_outputs(out_dir, staging):
        plan.save(path)
    log.info("planned %d tiles of %d px (halo %d) on a %dx%d grid", len(tiles),
             config.tile_size, halo, grid.height, grid.width)
    return str(path)
