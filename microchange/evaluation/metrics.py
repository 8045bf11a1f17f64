"""Accuracy of a change mask against a ground truth: confusion, ranking and object metrics.

A change mask holds :class:`~microchange.types.MaskValue` codes (1 changed, 0 unchanged, 255
nodata, not scored). :func:`decode_truth` turns raw truth values into "changed" and "labelled"
booleans from the values a benchmark documents (changed values, ignored values, an optional list
of unchanged values for sparse truth, or a threshold for lossy JPEG masks). Only pixels labelled
in the truth *and* valid in the mask are scored. Metrics follow the usual binary definitions with
"changed" as the positive class; every ratio whose denominator is 0 is 0.0. Arrays in, numbers
out: :mod:`~microchange.evaluation.run` reads the rasters block by block and sums these.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components

from microchange.errors import InputError
from microchange.types import MaskValue

__all__ = (
    "SIZE_CLASSES",
    "Confusion",
    "MaskCounter",
    "ObjectCounter",
    "check_mask_values",
    "confusion_from_arrays",
    "decode_truth",
    "metrics_from_confusion",
    "object_recall",
    "ranking_metrics",
)

#: Object size classes of :func:`object_recall`: name, smallest and largest size in pixels.
SIZE_CLASSES: tuple[tuple[str, int, float], ...] = (
    ("lt25", 1, 24),
    ("25to100", 25, 100),
    ("gt100", 101, math.inf),
)
_MASK_VALUES = tuple(int(v) for v in MaskValue)
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity
_CURVE_POINTS = 200


@dataclass(frozen=True)
class Confusion:
    """Binary confusion matrix with "changed" as the positive class.

    Attributes:
        tp: Changed in truth, changed in the prediction.
        fp: Unchanged in truth, changed in the prediction.
        fn: Changed in truth, unchanged in the prediction.
        tn: Unchanged in truth, unchanged in the prediction.
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    @property
    def total(self) -> int:
        """Number of scored pixels."""
        return self.tp + self.fp + self.fn + self.tn

    def __add__(self, other: Confusion) -> Confusion:
        if not isinstance(other, Confusion):
            return NotImplemented
        return Confusion(
            tp=self.tp + other.tp,
            fp=self.fp + other.fp,
            fn=self.fn + other.fn,
            tn=self.tn + other.tn,
        )


def confusion_from_arrays(
    pred: NDArray[np.uint8] | NDArray[np.bool_],
    truth_changed: NDArray[np.bool_],
    labelled: NDArray[np.bool_],
) -> Confusion:
    """Confusion matrix of a predicted change mask over the labelled pixels.

    Args:
        pred: (H, W) prediction. Boolean: True = changed. Integer: 1 = changed, 0 = unchanged,
            255 = nodata (excluded from the counts, whatever ``labelled`` says).
        truth_changed: (H, W) bool, True where the truth says changed.
        labelled: (H, W) bool, True where the truth is known and the pixel must be scored.

    Returns:
        The counts over pixels that are labelled and not nodata in ``pred``.

    Raises:
        InputError: If the shapes differ, or an integer ``pred`` holds a value other than
            0, 1 and 255.
    """
    pred_arr: NDArray[Any] = np.asarray(pred)
    truth_changed = np.asarray(truth_changed, dtype=bool)
    labelled = np.asarray(labelled, dtype=bool)
    if not (pred_arr.shape == truth_changed.shape == labelled.shape):
        raise InputError(
            f"pred {pred_arr.shape}, truth_changed {truth_changed.shape} and labelled "
            f"{labelled.shape} must have the same shape"
        )
    if pred_arr.dtype == np.bool_:
        pred_changed = pred_arr
        scored = labelled
    else:
        check_mask_values(pred_arr, "pred")
        pred_changed = pred_arr == MaskValue.CHANGED
        scored = labelled & (pred_arr != MaskValue.NODATA)
    n = int(np.count_nonzero(scored))
    pred_pos = pred_changed & scored
    truth_pos = truth_changed & scored
    tp = int(np.count_nonzero(pred_pos & truth_pos))
    fp = int(np.count_nonzero(pred_pos)) - tp
    fn = int(np.count_nonzero(truth_pos)) - tp
    return Confusion(tp=tp, fp=fp, fn=fn, tn=n - tp - fp - fn)


def _ratio(num: int, den: int) -> float:
    return float(num) / float(den) if den else 0.0


