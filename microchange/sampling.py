"""The global sample: blocks spread over the whole raster, independent of the tile size.

Everything that is *fitted* (band statistics, scorers, thresholds) is fitted on this sample, never
on one tile, so a quiet tile is not forced to show change and results do not depend on tiling.
"""

from __future__ import annotations

import numpy as np

from microchange.tiling import Tile, iter_blocks

__all__ = ("SAMPLE_BLOCK", "sample_blocks")

SAMPLE_BLOCK = 64
"""Side of the square sample blocks in pixels (large rasters)."""

_WHOLE_BLOCK = 256


def sample_blocks(
    height: int, width: int, *, halo: int, n_pixels: int, seed: int = 0
) -> list[Tile]:
    """Blocks to read for fitting: the whole raster if small, else random blocks over all of it.

    Args:
        height: Raster height in pixels.
        width: Raster width in pixels.
        halo: Context pixels read around each block.
        n_pixels: Target number of sample pixels.
        seed: Seed of the random block choice.

    Returns:
        Non-overlapping blocks (as :class:`~microchange.tiling.Tile` with ``halo``), row-major.
    """
    if height * width <= n_pixels:
        blocks = iter_blocks(height, width, _WHOLE_BLOCK)
        return [Tile(i, r, c, h, w, halo) for i, (r, c, h, w) in enumerate(blocks)]
    grid = list(iter_blocks(height, width, SAMPLE_BLOCK))
    n = min(len(grid), max(1, int(np.ceil(n_pixels / SAMPLE_BLOCK**2))))
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(grid), size=n, replace=False))
    out = []
    for i, j in enumerate(chosen.tolist()):
        r, c, h, w = grid[j]
        out.append(Tile(i, r, c, h, w, halo))
    return out
