"""Per-pixel preparation of a tile before features: log transform and mask-aware smoothing.

Array in, array out; the caller reads tiles with a halo of at least :func:`preprocess_halo` pixels so
that the result on the tile's core does not depend on the tile size.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from microchange.config import PreprocessConfig

__all__ = ("preprocess_halo", "preprocess_image", "smooth_masked")

_TRUNCATE = 4.0


def preprocess_halo(cfg: PreprocessConfig) -> int:
    """Context pixels the preprocessing needs on each side of a tile."""
    if cfg.smoothing_sigma <= 0:
        return 0
    return int(_TRUNCATE * cfg.smoothing_sigma + 0.5)


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


def preprocess_image(
    image: NDArray[np.float32], valid: NDArray[np.bool_], cfg: PreprocessConfig
) -> NDArray[np.float32]:
    """Apply the configured preprocessing to one date of a tile.

    Args:
        image: (C, H, W) float32 band values.
        valid: (H, W) bool validity mask.
        cfg: Preprocessing options.

    Returns:
        (C, H, W) float32 prepared values (a new array; invalid pixels hold 0).
    """
    out = image
    if cfg.log_transform:
        out = np.log1p(np.maximum(out, 0.0, dtype=np.float32)).astype(np.float32, copy=False)
    if cfg.smoothing_sigma > 0:
        out = smooth_masked(out, valid, cfg.smoothing_sigma)
    return out if out is not image else image.copy()
