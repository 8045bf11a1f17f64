"""Global thresholds: fitted once on the sample of scores from the whole raster.

Specs accepted by ``--threshold``:

* ``otsu``: maximises the between-class variance of the score histogram (Otsu 1979). Good when
  change is a sizeable fraction of the scene; splits the noise when change is rare.
* ``kittler-illingworth``: minimum-error thresholding with two Gaussian classes of their own
  variance and weight (Kittler & Illingworth 1986); copes better with unequal class sizes.
* ``kmeans``: 2-means on the scores; the threshold is the midpoint of the two centres.
* ``fpr:X``: a false-alarm-rate bound from a robust null model of the no-change scores, fitted on
  the bulk of the sample (most pixels are unchanged): a scaled chi law for non-negative scores
  (change-vector magnitudes; a Gamma law fitted to the squared scores by their quartiles), a
  Gaussian with median and MAD otherwise; the threshold is its upper
  ``X`` quantile. ``fpr:0.001`` means "about one false alarm per 1000 unchanged pixels".
* ``value:X``: a fixed score threshold.
* ``auto``: Otsu, checked against a no-change null model fitted on the lower half of the scores
  (10th and 50th percentiles, untouched by up to ~50 % change): when the share of the
  sample above the Otsu threshold is less than 1.5 times what the null model alone predicts, the
  histogram has no second mode and Otsu is splitting noise (the classic failure on pairs with
  little or no change); the threshold is then the null model's ``fpr:0.0001`` bound. The choice
  and both numbers are recorded in ``run.json``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from microchange.config import THRESHOLD_PATTERN, THRESHOLDS
from microchange.errors import ConfigError, NoOverlapError

__all__ = (
    "Threshold",
    "auto_threshold",
    "evidence_above",
    "fit_threshold",
    "fpr_threshold",
    "kittler_illingworth_threshold",
    "kmeans_threshold",
    "null_survival",
    "otsu_threshold",
)

AUTO_EVIDENCE = 1.5
"""``auto`` keeps Otsu when the sample above it is at least this many times the null's share."""
AUTO_FPR = 1e-4
"""False-alarm rate of the null-model bound that ``auto`` falls back to."""
EVIDENCE_QUANTILES = (0.10, 0.50)
"""Quantiles of the squared scores that fit the Gamma null of the evidence test (lower half)."""
BOUND_QUANTILES = (0.25, 0.75)
"""Quantiles of the squared scores that fit the Gamma null of the ``fpr`` bounds (quartiles)."""


@dataclass(frozen=True)
class Threshold:
    """A fitted threshold: pixels with score > ``value`` are changed.

    Attributes:
        method: How it was chosen ('otsu', 'kittler-illingworth', 'kmeans', 'fpr', 'value').
        value: The score threshold.
        n_sample: Scores it was fitted on.
    """

    method: str
    value: float
    n_sample: int
    detail: dict[str, Any] | None = None


def _finite(values: NDArray[np.floating]) -> NDArray[np.float64]:
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise NoOverlapError("cannot fit a threshold on an empty sample: the inputs hold no "
                             "valid pixel where both overlap")
    return v


