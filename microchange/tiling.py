"""Tile grid with a halo: windows to read, cores to write.

A raster of any size is processed tile by tile in bounded memory. Each tile is read with a halo of
``halo`` pixels on every side so that neighbourhood operations (filters, CNN receptive fields,
morphology) see the same context whatever the tile size; only the tile's *core* is written back.
Beyond the raster's own edges the halo is filled by reflection (:func:`pad_to_halo`), the same rule
for every tile, so results are identical for any tile size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from microchange.errors import ConfigError

__all__ = ("Tile", "crop_core", "iter_blocks", "pad_to_halo", "plan_tiles")


@dataclass(frozen=True)
class Tile:
    """One tile of the grid.

    Attributes:
        tile_id: Row-major index of the tile in the grid.
        row_off: First row of the core in raster pixels.
        col_off: First column of the core in raster pixels.
        height: Core height in pixels.
        width: Core width in pixels.
        halo: Context pixels on every side of the core.
    """

    tile_id: int
    row_off: int
    col_off: int
    height: int
    width: int
    halo: int = 0

    def read_bounds(self, raster_height: int, raster_width: int) -> tuple[int, int, int, int]:
        """Rows and columns (r0, r1, c0, c1) of core + halo, clipped to the raster."""
        r0 = max(self.row_off - self.halo, 0)
        c0 = max(self.col_off - self.halo, 0)
        r1 = min(self.row_off + self.height + self.halo, raster_height)
        c1 = min(self.col_off + self.width + self.halo, raster_width)
        return r0, r1, c0, c1

    def pad_widths(
        self, raster_height: int, raster_width: int
    ) -> tuple[tuple[int, int], tuple[int, int]]:
        """Rows/columns missing on each side of the clipped read, to be filled by reflection."""
        r0, r1, c0, c1 = self.read_bounds(raster_height, raster_width)
        top = r0 - (self.row_off - self.halo)
        left = c0 - (self.col_off - self.halo)
        bottom = (self.row_off + self.height + self.halo) - r1
        right = (self.col_off + self.width + self.halo) - c1
        return (top, bottom), (left, right)


def plan_tiles(height: int, width: int, *, tile_size: int, halo: int = 0) -> list[Tile]:
    """Cut a raster into a row-major grid of square tiles.

    Args:
        height: Raster height in pixels (> 0).
        width: Raster width in pixels (> 0).
        tile_size: Core side in pixels (> 0); edge tiles are smaller.
        halo: Context pixels read around each core (>= 0).

    Returns:
        Tiles covering every pixel exactly once by their cores.

    Raises:
        ConfigError: If a size is not positive or the halo is negative.
    """
    if height <= 0 or width <= 0 or tile_size <= 0 or halo < 0:
        raise ConfigError(
            f"invalid tiling: height={height!r}, width={width!r}, tile_size={tile_size!r}, "
            f"halo={halo!r}; sizes must be > 0 and halo >= 0"
        )
    tiles: list[Tile] = []
    for row_off in range(0, height, tile_size):
        for col_off in range(0, width, tile_size):
            tiles.append(
                Tile(
                    tile_id=len(tiles),
                    row_off=row_off,
                    col_off=col_off,
                    height=min(tile_size, height - row_off),
                    width=min(tile_size, width - col_off),
                    halo=halo,
                )
            )
    return tiles


def iter_blocks(height: int, width: int, block: int) -> Iterator[tuple[int, int, int, int]]:
    """Row-major (row_off, col_off, h, w) blocks of at most ``block`` pixels a side."""
    for r in range(0, height, block):
        for c in range(0, width, block):
            yield r, c, min(block, height - r), min(block, width - c)


def pad_to_halo(
    array: NDArray[np.generic],
    pads: tuple[tuple[int, int], tuple[int, int]],
    *,
    mode: str = "reflect",
) -> NDArray[np.generic]:
    """Pad the last two axes of ``array`` by ``pads`` (rows, cols) using one fixed rule.

    Args:
        array: (..., H, W) array read from inside the raster.
        pads: ((top, bottom), (left, right)) pixels to add.
        mode: numpy pad mode; 'reflect' mirrors without repeating the edge pixel. Arrays of a
            single row or column fall back to 'edge'.

    Returns:
        The padded array (the input itself when nothing is missing).
    """
    (top, bottom), (left, right) = pads
    if top == bottom == left == right == 0:
        return array
    if array.shape[-1] < 2 or array.shape[-2] < 2:
        mode = "edge"
    width = [(0, 0)] * (array.ndim - 2) + [(top, bottom), (left, right)]
    return np.pad(array, width, mode=mode)  # type: ignore[call-overload,no-any-return]


def crop_core(array: NDArray[np.generic], halo: int) -> NDArray[np.generic]:
    """Drop ``halo`` pixels from every side of the last two axes."""
    if halo == 0:
        return array
    return array[..., halo:-halo, halo:-halo]
