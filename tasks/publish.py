"""Tasks that publish what a run found as Prefect artifacts.

Artifacts show on the run page and, under a stable key per area, as a history on the Artifacts
page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from microchange.evaluation.summary import artifact_key, run_summary_markdown


@task(name="publish-run-summary")
def publish_run_summary(out: str, area: str) -> str:
    """Publish the run's summary with its quicklook. See microchange.evaluation.summary."""
    key = artifact_key(area)
    create_markdown_artifact(run_summary_markdown(out, title=area), key=key,
                             description=f"Changes found in {area} ({out})")
    return key


@task(name="publish-report-link")
def publish_report_link(report: str, area: str) -> str:
    """Publish a link to the run's HTML report."""
    key = artifact_key(area, "report")
    create_link_artifact(Path(report).resolve().as_uri(), link_text=f"report of {area}", key=key,
                         description=f"Evaluation report of {area}")
    return key


@task(name="publish-table")
def publish_table(rows: list[dict[str, Any]], name: str, description: str) -> str:
    """Publish a table (e.g. the catalog's pairs) under the key ``catalog-<name>``."""
    key = artifact_key(name, "catalog")
    create_table_artifact(rows, key=key, description=description)
    return key
