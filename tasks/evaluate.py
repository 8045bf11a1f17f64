"""Tasks of the evaluate-changes flow (see microchange.evaluation)."""

from __future__ import annotations

from typing import Any

from prefect import task

from microchange import evaluation
from microchange.tasks.retry import IO_RETRIES


@task(name="evaluate-run", **IO_RETRIES)
def evaluate_run(
    out: str,
    truth: str,
    changed_values: list[int],
    ignore_values: list[int],
    unchanged_values: list[int] | None,
    truth_threshold: float | None,
) -> dict[str, Any]:
    """Score a run folder and write metrics.json. See microchange.evaluation.evaluate_run."""
    return evaluation.evaluate_run(
        out,
        truth,
        changed_values=changed_values,
        ignore_values=ignore_values,
        unchanged_values=unchanged_values,
        truth_threshold=truth_threshold,
    )


@task(name="write-report", **IO_RETRIES)
def write_report(out: str, metrics: dict[str, Any] | None) -> str:
    """Write report.html and its figures. See microchange.evaluation.write_report."""
    return str(evaluation.write_report(out, metrics))
