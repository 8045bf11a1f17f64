"""Lee speckle filter for SAR, mask-aware, with its noise level fitted on the global sample.

SAR speckle is multiplicative: a homogeneous area of backscatter ``R`` shows values ``R * n`` with
``n`` of mean 1 and a coefficient of variation ``Cu`` fixed by the number of looks. The Lee filter
(Lee 1980) replaces each pixel by ``m + k (x - m)``, with ``m`` and ``v`` the mean and variance of
the valid pixels in a ``window`` x ``window`` neighbourhood and

    k = max(0, v - m^2 Cu^2) / (v (1 + Cu^2))

so homogeneous areas (``v ~ m^2 Cu^2``) are averaged and edges and point targets (``v`` much
larger) are kept. It runs on the values as read (amplitude or intensity), before the log
transform.

``Cu^2`` is fitted once on the global sample: the median of the local ``v / m^2`` in 11 x 11
windows over the 25 % most homogeneous ones (lowest ``v / m^2``) of both dates, so neither the
looks nor whether the data are amplitude or intensity must be known. On pure 4-look speckle this
finds ~0.85 of the true value (texture in real scenes would push it up; erring low smooths less). Nodata never enters the statistics (normalised
box filters over the validity mask) and the result does not depend on the tiling when tiles are
read with a halo of ``window // 2``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from microchange.errors import ConfigError, StateMismatchError
from microchange.parallel import SampleStatistic

__all__ = ("SpeckleFilter", "check_window", "lee_filter", "local_stats")

_HOMOGENEOUS = 0.25
_FIT_WINDOW = 11


def local_stats(image: NDArray[np.float32], valid: NDArray[np.bool_], window: int
                ) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Local mean, variance and valid count of each band over ``window`` x ``window`` px.

    Args:
        image: (C, H, W) values; invalid pixels are ignored.
        valid: (H, W) validity mask.
        window: Odd side of the neighbourhood, >= 3.

    Returns:
        (C, H, W) mean, (C, H, W) variance (float64), (H, W) share of valid pixels.
    """
    w = valid.astype(np.float64)
    share = ndimage.uniform_filter(w, window, mode="mirror")
    mean = np.empty(image.shape, np.float64)
    var = np.empty(image.shape, np.float64)
    safe = np.maximum(share, 1e-12)
    for c in range(image.shape[0]):
        x = image[c].astype(np.float64) * w
        m = ndimage.uniform_filter(x, window, mode="mirror") / safe
        m2 = ndimage.uniform_filter(x * image[c], window, mode="mirror") / safe
        mean[c] = m
        var[c] = np.maximum(m2 - m * m, 0.0)
    return mean, var, share


def lee_filter(image: NDArray[np.float32], valid: NDArray[np.bool_], window: int,
               cu2: NDArray[np.float32]) -> NDArray[np.float32]:
    """Lee-filtered copy of ``image``.

    Args:
        image: (C, H, W) float32 values (amplitude or intensity), >= 0.
        valid: (H, W) bool validity mask; invalid pixels hold 0 in the result.
        window: Odd neighbourhood side, >= 3.
        cu2: (C,) squared speckle coefficient of variation per band.

    Returns:
        (C, H, W) float32 filtered values.
    """
    mean, var, share = local_stats(image, valid, window)
    c2 = cu2.astype(np.float64)[:, None, None]
    signal = np.maximum(var - mean * mean * c2, 0.0)
    k = np.divide(signal, var * (1.0 + c2), out=np.zeros_like(var), where=var > 0)
    out = (mean + k * (image - mean)).astype(np.float32)
    out[:, ~valid | (share <= 0)] = 0.0
    return out


def check_window(window: int) -> int:
    """``window`` if it is 0 (off) or odd and >= 3.

    Raises:
        ConfigError: Otherwise, with the fix.
    """
    if window != 0 and (window < 3 or window % 2 == 0):
        raise ConfigError(f"speckle filter window {window!r} must be 0 (off) or odd and >= 3, "
                          "e.g. 5 or 7")
    return window


class SpeckleFilter(SampleStatistic):
    """A Lee filter whose speckle level ``Cu^2`` is fitted on the global sample.

    Args:
        window: Odd neighbourhood side in pixels, >= 3; 0 switches the filter off.

    Raises:
        ValueError: If ``window`` is not 0 or an odd number >= 3.
    """

    def __init__(self, window: int) -> None:
        self.window = check_window(window)
        self.cu2: NDArray[np.float32] | None = None

    @property
    def halo(self) -> int:
        """Context pixels the filter needs on each side of a tile."""
        return self.window // 2

    @property
    def needs_fit(self) -> bool:
        """Whether :meth:`fit_parts` has anything to fit."""
        return bool(self.window)

    def partial(self, before: NDArray[np.float32], after: NDArray[np.float32],
                valid: NDArray[np.bool_]) -> list[NDArray[np.float64]]:
        """One block's share of the fit: local ``var / mean^2`` of both dates.

        Returns:
            Two (C, N) arrays, NaN where the window is not all valid (none: no full window).
        """
        win = max(self.window, _FIT_WINDOW)
        full = valid & (ndimage.minimum_filter(valid.astype(np.uint8), win, mode="constant") > 0)
        if not full.any():
            return []
        ratios = []
        for image in (before, after):
            mean, var, _ = local_stats(np.maximum(image, 0.0), valid, win)
            ok = full[None] & (mean > 0)
            r = np.where(ok, var / np.where(ok, mean * mean, 1.0), np.nan)
            ratios.append(r.reshape(r.shape[0], -1))
        return ratios

    def fit_parts(self, parts: Sequence[list[NDArray[np.float64]]]) -> None:
        """Fit ``Cu^2`` from the :meth:`partial` of every sample block."""
        self.cu2 = None
        ratios = [r for part in parts for r in part]
        if not self.window or not ratios:
            return
        r = np.concatenate(ratios, axis=1)
        cu2 = []
        for band in r:
            band = band[np.isfinite(band)]
            if band.size == 0:
                cu2.append(0.0)
                continue
            low = band[band <= np.quantile(band, _HOMOGENEOUS)]
            cu2.append(float(np.median(low)))
        self.cu2 = np.asarray(cu2, np.float32)

    def apply(self, image: NDArray[np.float32], valid: NDArray[np.bool_]) -> NDArray[np.float32]:
        """The filtered image (``image`` itself when off or not fitted).

        Raises:
            ValueError: If the band count differs from the fitted one.
        """
        if self.cu2 is None:
            return image
        if image.shape[0] != len(self.cu2):
            raise StateMismatchError(f"speckle filter fitted on {len(self.cu2)} bands, got "
                             f"{image.shape[0]}: use the same bands for fit and apply")
        return lee_filter(np.maximum(image, 0.0), valid, self.window, self.cu2)

    def state(self) -> dict[str, NDArray[np.generic]]:
        """The fitted speckle level as named arrays."""
        return {} if self.cu2 is None else {"cu2": self.cu2}

    def load_state(self, state: dict[str, NDArray[np.generic]]) -> None:
        """Restore what :meth:`state` saved (an empty state: filter off)."""
        self.cu2 = np.asarray(state["cu2"], np.float32) if "cu2" in state else None
