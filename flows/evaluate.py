"""Flow ``evaluate-changes``: one detection run folder + a ground truth -> metrics.json, report."""

from pathlib import Path
from typing import Any

from prefect import flow

from microchange.io.outdir import check_output_path
from microchange.tasks.evaluate import evaluate_run, write_report
from microchange.tasks.publish import publish_report_link
from microchange.types import METRICS_NAME

_SUMMARY_KEYS = ("precision", "recall", "f1", "iou", "oa", "kappa", "pr_auc", "roc_auc",
                 "tp", "fp", "fn", "tn", "n_labelled", "n_ignored", "n_nodata",
                 "object_recall", "threshold")


@flow(name="evaluate-changes", log_prints=True)
def evaluate_changes(
    out: str,
    truth: str,
    changed_values: list[int] = [255],  # noqa: B006 - Prefect copies parameter defaults
    ignore_values: list[int] = [],  # noqa: B006
    unchanged_values: list[int] | None = None,
    truth_threshold: float | None = None,
    report: bool = True,
    area: str | None = None,
) -> dict[str, Any]:
    """Score a detection run against a ground truth and write metrics.json and report.html.

    Reads the run's change_mask.tif and change_score.tif block by block with the truth; writes
    ``out/metrics.json`` (confusion counts, precision, recall, F1, IoU, kappa, PR-AUC, ROC-AUC,
    object recall by size) and ``out/report.html`` with its figures in ``out/report/``.

    Args:
        out: Output folder of a finished detect-changes run (holds change_mask.tif); inside
            ``$MICROCHANGE_OUTPUT_ROOT`` when the worker sets it.
        truth: Path of the ground-truth raster (any GDAL format), same height and width as the
            change mask.
        changed_values: Truth pixel values meaning "changed" (unused with truth_threshold).
        ignore_values: Truth pixel values excluded from scoring (unknown class).
        unchanged_values: Truth values meaning "unchanged"; empty (None) means every value
            that is neither changed nor ignored. When given, other values are not scored
            (sparse truth).
        truth_threshold: If set, truth pixels greater than this value are changed and all
            others unchanged (for lossy JPEG masks), instead of changed_values.
        report: Write report.html and its figures.
        area: Name of the area of interest: the key of the report's link artifact (default:
            the run folder's name).

    Returns:
        The headline metrics (precision, recall, f1, iou, oa, kappa, pr_auc, roc_auc, the
        confusion counts, object_recall, threshold) and the paths ``metrics`` and ``report``.
    """
    check_output_path(out)
    metrics = evaluate_run(out, truth, changed_values, ignore_values, unchanged_values,
                           truth_threshold)
    written = write_report(out, metrics) if report else None
    summary = {key: metrics[key] for key in _SUMMARY_KEYS if key in metrics}
    summary["metrics"] = str(Path(out) / METRICS_NAME)
    summary["report"] = written
    if written is not None:
        publish_report_link(written, area or Path(out).resolve().name)
    print(f"precision {metrics['precision']:.3f}, recall {metrics['recall']:.3f}, "
          f"F1 {metrics['f1']:.3f}; report: {written}")
    return summary
