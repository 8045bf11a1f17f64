"""Types shared by every stage: the output grid, the arrays of a pair, mask codes, output names.

A leaf module: it imports nothing from microchange, so any layer may use it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Final, TypeAlias

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from affine import Affine
    from rasterio.crs import CRS

__all__ = (
    "CHANGES_TABLE",
    "CHANGE_MASK",
    "CHANGE_SCORE",
    "METRICS_NAME",
    "OUTPUT_NAMES",
    "REPORT_DIR",
    "REPORT_NAME",
    "RUN_MANIFEST",
    "STAGING_DIR",
    "TILES_TABLE",
    "Grid",
    "MaskValue",
    "PairArrays",
    "PathLike",
    "State",
    "is_remote",
)

PathLike: TypeAlias = str | os.PathLike[str]
"""A file system path."""

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path: PathLike) -> bool:
    """True for GDAL virtual file systems (``/vsicurl/...``, ``/vsis3/...``) and URLs.

    Such a path goes to GDAL as given: never resolved, ``stat``-ed or opened with ``open()``.
    """
    text = os.fspath(path)
    return text.startswith("/vsi") or bool(_URI.match(text))


State: TypeAlias = dict[str, NDArray[np.generic]]
"""Fitted parameters of a stage as named arrays (saved to ``.npz`` without pickle)."""


class MaskValue(IntEnum):
    """Pixel values of ``change_mask.tif``."""

    UNCHANGED = 0
    CHANGED = 1
    NODATA = 255


CHANGE_MASK: Final = "change_mask.tif"
CHANGE_SCORE: Final = "change_score.tif"
TILES_TABLE: Final = "tiles.parquet"
CHANGES_TABLE: Final = "changes.parquet"
RUN_MANIFEST: Final = "run.json"
OUTPUT_NAMES: Final = (CHANGE_MASK, CHANGE_SCORE, TILES_TABLE, CHANGES_TABLE, RUN_MANIFEST)
"""Files of a finished detection run, in the order they are published (``run.json`` last)."""
METRICS_NAME: Final = "metrics.json"
REPORT_NAME: Final = "report.html"
REPORT_DIR: Final = "report"
STAGING_DIR: Final = ".microchange-staging"
"""Folder under ``OUT`` holding the state of runs in progress."""


@dataclass(frozen=True)
class Grid:
    """The pixel grid of the outputs (that of BEFORE).

    Attributes:
        height: Rows.
        width: Columns.
        transform: Affine coefficients (a, b, c, d, e, f) of pixel -> CRS coordinates.
        crs_wkt: CRS as WKT, or None for a plain pixel grid.
    """

    height: int
    width: int
    transform: tuple[float, float, float, float, float, float]
    crs_wkt: str | None

    @property
    def affine(self) -> Affine:
        """The transform as an :class:`affine.Affine`."""
        from affine import Affine

        return Affine(*self.transform)

    @property
    def crs(self) -> CRS | None:
        """The CRS as a :class:`rasterio.crs.CRS`, or None."""
        from rasterio.crs import CRS

        return CRS.from_wkt(self.crs_wkt) if self.crs_wkt else None

    @property
    def georeferenced(self) -> bool:
        """True when the grid has a CRS."""
        return self.crs_wkt is not None

    def window_transform(self, row_off: int, col_off: int) -> Affine:
        """Transform of a window whose top-left pixel is (row_off, col_off)."""
        from affine import Affine

        return self.affine @ Affine.translation(col_off, row_off)


@dataclass
class PairArrays:
    """Both dates of one block (a tile or a sample block, core + halo) on BEFORE's grid.

    The same container carries band values as read, after preprocessing, and as features.

    Attributes:
        before: (C, H, W) float32 values at t0; invalid pixels hold 0.
        after: (C, H, W) float32 values at t1; invalid pixels hold 0.
        valid: (H, W) bool, True where both dates hold data.
        halo: Context pixels on each side around the core.
    """

    before: NDArray[np.float32]
    after: NDArray[np.float32]
    valid: NDArray[np.bool_]
    halo: int
