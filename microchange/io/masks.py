"""Per-date mask rasters (valid-data masks, class rasters such as the Sentinel-2 SCL) on a grid.

A :class:`MaskReader` opens the rasters named by a :class:`~microchange.config.MaskConfig` and
reads them onto the output grid (BEFORE's) window by window:

* a valid-data mask keeps pixels whose band-1 value is nonzero (zero with ``invert_masks``);
* a class raster keeps pixels whose band-1 value is not in ``exclude_classes``;
* pixels outside a mask raster's footprint, at its nodata value, or non-finite are excluded.

A mask raster on another grid (CRS, resolution, extent; e.g. the 20 m SCL under 10 m bands) is
resampled with nearest neighbour through a :class:`rasterio.vrt.WarpedVRT`, so a window reads only
the part of the mask under it. Without georeference, a mask must have the grid's size.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from rasterio._err import CPLE_BaseError
from rasterio.enums import Resampling
from rasterio.errors import CRSError, RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from microchange.errors import GridMismatchError, MissingCRSError, NoOverlapError
from microchange.io.datasets import (
    Closing,
    crs_text,
    is_georeferenced,
    open_raster,
    read_errors,
)
from microchange.types import Grid

if TYPE_CHECKING:
    from microchange.config import MaskConfig

__all__ = ("MASK_FLAGS", "MaskReader")

MASK_FLAGS = {
    "before_mask": "--before-mask",
    "after_mask": "--after-mask",
    "before_classes": "--before-classes",
    "after_classes": "--after-classes",
}
"""Config field -> command-line flag, for messages."""


class _Layer:
    """One mask raster aligned onto the grid."""

    def __init__(self, field: str, path: str, grid: Grid, *, classes: tuple[int, ...] | None,
                 invert: bool) -> None:
        self.field, self.path = field, path
        self.classes = None if classes is None else np.asarray(classes)
        self.invert = invert
        flag = MASK_FLAGS[field]
        self.src = open_raster(path, role=flag)
        self.vrt: Any = None
        try:
            self._align(grid, flag)
        except Exception:
            self.src.close()
            raise

    def _align(self, grid: Grid, flag: str) -> None:
        s = self.src
        georef = is_georeferenced(s)
        if not grid.georeferenced or not georef:  # matched by pixel position
            if (s.height, s.width) != (grid.height, grid.width):
                raise GridMismatchError(
                    f"{flag} {self.path!r} is {s.height}x{s.width} px and not georeferenced "
                    f"(or the inputs are not): it must then have the output grid's size "
                    f"{grid.height}x{grid.width}; georeference it or resize it"
                )
            return
        if s.crs is None:
            raise MissingCRSError(f"{flag} {self.path!r} has a transform but no CRS: set its "
                                  "CRS (gdal_edit.py -a_srs)")
        same = (s.crs == grid.crs and (s.height, s.width) == (grid.height, grid.width)
                and s.transform.almost_equals(grid.affine))
        if same:
            return
        from rasterio.warp import transform_bounds

        try:
            mb = transform_bounds(s.crs, grid.crs, *s.bounds)
        except (CRSError, RasterioError, CPLE_BaseError) as exc:
            raise GridMismatchError(
                f"{flag} {self.path!r} (CRS {crs_text(s.crs)}) cannot be put on the output grid "
                f"(CRS {crs_text(grid.crs)}): GDAL cannot relate the two CRSs; fix its CRS "
                "(gdal_edit.py -a_srs EPSG:...) or reproject it (gdalwarp -t_srs)") from exc
        a = grid.affine
        xs = (a.c, a.c + grid.width * a.a)
        ys = (a.f, a.f + grid.height * a.e)
        if mb[0] >= max(xs) or mb[2] <= min(xs) or mb[1] >= max(ys) or mb[3] <= min(ys):
            raise NoOverlapError(f"{flag} {self.path!r} does not overlap the output grid "
                                 "(BEFORE's): give the mask of the same place")
        self.vrt = WarpedVRT(s, crs=grid.crs, transform=grid.affine, width=grid.width,
                             height=grid.height, resampling=Resampling.nearest, add_alpha=True)

    def read(self, window: Window) -> NDArray[np.bool_]:
        if self.vrt is not None:
            stack = self.vrt.read([1, self.vrt.count], window=window)
            values, keep = stack[0], stack[1] > 0
        else:
            values = self.src.read(1, window=window)
            keep = self.src.read_masks(1, window=window) > 0
        if values.dtype.kind in "fc":
            keep &= np.isfinite(values)
        if self.classes is not None:
            keep &= ~np.isin(values, self.classes)
        else:
            keep &= (values == 0) if self.invert else (values != 0)
        return np.asarray(keep, dtype=bool)

    def close(self) -> None:
        if self.vrt is not None:
            self.vrt.close()
        self.src.close()


class MaskReader(Closing):
    """Reads the combined validity of every configured mask raster on a grid.

    Args:
        masks: Which rasters to read and how.
        grid: The output grid (BEFORE's).

    Raises:
        RasterReadError: If a mask raster cannot be read.
        MissingCRSError: If a mask has a transform but no CRS.
        GridMismatchError: If a mask cannot be put on the grid (no georeference, other size).
        NoOverlapError: If a mask does not overlap the grid.
    """

    def __init__(self, masks: MaskConfig, grid: Grid) -> None:
        self._layers: list[_Layer] = []
        self.files: dict[str, str] = {}
        try:
            for field in MASK_FLAGS:
                path = getattr(masks, field)
                if path is None:
                    continue
                classes = masks.exclude_classes if field.endswith("_classes") else None
                self._layers.append(_Layer(field, path, grid, classes=classes,
                                           invert=masks.invert_masks))
                self.files[field] = path
        except Exception:
            self.close()
            raise

    def read(self, window: Window) -> NDArray[np.bool_]:
        """(H, W) bool of ``window``: True where every mask keeps the pixel."""
        keep = np.ones((int(window.height), int(window.width)), dtype=bool)
        for layer in self._layers:
            with read_errors(layer.path, role=MASK_FLAGS[layer.field]):
                keep &= layer.read(window)
        return keep

    def close(self) -> None:
        """Close every mask raster."""
        for layer in self._layers:
            layer.close()
        self._layers = []