def metrics_from_confusion(c: Confusion) -> dict[str, float | int]:
    """Accuracy metrics of a confusion matrix ("changed" is the positive class).

    ``precision = tp / (tp + fp)``, ``recall = tp / (tp + fn)``,
    ``f1 = 2 tp / (2 tp + fp + fn)``, ``iou = tp / (tp + fp + fn)``,
    ``oa = (tp + tn) / n`` and Cohen's ``kappa = (oa - pe) / (1 - pe)`` with the chance agreement
    ``pe = ((tp + fp)(tp + fn) + (fn + tn)(fp + tn)) / n**2``, computed exactly from integers as
    ``2 (tp tn - fn fp) / ((tp + fp)(fp + tn) + (tp + fn)(fn + tn))``.

    Every ratio whose denominator is 0 is 0.0: precision when nothing is predicted changed,
    recall when nothing is changed in truth, f1 and iou when both are empty, oa on an empty
    matrix, and kappa when ``pe == 1`` (prediction and truth each hold a single class, the same
    one), where Cohen's kappa is undefined.

    Args:
        c: The confusion matrix.

    Returns:
        Keys ``tp``, ``fp``, ``fn``, ``tn`` (int) and ``precision``, ``recall``, ``f1``,
        ``iou``, ``oa``, ``kappa`` (float; kappa in [-1, 1], the others in [0, 1]).
    """
    tp, fp, fn, tn = c.tp, c.fp, c.fn, c.tn
    kappa_den = (tp + fp) * (fp + tn) + (tp + fn) * (fn + tn)
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "oa": _ratio(tp + tn, c.total),
        "kappa": _ratio(2 * (tp * tn - fn * fp), kappa_den),
    }


