"""Tasks of the detect-changes flow (see microchange.pipeline for what each stage does)."""

from __future__ import annotations

from typing import Any

from prefect import task

from microchange import pipeline
from microchange.config import DetectConfig
from microchange.features.devices import sharing_cpus
from microchange.parallel import available_cpus, cluster_client
from microchange.tasks.retry import IO_RETRIES


@task(name="plan-tiles", **IO_RETRIES)
def plan_tiles(before: str, after: str, out: str, config: DetectConfig) -> str:
    """Check the inputs and plan the tile grid. See microchange.pipeline.plan_detection."""
    return pipeline.plan_detection(before, after, out, config)


@task(name="fit-on-sample")
def fit_on_sample(plan: str) -> str:
    """Fit detector and threshold on the global sample. See pipeline.fit_detection.

    On a Dask task runner the sample is read and reduced on the whole cluster.
    """
    with cluster_client() as client:
        return pipeline.fit_detection(plan, client=client)


@task(name="score-tiles", **IO_RETRIES)
def score_tiles(plan: str, tile_ids: list[int]) -> list[int]:
    """Score and write one batch of tiles. See microchange.pipeline.score_tiles.

    Batches run side by side, one per CPU, so torch gets one CPU thread per batch.
    """
    with sharing_cpus(available_cpus()):
        return pipeline.score_tiles(plan, tile_ids)


@task(name="finalise-outputs", **IO_RETRIES)
def finalise_outputs(plan: str, started: float) -> dict[str, Any]:
    """Assemble COGs, tables and run.json. See microchange.pipeline.finalise_detection."""
    return pipeline.finalise_detection(plan, started=started)
