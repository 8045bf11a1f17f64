"""Score a detection run against a ground truth, reading the rasters in blocks of rows.

:func:`evaluate_mask` scores a change mask; :func:`evaluate_run` scores a whole run folder: the
confusion metrics, threshold-free ``roc_auc`` and ``pr_auc`` from the score map (streaming
per-class score histograms, exact up to the binning), object-level recall of the truth's
connected components by size class, and the PR curve and score histograms of the report, all
written to ``OUT_DIR/metrics.json``. Memory is one block of rows whatever the raster's size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.windows import Window

from microchange.errors import (
    BandMismatchError,
    ConfigError,
    GridMismatchError,
    InputError,
    OutputError,
)
from microchange.evaluation.metrics import (
    MaskCounter,
    ObjectCounter,
    check_mask_values,
    decode_truth,
    ranking_metrics,
)
from microchange.io.datasets import open_raster, read_errors
from microchange.io.manifest import read_run_manifest, run_rasters, write_json_atomic
from microchange.types import METRICS_NAME, MaskValue, PathLike

__all__ = ("evaluate_mask", "evaluate_run")

_BLOCK_PIXELS = 1 << 21  # pixels per block of rows in evaluate_run (~100 MB of temporaries)
_GDAL_CACHE_MB = 256  # GDAL block cache: holds a row of COG tiles of each raster between blocks
_REPORT_BINS = 128


def _encoding(
    changed_values: Iterable[int],
    ignore_values: Iterable[int],
    unchanged_values: Iterable[int] | None,
    truth_threshold: float | None,
) -> dict[str, Any]:
    """The truth encoding as plain lists (keyword arguments of :func:`decode_truth`).

    Raises:
        ConfigError: If ``truth_threshold`` is not a finite number, or a value is both changed
            and unchanged.
    """
    encoding: dict[str, Any] = {
        "changed_values": [int(v) for v in changed_values],
        "ignore_values": [int(v) for v in ignore_values],
        "unchanged_values": None if unchanged_values is None else [int(v) for v in unchanged_values],
        "truth_threshold": None if truth_threshold is None else float(truth_threshold),
    }
    cut = encoding["truth_threshold"]
    if cut is not None and not math.isfinite(cut):
        raise ConfigError(f"truth_threshold (--truth-threshold) {truth_threshold!r} is not a "
                          "finite number: give the value above which truth pixels are changed, "
                          "e.g. 128")
    both = sorted(set(encoding["changed_values"]) & set(encoding["unchanged_values"] or ()))
    if both and encoding["truth_threshold"] is None:
        raise ConfigError(f"truth value(s) {both} are both changed (--changed-values) and "
                          "unchanged (--unchanged-values): list each value once")
    return encoding


def _check_grid(ds: Any, ref: Any, path: PathLike, ref_path: PathLike, role: str) -> None:
    if (ds.height, ds.width) != (ref.height, ref.width):
        raise GridMismatchError(
            f"{role} {str(path)!r} is {ds.height}x{ds.width} (rows x cols) but mask "
            f"{str(ref_path)!r} is {ref.height}x{ref.width}: score a mask made on the truth's "
            "pixel grid (and its score map from the same run)")


def _row_windows(height: int, width: int, block_rows: int) -> Iterator[Window]:
    for row_off in range(0, height, block_rows):
        yield Window(0, row_off, width, min(block_rows, height - row_off))


class _Blocks:
    """The mask, the decoded truth and optionally the score map, opened together, by row blocks.

    Raises:
        RasterReadError: If a raster is missing or unreadable.
        GridMismatchError: If the rasters differ in height or width.
        BandMismatchError: If ``band`` is not a band of the truth.
    """

    def __init__(self, stack: ExitStack, mask_path: PathLike, truth_path: PathLike, band: int,
                 encoding: dict[str, Any], score_path: PathLike | None = None) -> None:
        self.mask_path, self.band, self.encoding = mask_path, band, encoding
        self.truth_path, self.score_path = truth_path, score_path
        self.mask = stack.enter_context(open_raster(mask_path, role="mask"))
        self.truth = stack.enter_context(open_raster(truth_path, role="truth"))
        _check_grid(self.truth, self.mask, truth_path, mask_path, "truth")
        if not 1 <= band <= self.truth.count:
            raise BandMismatchError(
                f"band {band!r} out of range for truth {str(truth_path)!r}, which has "
                f"{self.truth.count} band(s): use 1..{self.truth.count}")
        self.score = None
        if score_path is not None:
            self.score = stack.enter_context(open_raster(score_path, role="score"))
            _check_grid(self.score, self.mask, score_path, mask_path, "score")

    def rows(self, block_rows: int) -> Iterator[tuple[NDArray[np.uint8], NDArray[np.bool_],
                                                     NDArray[np.bool_], NDArray[Any] | None]]:
        """(mask, changed, labelled, score or None) of each block of ``block_rows`` rows."""
        for window in _row_windows(self.mask.height, self.mask.width, block_rows):
            with read_errors(self.mask_path, role="mask"):
                mask = self.mask.read(1, window=window)
            check_mask_values(mask, f"mask {str(self.mask_path)!r}")
            with read_errors(self.truth_path, role="truth"):
                truth = self.truth.read(self.band, window=window)
            changed, labelled = decode_truth(truth, **self.encoding)
            score = None
            if self.score is not None:
                with read_errors(str(self.score_path), role="score"):
                    score = self.score.read(1, window=window)
            yield mask, changed, labelled, score


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
        ``n_ignored`` (pixels excluded by the truth) and ``n_nodata`` (pixels labelled in the
        truth but nodata in the mask).

    Raises:
        RasterReadError: If a file is missing or cannot be read.
        GridMismatchError: If the mask and the truth differ in height or width.
        BandMismatchError: If ``band`` is not a band of the truth raster.
        InputError: If ``block_rows`` < 1, or the mask holds values other than 0, 1 and 255.
    """
    if block_rows < 1:
        raise InputError(f"block_rows must be >= 1, got {block_rows!r}")
    encoding = _encoding(changed_values, ignore_values, unchanged_values, truth_threshold)
    counter = MaskCounter()
    with ExitStack() as stack:
        for mask, changed, labelled, _ in _Blocks(stack, mask_path, truth_path, band,
                                                  encoding).rows(block_rows):
            counter.add(mask, changed, labelled)
    return counter.metrics()


