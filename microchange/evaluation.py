"""Accuracy of a change mask against a ground-truth raster, computed block by block.

A change mask is a uint8 raster: 1 = changed, 0 = unchanged, 255 = nodata (not scored). A truth
raster can be in any GDAL-readable format and encoding; :func:`decode_truth` turns it into
"changed" and "labelled" booleans from the values the benchmark documents (changed values,
ignored values, an optional explicit list of unchanged values for sparse truth, or a threshold
for lossy JPEG masks). Only pixels labelled in the truth *and* valid in the mask are scored.

The rasters are read in blocks of whole rows, so memory stays bounded whatever their size, and
the confusion matrices of the blocks are summed. Metrics follow the usual binary definitions
with "changed" as the positive class; every ratio whose denominator is 0 is defined as 0.0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rasterio.windows import Window

from microchange.errors import BandMismatchError, GridMismatchError, InputError
from microchange.io.rasters import PathLike, open_raster

__all__ = (
    "MASK_CHANGED",
    "MASK_NODATA",
    "MASK_UNCHANGED",
    "Confusion",
    "confusion_from_arrays",
    "decode_truth",
    "evaluate_mask",
    "metrics_from_confusion",
)

MASK_UNCHANGED = 0
MASK_CHANGED = 1
MASK_NODATA = 255
_MASK_VALUES = (MASK_UNCHANGED, MASK_CHANGED, MASK_NODATA)


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
    changed_set = tuple(int(v) for v in changed_values)
    ignore_set = tuple(int(v) for v in ignore_values)
    unchanged_set = None if unchanged_values is None else tuple(int(v) for v in unchanged_values)
    total = Confusion()
    n_ignored = 0
    n_nodata = 0
    with (
        open_raster(mask_path, role="mask") as mask_ds,
        open_raster(truth_path, role="truth") as truth_ds,
    ):
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
        height, width = mask_ds.height, mask_ds.width
        for row_off in range(0, height, block_rows):
            window = Window(0, row_off, width, min(block_rows, height - row_off))
            mask = mask_ds.read(1, window=window)
            truth = truth_ds.read(band, window=window)
            _check_mask_values(mask, f"mask {str(mask_path)!r}")
            changed, labelled = decode_truth(
                truth,
                changed_values=changed_set,
                ignore_values=ignore_set,
                unchanged_values=unchanged_set,
                truth_threshold=truth_threshold,
            )
            valid = mask != MASK_NODATA
            n_ignored += int(labelled.size - np.count_nonzero(labelled))
            n_nodata += int(np.count_nonzero(labelled & ~valid))
            total = total + confusion_from_arrays(mask == MASK_CHANGED, changed, labelled & valid)
    result = metrics_from_confusion(total)
    result["n_labelled"] = total.total
    result["n_ignored"] = n_ignored
    result["n_nodata"] = n_nodata
    return result


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
