"""Flow ``detect-changes``: one BEFORE/AFTER pair -> change mask, scores, tables, run.json."""

import time
from typing import Any

from prefect import flow, unmapped

from microchange.config import DetectConfig
from microchange.pipeline import discard_run, tile_batches
from tasks.detect import finalise_outputs, fit_on_sample, plan_tiles, score_tiles


@flow(name="detect-changes", log_prints=True)
def detect_changes(
    before: str,
    after: str,
    out: str,
    config: DetectConfig = DetectConfig(),  # noqa: B008 - frozen pydantic model
) -> dict[str, Any]:
    """Detect small changes between two rasters of the same place.

    Writes change_mask.tif and change_score.tif (COGs on BEFORE's grid), tiles.parquet and
    changes.parquet (GeoParquet) and run.json into ``out``. Outputs of an earlier run in ``out``
    are replaced only when every new output is complete.

    Args:
        before: Path of the raster at t0 (GeoTIFF/COG, ENVI, PNG...); defines the output grid.
        after: Path of the raster at t1; resampled onto BEFORE's grid if its grid differs.
        out: Output folder (created if missing).
        config: Detection parameters: method, sensor family, threshold, tile size, bands.

    Returns:
        Summary with output paths, counts, the threshold and timings.
    """
    started = time.time()
    plan = plan_tiles(before, after, out, config)
    try:
        fit_on_sample(plan)
        batches = tile_batches(plan)
        scored = score_tiles.map(unmapped(plan), batches)
        scored.result()
        summary: dict[str, Any] = finalise_outputs(plan, started)
    except BaseException:
        discard_run(plan)
        raise
    print(f"outputs in {summary['out']}: {summary['counts']}")
    return summary
