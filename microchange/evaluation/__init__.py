"""Accuracy against a ground truth: metrics of arrays, the scoring of a run folder, a report."""

from microchange.evaluation.metrics import (
    Confusion,
    confusion_from_arrays,
    decode_truth,
    metrics_from_confusion,
    object_recall,
    ranking_metrics,
)
from microchange.evaluation.report import write_report
from microchange.evaluation.run import evaluate_mask, evaluate_run

__all__ = (
    "Confusion",
    "confusion_from_arrays",
    "decode_truth",
    "evaluate_mask",
    "evaluate_run",
    "metrics_from_confusion",
    "object_recall",
    "ranking_metrics",
    "write_report",
)
