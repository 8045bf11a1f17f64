"""Flow ``detect-changes``: one BEFORE/AFTER pair -> change mask, scores, tables, run.json."""

import time
from pathlib import Path
from typing import Any

from prefect import Flow, flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from microchange.config import DetectConfig
from microchange.errors import InputError
from microchange.flows.runners import dask_task_runner, gpu_annotation, task_slots
from microchange.io.outdir import check_output_path
from microchange.parallel import available_cpus
from microchange.pipeline import discard_run, tile_batches
from microchange.pipeline.score import TASKS_PER_SLOT
from microchange.tasks.detect import finalise_outputs, fit_on_sample, plan_tiles, score_tiles
from microchange.tasks.publish import publish_run_summary


@flow(name="detect-changes", log_prints=True,
      # one tile batch per CPU at a time: Prefect's default pool is unbounded (every batch in
      # memory at once)
      task_runner=ThreadPoolTaskRunner(max_workers=available_cpus()))  # type: ignore[arg-type]
def detect_changes(
    before: str,
    after: str,
    out: str,
    config: DetectConfig | None = None,
    area: str | None = None,
) -> dict[str, Any]:
    """Detect small changes between two rasters of the same place.

    Writes change_mask.tif and change_score.tif (COGs on BEFORE's grid), tiles.parquet and
    changes.parquet (GeoParquet) and run.json into ``out``. Outputs of an earlier run in ``out``
    are replaced only when every new output is complete. A run interrupted before (killed,
    crashed) with the same inputs and parameters is resumed: its fit and finished tiles are
    reused. The run page shows a summary of what was found, with a quicklook.

    Args:
        before: Path of the raster at t0 (GeoTIFF/COG, ENVI, PNG...); defines the output grid.
        after: Path of the raster at t1; resampled onto BEFORE's grid if its grid differs.
        out: Output folder (created if missing); inside ``$MICROCHANGE_OUTPUT_ROOT`` when the
            worker sets it.
        config: Detection parameters (method, sensor family, threshold, tile size, bands,
            preprocessing...); fields left out take the sensor family's defaults, and no
            config at all runs the optical defaults.
        area: Name of the area of interest: the key of the run's summary artifact, so that the
            Artifacts page shows the history of an area (default: the output folder's name).

    Returns:
        Summary with output paths, counts, the threshold and timings.
    """
    started = time.time()
    check_output_path(out)  # bad input: fails before any task (and is never retried)
    config = config or DetectConfig()
    plan = plan_tiles(before, after, out, config)
    try:
        with gpu_annotation(config):  # deep tasks hold a worker's GPU, one task at a time
            fitted = fit_on_sample.submit(plan)  # on a Dask worker: the fit uses the cluster
        fitted.result()
        # a few tasks per slot, not one per batch: each task costs the orchestrator a fixed
        # overhead (~0.1-0.2 s on Dask), and a task lost with a worker skips its finished tiles
        batches = tile_batches(plan, groups=TASKS_PER_SLOT * task_slots())
        with gpu_annotation(config):
            scored = score_tiles.map(unmapped(plan), batches)
        scored.result()
        summary: dict[str, Any] = finalise_outputs(plan, started)
    except InputError:  # bad input: nothing to resume; any other failure keeps the staging
        discard_run(plan)
        raise
    summary["artifact"] = publish_run_summary(summary["out"], area or Path(out).resolve().name)
    c = summary["counts"]
    print(f"{c['changed_px']:,} changed px ({100 * c['changed_fraction']:.3f} %), "
          f"{c['regions']:,} regions; outputs in {summary['out']}")
    return summary


def detect_changes_on_dask(
    address: str | None = None, workers: int | None = None
) -> "Flow[..., dict[str, Any]]":
    """The detect-changes flow with its tile batches scored on Dask.

    Args:
        address: Scheduler of an existing ``distributed`` cluster; None starts a LocalCluster.
        workers: Worker processes of the LocalCluster (default: one per CPU).

    Returns:
        The flow, ready to call with the same parameters as :func:`detect_changes`.
    """
    return detect_changes.with_options(task_runner=dask_task_runner(address, workers))


detect_changes_dask = detect_changes.with_options(task_runner=dask_task_runner())
"""Entry point for deployments: Dask LocalCluster, or ``$MICROCHANGE_DASK_ADDRESS`` if set."""