def _histogram(v: NDArray[np.float64], nbins: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    hist, edges = np.histogram(v, bins=nbins, range=(float(v.min()), float(v.max())))
    return hist.astype(np.float64), edges


def _binned(values: NDArray[np.floating], nbins: int
            ) -> float | tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """(counts, edges, centres) of the finite values, or their value when all are equal."""
    v = _finite(values)
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return lo
    hist, edges = _histogram(v, nbins)
    return hist, edges, (edges[:-1] + edges[1:]) / 2


def otsu_threshold(values: NDArray[np.floating], *, nbins: int = 1024) -> float:
    """Otsu's threshold: maximises the between-class variance of a 1-D sample.

    Args:
        values: 1-D scores (the global sample); non-finite values are ignored.
        nbins: Histogram bins between the sample's minimum and maximum.

    Returns:
        The threshold; values strictly greater are the upper class.

    Raises:
        NoOverlapError: If ``values`` holds no finite value (a ``ValueError``).
    """
    binned = _binned(values, nbins)
    if isinstance(binned, float):
        return binned
    hist, edges, centers = binned
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mu1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = (w0 * w1 * (mu0 - mu1) ** 2)[:-1]
    # Empty bins between the modes give a plateau of equal maxima: take its middle.
    best = np.flatnonzero(between >= between.max() * (1 - 1e-12))
    first, last = int(best[0]), int(best[-1])
    return float((edges[first + 1] + edges[last + 1]) / 2)


def kittler_illingworth_threshold(values: NDArray[np.floating], *, nbins: int = 1024) -> float:
    """Minimum-error threshold of Kittler & Illingworth (two Gaussian classes).

    Args:
        values: 1-D scores; non-finite values are ignored.
        nbins: Histogram bins between the sample's minimum and maximum.

    Returns:
        The threshold minimising the classification-error criterion J(t).

    Raises:
        NoOverlapError: If ``values`` holds no finite value (a ``ValueError``).
    """
    binned = _binned(values, nbins)
    if isinstance(binned, float):
        return binned
    hist, edges, c = binned
    p = hist / hist.sum()
    p1 = np.cumsum(p)
    p2 = 1.0 - p1
    m1 = np.cumsum(p * c)
    s1 = np.cumsum(p * c * c)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu1 = m1 / p1
        mu2 = (m1[-1] - m1) / p2
        var1 = s1 / p1 - mu1**2
        var2 = (s1[-1] - s1) / p2 - mu2**2
        ok = (p1 > 1e-9) & (p2 > 1e-9) & (var1 > 1e-18) & (var2 > 1e-18)
        j = np.full(c.shape, np.inf)
        j[ok] = (p1[ok] * np.log(var1[ok]) + p2[ok] * np.log(var2[ok])
                 - 2 * (p1[ok] * np.log(p1[ok]) + p2[ok] * np.log(p2[ok])))
    if not np.isfinite(j).any():
        return otsu_threshold(values, nbins=nbins)
    return float(edges[int(np.argmin(j)) + 1])


def kmeans_threshold(values: NDArray[np.floating], *, max_iter: int = 100) -> float:
    """Midpoint of the two centres of 1-D 2-means (Lloyd's algorithm from the quartiles).

    Args:
        values: 1-D scores; non-finite values are ignored.
        max_iter: Iterations at most.

    Returns:
        The threshold between the two clusters.

    Raises:
        NoOverlapError: If ``values`` holds no finite value (a ``ValueError``).
    """
    v = _finite(values)
    c0, c1 = np.quantile(v, [0.25, 0.75])
    for _ in range(max_iter):
        t = (c0 + c1) / 2
        lo, hi = v[v <= t], v[v > t]
        if lo.size == 0 or hi.size == 0:
            break
        n0, n1 = lo.mean(), hi.mean()
        if n0 == c0 and n1 == c1:
            break
        c0, c1 = n0, n1
    return float((c0 + c1) / 2)


def _gamma_null(v: NDArray[np.float64],
                quantiles: tuple[float, float]) -> tuple[float, float] | None:
    """Shape and scale of a Gamma law fitted to the squared scores by two quantiles.

    A change-vector magnitude of no-change pixels is a scaled chi: its square is Gamma-distributed
    (shape = half the effective degrees of freedom). The shape is solved from the ratio of the two
    quantiles of ``v**2`` and the scale from the median.

    Two fits serve two questions. *Is there change?* (:func:`null_survival`, the evidence test of
    ``auto`` and PCA-KMeans) uses the 10th and 50th percentiles (:data:`EVIDENCE_QUANTILES`):
    changed pixels sit in the upper tail, so the lower half stays a sample of no-change scores in
    scenes where up to about half the pixels changed. The quartiles were moved by scenes with
    15-25 % change (LEVIR-CD, Beijing): the null's tail then covered the changes and ``auto`` fell
    back to the 1e-4 bound, an empty change map. *Where is the false-alarm bound?*
    (:func:`fpr_threshold`) uses the quartiles (:data:`BOUND_QUANTILES`): ``auto`` only falls back
    to it when the scene shows no change, and real no-change scores have heavier tails than a
    Gamma law, which the quartiles follow further out (0.046 % vs 0.092 % of a quiet synthetic
    pair marked changed at ``fpr:0.0001``).
    """
    from scipy.optimize import brentq
    from scipy.stats import gamma

    qa, qb = quantiles
    lo_q, median, hi_q = np.quantile(v * v, [qa, 0.5, qb])
    if lo_q <= 0 or hi_q <= lo_q:
        return None
    ratio = float(hi_q / lo_q)

    def _gap(log_a: float) -> float:
        a = math.exp(log_a)
        return float(gamma.ppf(qb, a) / gamma.ppf(qa, a)) - ratio

    lo, hi = math.log(0.05), math.log(5000.0)
    if _gap(lo) * _gap(hi) > 0:
        return None
    shape = math.exp(brentq(_gap, lo, hi, xtol=1e-6))
    return shape, float(median / float(gamma.median(shape)))


def null_survival(v: NDArray[np.float64], t: float) -> float | None:
    """Share of no-change scores above ``t`` under the fitted null (None if it cannot be fitted)."""
    from scipy.stats import gamma, norm

    if v.min() >= 0:
        fit = _gamma_null(v, EVIDENCE_QUANTILES)
        if fit is None:
            return None
        return float(gamma.sf(t * t, fit[0], scale=fit[1]))
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med))) * 1.4826
    return float(norm.sf((t - med) / mad)) if mad > 0 else None