def decode_truth(
    truth: NDArray[Any],
    *,
    changed_values: Iterable[int] = (255,),
    ignore_values: Iterable[int] = (),
    unchanged_values: Iterable[int] | None = None,
    truth_threshold: float | None = None,
) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Turn raw truth values into "changed" and "labelled" masks.

    Args:
        truth: (H, W) raw truth values, any numeric dtype.
        changed_values: Values meaning changed; unused when ``truth_threshold`` is given.
        ignore_values: Values excluded from scoring (unknown class). They win over the others.
        unchanged_values: Values meaning unchanged. None: every value not ignored is labelled
            (and unchanged unless changed). Given: only ``changed_values`` and
            ``unchanged_values`` are labelled (sparse truth), the rest is excluded.
        truth_threshold: If given, changed is ``truth > truth_threshold`` (e.g. 128 for a lossy
            JPEG mask) instead of membership in ``changed_values``.

    Returns:
        ``(changed, labelled)``, two (H, W) bool arrays; ``changed`` is False where not
        labelled.
    """
    truth = np.asarray(truth)
    changed_set = _as_values(changed_values)
    if truth_threshold is not None:
        changed = truth > truth_threshold
    else:
        changed = np.isin(truth, changed_set)
    labelled = ~np.isin(truth, _as_values(ignore_values))
    if unchanged_values is not None:
        listed = np.concatenate([changed_set, _as_values(unchanged_values)])
        labelled &= np.isin(truth, listed)
    return changed & labelled, labelled


def ranking_metrics(
    pos_counts: NDArray[np.integer[Any]],
    neg_counts: NDArray[np.integer[Any]],
    edges: NDArray[np.floating[Any]],
    *,
    max_points: int = _CURVE_POINTS,
) -> dict[str, Any]:
    """ROC AUC, average precision and the PR curve from per-class score histograms.

    Every non-empty bin is one threshold: "changed" when the score is >= the bin's lower edge;
    pixels in one bin are ties. ``roc_auc`` is the trapezoidal area under (FPR, TPR), which
    counts ties as half, like scikit-learn's ``roc_auc_score``; ``pr_auc`` is the average
    precision ``sum_k (R_k - R_{k-1}) P_k`` over decreasing thresholds, like
    ``average_precision_score``. Both are exact when no bin mixes distinct scores, and otherwise
    exact for the scores rounded to their bin.

    Args:
        pos_counts: (B,) counts of changed (positive) pixels per bin, in increasing score order.
        neg_counts: (B,) counts of unchanged pixels per bin.
        edges: (B + 1,) bin edges in score units, increasing.
        max_points: Most points kept on the PR curve (evenly spaced over the thresholds, the
            first and last always kept).

    Returns:
        ``roc_auc`` (None unless both classes are present), ``pr_auc`` (None without positives),
        ``best_f1`` and ``best_f1_threshold`` (the F1 of the best single score threshold, with
        the truth known: what the scores allow, whatever the threshold rule; None without
        positives) and ``pr_curve``: lists ``recall``, ``precision`` and ``threshold`` by decreasing
        threshold (empty without positives).

    Raises:
        InputError: If the shapes do not match or ``max_points`` < 2.
    """
    pos = np.asarray(pos_counts, dtype=np.int64)
    neg = np.asarray(neg_counts, dtype=np.int64)
    edges = np.asarray(edges, dtype=np.float64)
    if pos.ndim != 1 or pos.shape != neg.shape or edges.shape != (pos.size + 1,):
        raise InputError(f"pos_counts {pos.shape} and neg_counts {neg.shape} must be (B,) and "
                         f"edges {edges.shape} (B + 1,)")
    if max_points < 2:
        raise InputError(f"max_points must be >= 2, got {max_points!r}")
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    result: dict[str, Any] = {"roc_auc": None, "pr_auc": None, "best_f1": None,
                              "best_f1_threshold": None,
                              "pr_curve": {"recall": [], "precision": [], "threshold": []}}
    if n_pos == 0:
        return result
    order = np.flatnonzero(pos + neg)[::-1]  # non-empty bins, decreasing score
    tps = np.cumsum(pos[order]).astype(np.float64)
    fps = np.cumsum(neg[order]).astype(np.float64)
    recall = tps / n_pos
    precision = tps / (tps + fps)
    result["pr_auc"] = float(np.sum(np.diff(recall, prepend=0.0) * precision))
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-300)
    best = int(np.argmax(f1))
    result["best_f1"] = float(f1[best])
    result["best_f1_threshold"] = float(edges[order[best]])
    if n_neg:
        tpr = np.concatenate([[0.0], recall])
        fpr = np.concatenate([[0.0], fps / n_neg])
        result["roc_auc"] = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    keep = np.unique(np.linspace(0, order.size - 1, min(order.size, max_points)).round()
                     .astype(np.int64))
    result["pr_curve"] = {"recall": recall[keep].tolist(), "precision": precision[keep].tolist(),
                          "threshold": edges[order[keep]].tolist()}
    return result


def object_recall(sizes: NDArray[np.integer[Any]], detected: NDArray[np.bool_]) -> dict[str, Any]:
    """Share of truth objects hit by the prediction, overall and by size class.

    Size classes (:data:`SIZE_CLASSES`): ``lt25`` (< 25 px), ``25to100`` (25 to 100 px) and
    ``gt100`` (> 100 px). A recall with no object is 0.0, like every ratio of this module.

    Args:
        sizes: (N,) pixels of each truth object (connected component).
        detected: (N,) bool, True where the object overlaps at least one changed mask pixel.

    Returns:
        ``overall`` (recall), ``n_objects``, ``n_detected``, ``connectivity`` (8) and
        ``by_size``: per class name, ``recall``, ``n_objects`` and ``n_detected``.

    Raises:
        InputError: If the shapes differ.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    detected = np.asarray(detected, dtype=bool)
    if sizes.shape != detected.shape or sizes.ndim != 1:
        raise InputError(f"sizes {sizes.shape} and detected {detected.shape} must be equal (N,)")
    by_size: dict[str, dict[str, float | int]] = {}
    for name, smallest, largest in SIZE_CLASSES:
        sel = (sizes >= smallest) & (sizes <= largest)
        n, hit = int(np.count_nonzero(sel)), int(np.count_nonzero(detected & sel))
        by_size[name] = {"recall": _ratio(hit, n), "n_objects": n, "n_detected": hit}
    n_hit = int(np.count_nonzero(detected))
    return {"overall": _ratio(n_hit, sizes.size), "n_objects": int(sizes.size),
            "n_detected": n_hit, "connectivity": 8, "by_size": by_size}


def _as_values(values: Iterable[int]) -> NDArray[np.int64]:
    return np.asarray(tuple(values), dtype=np.int64)