class _ScoreHistograms:
    """Per-class histograms of the ranked scores (labelled, valid, not NaN) over [lo, hi]."""

    def __init__(self, lo: float, hi: float, n_bins: int) -> None:
        self.lo, self.hi, self.n_bins = lo, hi, n_bins
        self.pos = np.zeros(n_bins, dtype=np.int64)
        self.neg = np.zeros(n_bins, dtype=np.int64)

    def add(self, score: NDArray[Any], changed: NDArray[np.bool_],
            ranked: NDArray[np.bool_]) -> None:
        bins = _bin_index(score[ranked], self.lo, self.hi, self.n_bins)
        is_pos = changed[ranked]
        self.pos += np.bincount(bins[is_pos], minlength=self.n_bins)
        self.neg += np.bincount(bins[~is_pos], minlength=self.n_bins)

    def edges(self) -> NDArray[np.float64]:
        return np.linspace(self.lo, self.hi, self.n_bins + 1)

    def coarse(self) -> dict[str, list[float] | list[int]]:
        """At most :data:`_REPORT_BINS` bins, for the report's histogram."""
        edges, pos, neg = self.edges(), self.pos, self.neg
        step = -(-pos.size // _REPORT_BINS)
        starts = np.arange(0, pos.size, step)
        return {"edges": np.append(edges[starts], edges[-1]).tolist(),
                "changed": np.add.reduceat(pos, starts).tolist(),
                "unchanged": np.add.reduceat(neg, starts).tolist()}


def _accumulate(mask_path: Path, score_path: Path, truth: PathLike, band: int,
                encoding: dict[str, Any], block_rows: int | None, n_bins: int
                ) -> tuple[MaskCounter, ObjectCounter, _ScoreHistograms]:
    """One pass over the run's rasters and the truth: confusion, objects, score histograms."""
    counter, objects = MaskCounter(), ObjectCounter()
    with rasterio.Env(GDAL_CACHEMAX=_GDAL_CACHE_MB), ExitStack() as stack:
        blocks = _Blocks(stack, mask_path, truth, band, encoding, score_path)
        rows = block_rows or max(1, _BLOCK_PIXELS // max(blocks.mask.width, 1))
        hist = _ScoreHistograms(*_score_range(blocks.score, rows), n_bins)
        for mask, changed, labelled, score in blocks.rows(rows):
            assert score is not None  # opened with the score map
            counter.add(mask, changed, labelled)
            valid = mask != MaskValue.NODATA
            objects.add(changed, mask == MaskValue.CHANGED, valid)
            hist.add(score, changed, labelled & valid & ~np.isnan(score))
    return counter, objects, hist


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

    The mask, the score map and the truth are read together in blocks of whole rows. Per block
    it sums the confusion matrix (as :func:`evaluate_mask`), one histogram of scores per truth
    class over the ranked pixels (labelled, not nodata, score not NaN; :func:`ranking_metrics`
    turns them into ``roc_auc`` and ``pr_auc``, exact for the scores rounded to their bin) and
    the truth's connected components with whether each meets a changed mask pixel
    (:func:`object_recall`). Memory is one block and GDAL's cache (256 MB), whatever the size.

    Args:
        out_dir: Folder of a detection run (``change_mask.tif``, ``change_score.tif``;
            ``run.json`` is read for the threshold if present).
        truth: Truth raster in any GDAL format, same height and width as the mask.
        changed_values: Truth values meaning changed (ignored if ``truth_threshold`` is set).
        ignore_values: Truth values excluded from scoring.
        unchanged_values: Truth values meaning unchanged; None = all other values. When given,
            pixels whose value is in no list are excluded (sparse truth).
        truth_threshold: If set, truth pixels ``> truth_threshold`` are changed.
        n_bins: Score histogram bins for the AUCs; >= 2.
        band: 1-based truth band to read.
        block_rows: Rows read per block; default about 2 million pixels per block.

    Returns:
        What is written to metrics.json: the keys of :func:`evaluate_mask`, ``pr_auc``,
        ``roc_auc``, ``best_f1`` (None without a class), ``object_recall``, ``threshold`` (from
        run.json), the absolute paths, ``band``, ``encoding``, ``auc`` (bins, score range,
        ranked pixels per class), ``pr_curve`` and ``score_histogram`` (for the report).

    Raises:
        InputNotFoundError: If ``out_dir`` is not a finished detection run.
        InputError: If ``n_bins`` < 2, ``block_rows`` < 1, or the mask holds values other than
            0, 1 and 255.
        RasterReadError, GridMismatchError, BandMismatchError: As :func:`evaluate_mask`.
        OutputError: If metrics.json cannot be written.
    """
    out = Path(out_dir)
    mask_path, score_path = run_rasters(out)
    if n_bins < 2 or (block_rows is not None and block_rows < 1):
        raise InputError(f"n_bins must be >= 2 and block_rows >= 1, got {n_bins!r} and "
                         f"{block_rows!r}")
    encoding = _encoding(changed_values, ignore_values, unchanged_values, truth_threshold)
    counter, objects, hist = _accumulate(mask_path, score_path, truth, band, encoding,
                                         block_rows, n_bins)
    ranking = ranking_metrics(hist.pos, hist.neg, hist.edges())
    metrics: dict[str, Any] = dict(counter.metrics())
    metrics.update(
        pr_auc=ranking["pr_auc"],
        roc_auc=ranking["roc_auc"],
        best_f1=ranking["best_f1"],
        best_f1_threshold=ranking["best_f1_threshold"],
        object_recall=objects.summary(),
        threshold=read_run_manifest(out).get("threshold"),
        truth=str(Path(truth).resolve()),
        mask=str(mask_path.resolve()),
        score=str(score_path.resolve()),
        band=band,
        encoding=encoding,
        auc={"n_bins": n_bins, "score_min": hist.lo, "score_max": hist.hi,
             "n_changed": int(hist.pos.sum()), "n_unchanged": int(hist.neg.sum())},
        pr_curve=ranking["pr_curve"],
        score_histogram=hist.coarse(),
    )
    try:
        write_json_atomic(out / METRICS_NAME, metrics)
    except OSError as exc:
        raise OutputError(f"cannot write {str(out / METRICS_NAME)!r} ({exc}): make the run "
                          "folder writable") from exc
    return metrics


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
        with read_errors(ds.name, role="score"):
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
