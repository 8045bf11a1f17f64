"""Global thresholds: fitted once on the sample of scores from the whole raster."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from microchange.errors import ConfigError

__all__ = ("THRESHOLDS", "Threshold", "fit_threshold", "otsu_threshold")

THRESHOLDS = ("otsu", "value:X")


@dataclass(frozen=True)
class Threshold:
    """A fitted threshold: pixels with score > ``value`` are changed.

    Attributes:
        method: How it was chosen ('otsu', 'value').
        value: The score threshold.
        n_sample: Scores it was fitted on.
    """

    method: str
    value: float
    n_sample: int


def otsu_threshold(values: NDArray[np.floating], *, nbins: int = 1024) -> float:
    """Otsu's threshold: maximises the between-class variance of a 1-D sample.

    Args:
        values: 1-D finite scores (the global sample).
        nbins: Histogram bins between the sample's minimum and maximum.

    Returns:
        The threshold; values strictly greater are the upper class.

    Raises:
        ValueError: If ``values`` is empty.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("cannot fit a threshold on an empty sample")
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(v, bins=nbins, range=(lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mu1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = (w0 * w1 * (mu0 - mu1) ** 2)[:-1]
    # Empty bins between the modes give a plateau of equal maxima: take its middle.
    best = np.flatnonzero(between >= between.max() * (1 - 1e-12))
    first, last = int(best[0]), int(best[-1])
    return float((edges[first + 1] + edges[last + 1]) / 2)


def fit_threshold(spec: str, scores: NDArray[np.floating]) -> Threshold:
    """Fit a threshold named by ``spec`` on the global sample of scores.

    Args:
        spec: 'otsu' or 'value:X'.
        scores: 1-D sample of scores from across the whole raster.

    Returns:
        The fitted :class:`Threshold`.

    Raises:
        ConfigError: If ``spec`` is not a known threshold.
    """
    n = int(np.isfinite(scores).sum())
    if spec == "otsu":
        return Threshold("otsu", otsu_threshold(scores), n)
    if spec.startswith("value:"):
        try:
            return Threshold("value", float(spec.split(":", 1)[1]), n)
        except ValueError:
            pass
    raise ConfigError(f"unknown threshold {spec!r}: use one of {', '.join(THRESHOLDS)}")