def check_mask_values(mask: NDArray[Any], what: str) -> None:
    """Raise :class:`InputError` unless ``mask`` holds only mask codes (0, 1, 255)."""
    if not np.issubdtype(mask.dtype, np.integer):
        raise InputError(f"{what} has dtype {mask.dtype}: expected uint8 0/1/255 or bool")
    bad = ~np.isin(mask, _MASK_VALUES)
    if bad.any():
        values = np.unique(mask[bad])[:5].tolist()
        raise InputError(
            f"{what} holds values {values!r} (first 5): a change mask must be 1 = changed, "
            "0 = unchanged, 255 = nodata"
        )


@dataclass
class MaskCounter:
    """Sums the confusion matrix and the pixel counts of a mask over blocks of rows."""

    confusion: Confusion = Confusion()
    n_ignored: int = 0
    n_nodata: int = 0

    def add(
        self, mask: NDArray[np.uint8], changed: NDArray[np.bool_], labelled: NDArray[np.bool_]
    ) -> None:
        """Count one block: mask codes and the decoded truth of the same pixels."""
        valid = mask != MaskValue.NODATA
        self.n_ignored += int(labelled.size - np.count_nonzero(labelled))
        self.n_nodata += int(np.count_nonzero(labelled & ~valid))
        self.confusion = self.confusion + confusion_from_arrays(
            mask == MaskValue.CHANGED, changed, labelled & valid
        )

    def metrics(self) -> dict[str, float | int]:
        """:func:`metrics_from_confusion` plus ``n_labelled``, ``n_ignored``, ``n_nodata``."""
        result = metrics_from_confusion(self.confusion)
        result["n_labelled"] = self.confusion.total
        result["n_ignored"] = self.n_ignored
        result["n_nodata"] = self.n_nodata
        return result


@dataclass
class ObjectCounter:
    """Truth components (8-connectivity) labelled block by block and merged across borders.

    Each block of rows is labelled on its own; components touching across a block border
    (including diagonally) are linked, and the links are resolved at the end as a graph's
    connected components. Memory: one block, plus a size, a flag and a few links per component.
    """

    sizes: list[NDArray[np.int64]] = field(default_factory=list)
    hits: list[NDArray[np.bool_]] = field(default_factory=list)
    seen: list[NDArray[np.bool_]] = field(default_factory=list)
    links: list[NDArray[np.int64]] = field(default_factory=list)
    n: int = 0
    last_row: NDArray[np.int64] | None = None  # global ids + 1 (0 = background)

    def add(self, changed: NDArray[np.bool_], detected: NDArray[np.bool_],
            valid: NDArray[np.bool_]) -> None:
        """Label the truth's changed pixels of the next block of rows and link them upwards."""
        labels, n = ndimage.label(changed, structure=_EIGHT)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.int64)
        self.sizes.append(sizes)
        self.hits.append(np.bincount(labels[detected], minlength=n + 1)[1:] > 0)
        # nodata is rare: count it rather than the valid pixels
        self.seen.append(np.bincount(labels[~valid], minlength=n + 1)[1:] < sizes)
        first = np.where(labels[0] > 0, labels[0].astype(np.int64) + self.n, 0)
        if self.last_row is not None:
            prev = self.last_row
            for a, b in ((prev, first), (prev[1:], first[:-1]), (prev[:-1], first[1:])):
                both = (a > 0) & (b > 0)
                if both.any():
                    self.links.append(np.unique(np.stack([a[both], b[both]], axis=1), axis=0) - 1)
        self.last_row = np.where(labels[-1] > 0, labels[-1].astype(np.int64) + self.n, 0)
        self.n += n

    def summary(self) -> dict[str, Any]:
        """:func:`object_recall` of the merged components (those not wholly on nodata)."""
        sizes = np.concatenate(self.sizes) if self.sizes else np.zeros(0, np.int64)
        hits = np.concatenate(self.hits) if self.hits else np.zeros(0, bool)
        seen = np.concatenate(self.seen) if self.seen else np.zeros(0, bool)
        if self.links:
            pairs = np.concatenate(self.links)
            graph = sparse.coo_matrix(
                (np.ones(len(pairs), dtype=np.int8), (pairs[:, 0], pairs[:, 1])),
                shape=(self.n, self.n),
            )
            _, comp = connected_components(graph, directed=False)
            sizes = np.bincount(comp, weights=sizes).astype(np.int64)
            hits = np.bincount(comp, weights=hits) > 0
            seen = np.bincount(comp, weights=seen) > 0
        return object_recall(sizes[seen], hits[seen])