def fpr_threshold(values: NDArray[np.floating], fpr: float) -> float:
    """Upper ``fpr`` quantile of a robust no-change null model fitted to the scores.

    Non-negative scores (magnitudes, distances) get a scaled-chi null: a Gamma law for the squared
    scores, fitted by their quartiles (:func:`_gamma_null`). Scores that can be negative get a
    Gaussian null with the median as location and 1.4826 x MAD as scale. Both fits use robust
    statistics of the bulk, which is unchanged in any scene where change is the exception.

    Args:
        values: 1-D scores; non-finite values are ignored.
        fpr: Tolerated false-alarm rate in (0, 0.5).

    Returns:
        The score threshold.

    Raises:
        ConfigError: If ``fpr`` is not in (0, 0.5).
    """
    if not 0 < fpr < 0.5:
        raise ConfigError(f"fpr:{fpr!r} is out of range: use a rate in (0, 0.5), e.g. fpr:0.001")
    from scipy.stats import norm

    v = _finite(values)
    if v.min() >= 0:
        fit = _gamma_null(v, BOUND_QUANTILES)
        if fit is not None:
            from scipy.stats import gamma

            return math.sqrt(float(gamma.isf(fpr, fit[0], scale=fit[1])))
    med = float(np.median(v))
    mad = float(np.median(np.abs(v - med))) * 1.4826
    return med + float(norm.isf(fpr)) * mad


def evidence_above(v: NDArray[np.float64], t: float) -> tuple[bool, float, float | None]:
    """Whether the share of ``v`` above ``t`` shows change beyond the no-change null model.

    Returns:
        (evidence, observed share, null share): evidence when the observed share is at least
        :data:`AUTO_EVIDENCE` times the null's, or the null cannot be fitted.
    """
    observed = float((v > t).mean())
    null = null_survival(v, t)
    return null is None or observed >= AUTO_EVIDENCE * null, observed, null


def auto_threshold(values: NDArray[np.floating]) -> tuple[float, dict[str, Any]]:
    """Otsu when the sample shows evidence of change beyond the null model, else the null bound.

    Args:
        values: 1-D scores; non-finite values are ignored.

    Returns:
        (threshold, detail) where detail records Otsu's value, the observed and null shares above
        it, and which rule was used.
    """
    v = _finite(values)
    otsu = otsu_threshold(v)
    evidence, observed, null = evidence_above(v, otsu)
    detail: dict[str, Any] = {"otsu": otsu, "share_above_otsu": observed,
                              "null_share_above_otsu": null}
    if evidence:
        detail["rule"] = "otsu"
        return otsu, detail
    value = fpr_threshold(v, AUTO_FPR)
    detail["rule"] = f"fpr:{AUTO_FPR:g} (no evidence of change above Otsu)"
    return max(value, otsu), detail


def fit_threshold(spec: str, scores: NDArray[np.floating]) -> Threshold:
    """Fit a threshold named by ``spec`` on the global sample of scores.

    Args:
        spec: One of :data:`THRESHOLDS` ('otsu', 'kittler-illingworth', 'kmeans', 'fpr:X',
            'value:X').
        scores: 1-D sample of scores from across the whole raster.

    Returns:
        The fitted :class:`Threshold`.

    Raises:
        ConfigError: If ``spec`` is not a known threshold.
    """
    if not THRESHOLD_PATTERN.match(spec):
        raise ConfigError(f"unknown threshold {spec!r}: use one of {', '.join(THRESHOLDS)}")
    n = int(np.isfinite(scores).sum())
    if spec == "auto":
        value, detail = auto_threshold(scores)
        return Threshold("auto", value, n, detail)
    if spec == "otsu":
        return Threshold("otsu", otsu_threshold(scores), n)
    if spec == "kittler-illingworth":
        return Threshold("kittler-illingworth", kittler_illingworth_threshold(scores), n)
    if spec == "kmeans":
        return Threshold("kmeans", kmeans_threshold(scores), n)
    name, _, number = spec.partition(":")
    if name == "fpr":
        return Threshold("fpr", fpr_threshold(scores, float(number)), n)
    return Threshold("value", float(number), n)
