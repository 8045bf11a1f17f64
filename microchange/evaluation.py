"""Accuracy of a change mask against a ground-truth raster, computed block by block.

A change mask is a uint8 raster: 1 = changed, 0 = unchanged, 255 = nodata (not scored). A truth
raster can be in any GDAL-readable format and encoding; :func:`decode_truth` turns it into
"changed" and "labelled" booleans from the values the benchmark documents (changed values,
ignored values, an optional explicit list of unchanged values for sparse truth, or a threshold
for lossy JPEG masks). Only pixels labelled in the truth *and* valid in the mask are scored.

The rasters are read in blocks of whole rows, so memory stays bounded whatever their size, and
the confusion matrices of the blocks are summed. Metrics follow the usual binary definitions
with "changed" as the positive class; every ratio whose denominator is 0 is defined as 0.0.

:func:`evaluate_run` scores a whole detection run folder: the metrics above, threshold-free
``roc_auc`` and ``pr_auc`` from the score map (streaming per-class score histograms, exact up to
the binning), object-level recall of the truth's connected components by size class, the PR
curve and score histograms for the report, all written to ``OUT_DIR/metrics.json``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.windows import Window
from scipy import ndimage, sparse
from scipy.sparse.csgraph import connected_components

from microchange.errors import BandMismatchError, GridMismatchError, InputError, OutputError
from microchange.io.manifest import read_json, write_json_atomic
from microchange.io.rasters import PathLike, open_raster

__all__ = (
    "MASK_CHANGED",
    "MASK_NODATA",
    "MASK_UNCHANGED",
    "METRICS_NAME",
    "SIZE_CLASSES",
    "Confusion",
    "confusion_from_arrays",
    "decode_truth",
    "evaluate_mask",
    "evaluate_run",
    "metrics_from_confusion",
    "object_recall",
    "ranking_metrics",
)

log = logging.getLogger(__name__)

MASK_UNCHANGED = 0
MASK_CHANGED = 1
MASK_NODATA = 255
_MASK_VALUES = (MASK_UNCHANGED, MASK_CHANGED, MASK_NODATA)

METRICS_NAME = "metrics.json"
#: Object size classes of :func:`object_recall`: name, smallest and largest size in pixels.
SIZE_CLASSES: tuple[tuple[str, int, float], ...] = (
    ("lt25", 1, 24),
    ("25to100", 25, 100),
    ("gt100", 101, math.inf),
)
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity
_BLOCK_PIXELS = 1 << 21  # pixels per block of rows in evaluate_run (~100 MB of temporaries)
_GDAL_CACHE_MB = 256  # GDAL block cache: holds a row of COG tiles of each raster between blocks
_CURVE_POINTS = 200
_REPORT_BINS = 128


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
        _check_mask_values(pred_arr, "pred")
        pred_changed = pred_arr == MASK_CHANGED
        scored = labelled & (pred_arr != MASK_NODATA)
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


def evaluate_mask(
    mask_path: PathLike,
    truth_path: PathLike,
    *,
    changed_values: Iterable[int] = (255,),
    ignore_values: Iterable[int] = (),
    unchanged_values: Iterable[int] | None = None,
    truth_threshold: float | None = None,
    band: int = 1,
    block_rows: int = 1024,
) -> dict[str, float | int]:
    """Score a change mask against a ground-truth raster, reading both in blocks of rows.

    Pixels are scored where the truth is labelled (see :func:`decode_truth`) and the mask is
    not nodata. The counts satisfy ``n_labelled + n_ignored + n_nodata == height * width``.

    Args:
        mask_path: Change mask, uint8 band 1: 1 = changed, 0 = unchanged, 255 = nodata.
        truth_path: Truth raster in any GDAL format, same height and width as the mask (the
            geotransform is not compared: truth files are often not georeferenced).
        changed_values: Truth values meaning changed (ignored if ``truth_threshold`` is set).
        ignore_values: Truth values excluded from scoring.
        unchanged_values: Truth values meaning unchanged; None = all other values. When given,
            pixels whose value is in no list are excluded (sparse truth).
        truth_threshold: If set, truth pixels ``> truth_threshold`` are changed, others
            unchanged.
        band: 1-based truth band to read.
        block_rows: Rows read per block; bounds the memory used.

    Returns:
        The metrics of :func:`metrics_from_confusion` plus ``n_labelled`` (scored pixels),
        ``n_ignored`` (pixels excluded by the truth: ignored or unlabelled values) and
        ``n_nodata`` (pixels labelled in the truth but nodata in the mask).

    Raises:
        RasterReadError: If a file is missing or cannot be read.
        GridMismatchError: If the mask and the truth differ in height or width.
        BandMismatchError: If ``band`` is not a band of the truth raster.
        InputError: If ``block_rows`` < 1, or the mask holds values other than 0, 1 and 255.
    """
    if block_rows < 1:
        raise InputError(f"block_rows must be >= 1, got {block_rows!r}")
    encoding = _encoding(changed_values, ignore_values, unchanged_values, truth_threshold)
    acc = _Accumulator()
    with (
        open_raster(mask_path, role="mask") as mask_ds,
        open_raster(truth_path, role="truth") as truth_ds,
    ):
        _check_pair(mask_ds, truth_ds, mask_path, truth_path, band)
        for window in _row_windows(mask_ds.height, mask_ds.width, block_rows):
            mask = mask_ds.read(1, window=window)
            _check_mask_values(mask, f"mask {str(mask_path)!r}")
            changed, labelled = decode_truth(truth_ds.read(band, window=window), **encoding)
            acc.add(mask, changed, labelled)
    return acc.metrics()


@dataclass
class _Accumulator:
    """Sums the confusion matrix and the pixel counts of :func:`evaluate_mask` over blocks."""

    confusion: Confusion = Confusion()
    n_ignored: int = 0
    n_nodata: int = 0

    def add(
        self, mask: NDArray[np.uint8], changed: NDArray[np.bool_], labelled: NDArray[np.bool_]
    ) -> None:
        valid = mask != MASK_NODATA
        self.n_ignored += int(labelled.size - np.count_nonzero(labelled))
        self.n_nodata += int(np.count_nonzero(labelled & ~valid))
        self.confusion = self.confusion + confusion_from_arrays(
            mask == MASK_CHANGED, changed, labelled & valid
        )

    def metrics(self) -> dict[str, float | int]:
        result = metrics_from_confusion(self.confusion)
        result["n_labelled"] = self.confusion.total
        result["n_ignored"] = self.n_ignored
        result["n_nodata"] = self.n_nodata
        return result


def _encoding(
    changed_values: Iterable[int],
    ignore_values: Iterable[int],
    unchanged_values: Iterable[int] | None,
    truth_threshold: float | None,
) -> dict[str, Any]:
    """The truth encoding as plain lists (keyword arguments of :func:`decode_truth`)."""
    return {
        "changed_values": [int(v) for v in changed_values],
        "ignore_values": [int(v) for v in ignore_values],
        "unchanged_values": None if unchanged_values is None else [int(v) for v in unchanged_values],
        "truth_threshold": None if truth_threshold is None else float(truth_threshold),
    }


def _check_pair(mask_ds: Any, truth_ds: Any, mask_path: PathLike, truth_path: PathLike,
                band: int) -> None:
    if (mask_ds.height, mask_ds.width) != (truth_ds.height, truth_ds.width):
        raise GridMismatchError(
            f"mask {str(mask_path)!r} is {mask_ds.height}x{mask_ds.width} (rows x cols) but "
            f"truth {str(truth_path)!r} is {truth_ds.height}x{truth_ds.width}: score a mask "
            "made on the truth's pixel grid"
        )
    if not 1 <= band <= truth_ds.count:
        raise BandMismatchError(
            f"band {band!r} out of range for truth {str(truth_path)!r}, which has "
            f"{truth_ds.count} band(s): use 1..{truth_ds.count}"
        )


def _row_windows(height: int, width: int, block_rows: int) -> Iterator[Window]:
    for row_off in range(0, height, block_rows):
        yield Window(0, row_off, width, min(block_rows, height - row_off))


def evaluate_run(
    out_dir: PathLike,
    truth: PathLike,
    *,
    changed_values: Iterable[int] = (255,),
    ignore_values: Iterable[int] = (),
    unchanged_values: Iterable[int] | None = None,
    truth_threshold: float | None = None,
    n_bins: int = 4096,
    band: int = 1,
    block_rows: int | None = None,
) -> dict[str, Any]:
    """Score a detection run folder against a ground truth and write ``OUT_DIR/metrics.json``.

    The mask, the score map and the truth are read together in blocks of whole rows (never a
    whole raster), after a first pass over the score map for its range (skipped when the file
    carries exact GDAL statistics). Per block it sums:

    * the confusion matrix of the mask, as :func:`evaluate_mask`;
    * one histogram of scores per truth class (``n_bins`` equal bins over the score range) over
      the *ranked* pixels: labelled in the truth, not nodata in the mask, score not NaN. From
      them :func:`ranking_metrics` gives ``roc_auc`` and ``pr_auc`` (average precision); both are
      exact for the scores rounded to their bin, and within ~1e-3 of scikit-learn's
      ``roc_auc_score`` / ``average_precision_score`` at the default 4096 bins;
    * the connected components (8-connectivity) of the truth's changed pixels, labelled per block
      and merged across block borders (so memory is one block plus a few integers per
      component), and whether each one overlaps a changed mask pixel: :func:`object_recall`.
      Objects lying wholly on mask nodata are not counted, as nodata pixels are not scored.

    Memory is bounded by the block (about 50 bytes per pixel of a block) and GDAL's block
    cache, capped at 256 MB here, whatever the raster's size.

    Args:
        out_dir: Folder of a detection run holding ``change_mask.tif`` (uint8: 1 changed,
            0 unchanged, 255 nodata) and ``change_score.tif`` (float32, NaN nodata);
            ``run.json`` is read for the threshold if present.
        truth: Truth raster in any GDAL format, same height and width as the mask.
        changed_values: Truth values meaning changed (ignored if ``truth_threshold`` is set).
        ignore_values: Truth values excluded from scoring.
        unchanged_values: Truth values meaning unchanged; None = all other values. When given,
            pixels whose value is in no list are excluded (sparse truth).
        truth_threshold: If set, truth pixels ``> truth_threshold`` are changed, others
            unchanged.
        n_bins: Score histogram bins for the AUCs; >= 2.
        band: 1-based truth band to read.
        block_rows: Rows read per block; default about 2 million pixels per block.

    Returns:
        What is written to metrics.json: the keys of :func:`evaluate_mask` (``tp fp fn tn
        precision recall f1 iou oa kappa n_labelled n_ignored n_nodata``), ``pr_auc`` and
        ``roc_auc`` (None when a class has no ranked pixel), ``object_recall`` (see
        :func:`object_recall`), ``threshold`` (from run.json, or None), ``truth``, ``mask`` and
        ``score`` (absolute paths), ``band``, ``encoding`` (the truth encoding used),
        ``auc`` (bins, score range and ranked pixels per class), ``pr_curve`` (``recall``,
        ``precision``, ``threshold`` lists, <= 200 points by decreasing threshold) and
        ``score_histogram`` (``edges`` and per-class ``changed``/``unchanged`` counts,
        <= 128 bins).

    Raises:
        InputError: If ``out_dir`` is not a finished detection run, ``n_bins`` < 2,
            ``block_rows`` < 1, or the mask holds values other than 0, 1 and 255.
        RasterReadError: If the truth or an output raster is missing or unreadable.
        GridMismatchError: If the mask, the score map and the truth differ in height or width.
        BandMismatchError: If ``band`` is not a band of the truth raster.
        OutputError: If metrics.json cannot be written.
    """
    out = Path(out_dir)
    mask_path, score_path = out / "change_mask.tif", out / "change_score.tif"
    for path in (mask_path, score_path):
        if not path.is_file():
            raise InputError(
                f"{str(path)!r} not found: OUT_DIR must be the --out folder of a finished "
                f"detection run; run `microchange detect BEFORE AFTER --out {out}` first"
            )
    if n_bins < 2:
        raise InputError(f"n_bins must be >= 2, got {n_bins!r}")
    if block_rows is not None and block_rows < 1:
        raise InputError(f"block_rows must be >= 1, got {block_rows!r}")
    encoding = _encoding(changed_values, ignore_values, unchanged_values, truth_threshold)
    acc, objects = _Accumulator(), _ObjectCounter()
    pos = np.zeros(n_bins, dtype=np.int64)
    neg = np.zeros(n_bins, dtype=np.int64)
    with (
        rasterio.Env(GDAL_CACHEMAX=_GDAL_CACHE_MB),
        open_raster(mask_path, role="mask") as mask_ds,
        open_raster(score_path, role="score") as score_ds,
        open_raster(truth, role="truth") as truth_ds,
    ):
        _check_pair(mask_ds, truth_ds, mask_path, truth, band)
        if score_ds.shape != mask_ds.shape:
            raise GridMismatchError(
                f"score {str(score_path)!r} is {score_ds.height}x{score_ds.width} but mask "
                f"{str(mask_path)!r} is {mask_ds.height}x{mask_ds.width}: both must come from "
                "the same run; run `microchange detect` again"
            )
        height, width = mask_ds.height, mask_ds.width
        rows = block_rows or max(1, _BLOCK_PIXELS // max(width, 1))
        lo, hi = _score_range(score_ds, rows)
        for window in _row_windows(height, width, rows):
            mask = mask_ds.read(1, window=window)
            _check_mask_values(mask, f"mask {str(mask_path)!r}")
            changed, labelled = decode_truth(truth_ds.read(band, window=window), **encoding)
            acc.add(mask, changed, labelled)
            valid = mask != MASK_NODATA
            objects.add(changed, mask == MASK_CHANGED, valid)
            score = score_ds.read(1, window=window)
            ranked = labelled & valid & ~np.isnan(score)
            bins = _bin_index(score[ranked], lo, hi, n_bins)
            is_pos = changed[ranked]
            pos += np.bincount(bins[is_pos], minlength=n_bins)
            neg += np.bincount(bins[~is_pos], minlength=n_bins)
    edges = np.linspace(lo, hi, n_bins + 1)
    ranking = ranking_metrics(pos, neg, edges)
    metrics: dict[str, Any] = dict(acc.metrics())
    metrics.update(
        pr_auc=ranking["pr_auc"],
        roc_auc=ranking["roc_auc"],
        best_f1=ranking["best_f1"],
        best_f1_threshold=ranking["best_f1_threshold"],
        object_recall=objects.summary(),
        threshold=_run_threshold(out),
        truth=str(Path(truth).resolve()),
        mask=str(mask_path.resolve()),
        score=str(score_path.resolve()),
        band=band,
        encoding=encoding,
        auc={"n_bins": n_bins, "score_min": lo, "score_max": hi,
             "n_changed": int(pos.sum()), "n_unchanged": int(neg.sum())},
        pr_curve=ranking["pr_curve"],
        score_histogram=_coarse_histogram(edges, pos, neg),
    )
    try:
        write_json_atomic(out / METRICS_NAME, metrics)
    except OSError as exc:
        raise OutputError(f"cannot write {str(out / METRICS_NAME)!r} ({exc}): make the run "
                          "folder writable") from exc
    return metrics


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


@dataclass
class _ObjectCounter:
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


def _score_range(ds: Any, block_rows: int) -> tuple[float, float]:
    """Finite score range: exact GDAL statistics if the file has them, else one pass."""
    tags = ds.tags(1)
    if tags.get("STATISTICS_APPROXIMATE", "NO").upper() != "YES":
        try:
            lo, hi = float(tags["STATISTICS_MINIMUM"]), float(tags["STATISTICS_MAXIMUM"])
            if math.isfinite(lo) and math.isfinite(hi) and hi > lo:
                return lo, hi
        except (KeyError, ValueError):
            pass
    lo, hi = math.inf, -math.inf
    for window in _row_windows(ds.height, ds.width, block_rows):
        score = ds.read(1, window=window)
        finite = score[np.isfinite(score)]
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    if lo > hi:  # no finite score at all
        return 0.0, 1.0
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def _bin_index(scores: NDArray[Any], lo: float, hi: float, n_bins: int) -> NDArray[np.intp]:
    """Bin of each score in ``n_bins`` equal bins over [lo, hi]; +-inf go to the end bins."""
    scaled = scores.astype(np.float64)  # in place from here: one float64 copy per block
    scaled -= lo
    scaled *= n_bins / (hi - lo)
    np.floor(scaled, out=scaled)
    np.clip(scaled, 0, n_bins - 1, out=scaled)
    return scaled.astype(np.intp)


def _coarse_histogram(
    edges: NDArray[np.float64], pos: NDArray[np.int64], neg: NDArray[np.int64]
) -> dict[str, list[float] | list[int]]:
    step = -(-pos.size // _REPORT_BINS)
    starts = np.arange(0, pos.size, step)
    return {"edges": np.append(edges[starts], edges[-1]).tolist(),
            "changed": np.add.reduceat(pos, starts).tolist(),
            "unchanged": np.add.reduceat(neg, starts).tolist()}


def _run_threshold(out: Path) -> Any:
    path = out / "run.json"
    if not path.is_file():
        return None
    try:
        return read_json(path).get("threshold")
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("cannot read the threshold from %s (%s)", path, exc)
        return None


def _as_values(values: Iterable[int]) -> NDArray[np.int64]:
    return np.asarray(tuple(values), dtype=np.int64)


def _check_mask_values(mask: NDArray[Any], what: str) -> None:
    if not np.issubdtype(mask.dtype, np.integer):
        raise InputError(f"{what} has dtype {mask.dtype}: expected uint8 0/1/255 or bool")
    bad = ~np.isin(mask, _MASK_VALUES)
    if bad.any():
        values = np.unique(mask[bad])[:5].tolist()
        raise InputError(
            f"{what} holds values {values!r} (first 5): a change mask must be 1 = changed, "
            "0 = unchanged, 255 = nodata"
        )
