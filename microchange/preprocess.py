"""Per-pixel preparation of a tile before features: log transform and mask-aware smoothing.

Array in, array out; the caller reads tiles with a halo of at least :func:`preprocess_halo` pixels so
that the result on the tile's core does not depend on the tile size.

The log transform is ``log(x + c)`` per band. ``c`` keeps zeros finite without flattening the
data's own range: ``c = 1`` (``log1p``) for data in digital numbers (band median >= 1, e.g. 8- or
16-bit SAR amplitude), else 1 % of the band median, fitted on the global sample
(:class:`LogTransform`): calibrated backscatter in linear units (sigma0 around 0.01-0.5) would
otherwise see ``log1p(x) ~ x`` and keep its multiplicative speckle.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from microchange.config import PreprocessConfig

__all__ = ("LogTransform", "preprocess_halo", "preprocess_image", "smooth_masked")

_TRUNCATE = 4.0


def preprocess_halo(cfg: PreprocessConfig) -> int:
    """Context pixels the preprocessing needs on each side of a tile."""
    speckle = cfg.speckle_window // 2
    if cfg.smoothing_sigma <= 0:
        return speckle
    return speckle + int(_TRUNCATE * cfg.smoothing_sigma + 0.5)


def smooth_masked(
    image: NDArray[np.float32], valid: NDArray[np.bool_], sigma: float
) -> NDArray[np.float32]:
    """Gaussian smoothing that ignores invalid pixels (normalised convolution).

    Each output is the Gaussian-weighted mean of the *valid* neighbours, so nodata never leaks
    into valid pixels and no dark fringe appears along nodata edges.

    Args:
        image: (C, H, W) float32 values; values at invalid pixels are ignored.
        valid: (H, W) bool validity mask.
        sigma: Standard deviation in pixels (> 0).

    Returns:
        (C, H, W) float32 smoothed image; invalid pixels hold 0.
    """
    w = valid.astype(np.float32)
    norm = ndimage.gaussian_filter(w, sigma, mode="mirror", truncate=_TRUNCATE)
    out = np.empty_like(image)
    for c in range(image.shape[0]):
        out[c] = ndimage.gaussian_filter(image[c] * w, sigma, mode="mirror", truncate=_TRUNCATE)
    np.divide(out, norm, out=out, where=norm > 1e-6)
    out[:, ~valid] = 0.0
    return out


_LOG_FRACTION = 0.01


class LogTransform:
    """Per-band offset ``c`` of the log transform ``log(x + c)``, fitted on the global sample.

    Args:
        enabled: Whether the log transform is on (off: nothing is fitted).
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.offset: NDArray[np.float32] | None = None

    def fit(self, samples: Sequence[tuple[NDArray[np.float32], NDArray[np.float32],
                                          NDArray[np.bool_]]]) -> None:
        """Fit ``c`` per band from the valid values of both dates of the sample blocks.

        Args:
            samples: (before, after, valid) per block: (C, H, W) float32 values, (H, W) mask.
        """
        self.offset = None
        if not self.enabled or not samples:
            return
        values = np.concatenate([d[:, v] for b, a, v in samples for d in (b, a)], axis=1)
        if values.shape[1] == 0:
            return
        median = np.median(np.maximum(values, 0.0), axis=1)
        self.offset = np.where(median >= 1.0, 1.0,
                               np.maximum(_LOG_FRACTION * median, 1e-12)).astype(np.float32)

    def state(self) -> dict[str, NDArray[np.generic]]:
        """The fitted offsets as named arrays."""
        return {} if self.offset is None else {"log_offset": self.offset}

    def load_state(self, state: dict[str, NDArray[np.generic]]) -> None:
        """Restore what :meth:`state` saved (an empty state: ``log1p``)."""
        self.offset = (np.asarray(state["log_offset"], np.float32) if "log_offset" in state
                       else None)


def preprocess_image(
    image: NDArray[np.float32], valid: NDArray[np.bool_], cfg: PreprocessConfig, *,
    log_offset: NDArray[np.float32] | None = None,
) -> NDArray[np.float32]:
    """Apply the configured preprocessing to one date of a tile.

    Args:
        image: (C, H, W) float32 band values.
        valid: (H, W) bool validity mask.
        cfg: Preprocessing options.
        log_offset: (C,) offsets ``c`` of ``log(x + c)`` (:class:`LogTransform`); None or all
            ones: ``log1p``.

    Returns:
        (C, H, W) float32 prepared values (a new array; invalid pixels hold 0).
    """
    out = image
    if cfg.log_transform:
        x = np.maximum(out, 0.0, dtype=np.float32)
        if log_offset is None or bool((log_offset == 1.0).all()):
            out = np.log1p(x).astype(np.float32, copy=False)
        else:
            out = np.log(x + log_offset.astype(np.float32)[:, None, None]).astype(np.float32)
            out[:, ~valid] = 0.0
    if cfg.smoothing_sigma > 0:
        out = smooth_masked(out, valid, cfg.smoothing_sigma)
    return out if out is not image else image.copy()
