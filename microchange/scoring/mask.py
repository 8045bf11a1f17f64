"""From scores to a clean change mask: threshold, then optional morphology (array in, array out).

Morphology runs on a block that keeps :attr:`PostprocessConfig.halo` pixels of context around the
tile core, so the cleaned core is the same whatever the tile size. The minimum mapping unit works
on whole regions across tiles (:func:`~microchange.scoring.regions.remove_small_regions`).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from microchange.config import PostprocessConfig
from microchange.tiling import crop_core
from microchange.types import MaskValue

__all__ = ("disk", "make_mask")


def disk(radius: int) -> NDArray[np.bool_]:
    """Disk-shaped structuring element of the given radius in pixels."""
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    return np.asarray(x * x + y * y <= radius * radius)


def make_mask(
    score: NDArray[np.float32], threshold: float, cfg: PostprocessConfig, *, keep: int
) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    """Threshold a score block and clean it; crop the ``keep`` context pixels.

    Args:
        score: (h + 2 keep, w + 2 keep) float32 scores, NaN where invalid.
        threshold: Pixels with score > threshold are changed.
        cfg: Morphology options (``keep`` must be >= ``cfg.halo``).
        keep: Context pixels around the core in ``score``.

    Returns:
        (mask, score) of the core: uint8 with 1 changed, 0 unchanged, 255 nodata; float32.
    """
    valid = np.isfinite(score)
    changed = valid & (score > threshold)
    if cfg.opening_radius:
        changed = ndimage.binary_opening(changed, structure=disk(cfg.opening_radius))
    if cfg.closing_radius:
        changed = ndimage.binary_closing(changed, structure=disk(cfg.closing_radius)) & valid
    core_valid = np.asarray(crop_core(valid, keep), dtype=bool)
    core_changed = np.asarray(crop_core(changed, keep), dtype=bool)
    mask = np.where(core_valid, core_changed.astype(np.uint8), np.uint8(MaskValue.NODATA))
    return mask.astype(np.uint8), np.asarray(crop_core(score, keep), dtype=np.float32)
