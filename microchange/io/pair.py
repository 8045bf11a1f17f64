"""Read BEFORE and AFTER window by window on one pixel grid (BEFORE's).

If AFTER differs in CRS, resolution or extent it is resampled onto BEFORE's grid through a
:class:`rasterio.vrt.WarpedVRT`, window by window; pixels outside AFTER's footprint are invalid.
Nodata values, internal masks, alpha bands, mask rasters and non-finite floats all become
``valid == False``, and invalid pixels are never reported as changed. Nothing reads a whole
raster. A co-registration of AFTER (:class:`AfterWarp`) is applied as windows are read.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio._err import CPLE_BaseError
from rasterio.enums import Resampling
from rasterio.errors import CRSError, RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from microchange.errors import (
    BandMismatchError,
    GridMismatchError,
    MissingCRSError,
    NoOverlapError,
)
from microchange.io.datasets import (
    BLOCK_CACHE_MB,
    GDAL_CACHE_MB,
    BlockCache,
    Closing,
    crs_text,
    is_georeferenced,
    read_errors,
    read_valid,
)
from microchange.io.masks import MaskReader
from microchange.io.stacks import BandSelection, resolve_input
from microchange.io.vrt import BandSource
from microchange.tiling import Tile, pad_to_halo
from microchange.types import Grid, PairArrays, PathLike

if TYPE_CHECKING:
    from microchange.config import MaskConfig

__all__ = ("AfterWarp", "PairReader")


def _first_words(exc: BaseException) -> str:
    """GDAL/PROJ's message up to any embedded JSON/WKT (PROJ quotes whole CRS definitions)."""
    text = " ".join(str(exc).split())
    return text.split("{", 1)[0].split("[", 1)[0].rstrip(" '`")[:160] or type(exc).__name__


class AfterWarp(Protocol):
    """A resampling of AFTER applied as its windows are read (e.g. a co-registration shift)."""

    @property
    def margin(self) -> int:
        """Pixels read around a window on every side."""
        ...

    def apply(self, after: NDArray[np.float32], valid: NDArray[np.bool_], r0: int, r1: int,
              c0: int, c1: int) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """Resample rows r0:r1, columns c0:c1 from the window read with :attr:`margin` around.

        Args:
            after: (C, h + 2 margin, w + 2 margin) values of AFTER (reflected beyond the edge).
            valid: (h + 2 margin, w + 2 margin) validity.
            r0: First row of the window.
            r1: Row after the window.
            c0: First column.
            c1: Column after the window.

        Returns:
            (C, h, w) values and (h, w) validity of the window.
        """
        ...


class PairReader(Closing):
    """Reads windows of BEFORE and AFTER on BEFORE's grid.

    BEFORE and AFTER may each be a raster file, or a folder/glob of single-band files stacked by
    band name (see :mod:`microchange.io.stacks`).

    Args:
        before: Raster at t0 (file, folder or glob); defines the output grid.
        after: Raster at t1 (file, folder or glob); resampled onto BEFORE's grid if its grid
            differs.
        bands: 1-based band indexes used from both rasters, or band names (files of a
            folder/glob, or band descriptions of a file); default: all bands of a file.
        after_warp: Resampling of AFTER applied after alignment, e.g. the co-registration of
            :mod:`microchange.preprocess.alignment` (default: none).
        masks: Per-date mask and class rasters whose excluded pixels become invalid (default:
            none); read onto BEFORE's grid by :class:`microchange.io.masks.MaskReader`.
        block_cache_mb: Decoded blocks kept per date for the next windows
            (:class:`~microchange.io.datasets.BlockCache`): enough for neighbouring tiles to
            share their halos; a reader whose windows never share a block needs only 1.

    Attributes:
        sources: For each date ('before', 'after'), the file of each band of a stack, or None.
        mask_files: Config field -> path of each mask raster in use.

    Raises:
        RasterReadError: If a file cannot be read.
        ConfigError: If ``bands`` mixes indexes and names.
        BandMismatchError: If band counts differ and no selection is given, or a band is missing
            (or a band name matches no file, or several).
        MissingCRSError: If exactly one of the rasters is georeferenced.
        GridMismatchError: If two non-georeferenced rasters differ in size.
        NoOverlapError: If the footprints do not overlap.
    """

    def __init__(
        self,
        before: PathLike,
        after: PathLike,
        *,
        bands: BandSelection = None,
        after_warp: AfterWarp | None = None,
        masks: MaskConfig | None = None,
        block_cache_mb: int = BLOCK_CACHE_MB,
    ) -> None:
        self._args: dict[str, Any] = {
            "before": before, "after": after, "bands": bands, "after_warp": after_warp,
            "masks": masks, "block_cache_mb": block_cache_mb}
        self.after_warp = after_warp
        self.before_path = str(before)
        self.after_path = str(after)
        before_in = resolve_input(before, bands, role="BEFORE")
        self._before = before_in.dataset
        try:
            after_in = resolve_input(after, bands, role="AFTER")
        except Exception:
            self._before.close()
            raise
        self._after_src = after_in.dataset
        self.sources: dict[str, tuple[BandSource, ...] | None] = {
            "before": before_in.sources, "after": after_in.sources}
        self._after: Any = self._after_src
        self._alpha: int | None = None
        self._masks: MaskReader | None = None
        self.warnings: list[str] = []
        b = self._before
        crs_wkt = b.crs.to_wkt() if b.crs is not None else None
        self.grid = Grid(b.height, b.width, tuple(b.transform)[:6], crs_wkt)
        try:
            self.bands = self._check_bands(before_in.bands)
            self.alignment = self._align()
            if masks is not None and masks.active:
                self._masks = MaskReader(masks, self.grid)
        except Exception:
            self.close()
            raise
        self.mask_files = dict(self._masks.files) if self._masks is not None else {}
        self.dtypes = (b.dtypes[0], self._after_src.dtypes[0])
        idx = list(self.bands)
        self._cache_before = (BlockCache(b, idx, block_cache_mb)
                              if BlockCache.usable(b, idx) else None)
        self._cache_after = (BlockCache(self._after, idx, block_cache_mb)
                             if self._alpha is None and BlockCache.usable(self._after, idx)
                             else None)

    # -- checks ------------------------------------------------------------------------------
    def _check_bands(self, bands: tuple[int, ...] | None) -> tuple[int, ...]:
        nb, na = self._before.count, self._after_src.count
        if bands is None:
            if nb != na:
                raise BandMismatchError(
                    f"BEFORE {self.before_path!r} has {nb} bands but AFTER {self.after_path!r} "
                    f"has {na}: choose common bands with --bands (e.g. --bands 1,2,3)"
                )
            return tuple(range(1, nb + 1))
        for role, path, count in (("BEFORE", self.before_path, nb), ("AFTER", self.after_path, na)):
            missing = [i for i in bands if i > count]
            if missing:
                raise BandMismatchError(
                    f"band(s) {missing} requested but {role} {path!r} has only {count} bands: "
                    f"use indexes 1..{count}"
                )
        return bands

    def _align(self) -> str:
        b, a = self._before, self._after_src
        geo_b, geo_a = is_georeferenced(b), is_georeferenced(a)
        if geo_b != geo_a:
            yes, no = (self.before_path, self.after_path) if geo_b else (
                self.after_path, self.before_path)
            raise MissingCRSError(
                f"{yes!r} is georeferenced but {no!r} is not: georeference both (e.g. "
                "gdal_translate -a_srs/-a_ullr) or neither"
            )
        if not geo_b:
            if (b.height, b.width) != (a.height, a.width):
                raise GridMismatchError(
                    f"BEFORE {self.before_path!r} is {b.height}x{b.width} px and AFTER "
                    f"{self.after_path!r} is {a.height}x{a.width} px; without georeference they "
                    "must have the same size: crop or georeference them"
                )
            self.warnings.append(
                "inputs are not georeferenced: pixels are matched by position and outputs "
                "are written on a plain pixel grid"
            )
            return "pixel-grid"
        same = (
            b.crs == a.crs
            and (b.height, b.width) == (a.height, a.width)
            and b.transform.almost_equals(a.transform)
        )
        if same:
            return "identical"
        if b.crs is None or a.crs is None:
            raise MissingCRSError(
                f"{self.before_path!r} and {self.after_path!r} have transforms but "
                "no CRS on one of them: set the CRS of both"
            )
        with self._crs_errors():
            self._check_overlap()
            self._after = WarpedVRT(
                a,
                crs=b.crs,
                transform=b.transform,
                width=b.width,
                height=b.height,
                resampling=Resampling.bilinear,
                add_alpha=True,
            )
        self._alpha = self._after.count
        return "resampled"

    @contextmanager
    def _crs_errors(self) -> Iterator[None]:
        """GDAL/PROJ failing to relate the two CRSs (e.g. a damaged or engineering CRS)."""
        try:
            yield
        except (CRSError, RasterioError, CPLE_BaseError) as exc:
            b, a = self._before.crs, self._after_src.crs
            raise GridMismatchError(
                f"cannot resample AFTER {self.after_path!r} (CRS {crs_text(a)}) onto BEFORE "
                f"{self.before_path!r} (CRS {crs_text(b)}): {_first_words(exc)}; "
                "check both CRSs with gdalinfo and fix the wrong one (gdal_edit.py -a_srs "
                "EPSG:...) or reproject AFTER onto BEFORE's CRS (gdalwarp -t_srs)"
            ) from exc

    def _check_overlap(self) -> None:
        from rasterio.warp import transform_bounds

        b, a = self._before, self._after_src
        ab = transform_bounds(a.crs, b.crs, *a.bounds)
        bb = b.bounds
        if ab[0] >= bb[2] or ab[2] <= bb[0] or ab[1] >= bb[3] or ab[3] <= bb[1]:
            raise NoOverlapError(
                f"AFTER {self.after_path!r} (bounds {tuple(round(v, 3) for v in ab)} in BEFORE's "
                f"CRS) does not overlap BEFORE {self.before_path!r} (bounds "
                f"{tuple(round(v, 3) for v in bb)}): check that both cover the same place"
            )

    def source(self, role: str) -> Any:
        """The open dataset of ``role`` ('before' or 'after') as read, before any alignment."""
        return self._before if role == "before" else self._after_src

    # -- reading -----------------------------------------------------------------------------
    @property
    def count(self) -> int:
        """Number of bands read from each date."""
        return len(self.bands)

    @property
    def block_shape(self) -> tuple[int, int] | None:
        """(rows, cols) of BEFORE's internal blocks when windows are read block by block, else None.

        A window inside one block decodes that block only; one that straddles block edges
        decodes every block it touches (up to 4 for a small window).
        """
        cache = self._cache_before
        return (cache.block_h, cache.block_w) if cache is not None else None

    def read(self, r0: int, r1: int, c0: int, c1: int) -> PairArrays:
        """Read rows r0:r1 and columns c0:c1 of both dates (inside the raster, no halo).

        AFTER is resampled by ``after_warp`` when one is set. GDAL's block cache is capped at
        :data:`~microchange.io.datasets.GDAL_CACHE_MB` while reading.
        """
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
            return self._read(r0, r1, c0, c1)

    def _read(self, r0: int, r1: int, c0: int, c1: int) -> PairArrays:
        window = Window(c0, r0, c1 - c0, r1 - r0)
        idx = list(self.bands)
        with read_errors(self.before_path, role="BEFORE"):
            if self._cache_before is not None:
                before, valid = self._cache_before.read(window)
            else:
                before = self._before.read(idx, window=window, out_dtype="float32")
                valid = read_valid(self._before, idx, window)
        if self._masks is not None:
            valid &= self._masks.read(window)
        with read_errors(self.after_path, role="AFTER"):
            if self.after_warp is not None:
                after, valid_after = self._read_after_warped(self.after_warp, r0, r1, c0, c1)
            else:
                after, valid_after = self._read_after(window)
        valid &= valid_after
        if before.dtype.kind == "f":
            valid &= np.isfinite(before).all(axis=0) & np.isfinite(after).all(axis=0)
        before[:, ~valid] = 0.0
        after[:, ~valid] = 0.0
        return PairArrays(before, after, valid, 0)

    def _read_after(self, window: Window) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        idx = list(self.bands)
        if self._alpha is not None:
            stack = self._after.read([*idx, self._alpha], window=window, out_dtype="float32")
            after, alpha = stack[:-1], stack[-1]
            valid = alpha > 0
            for k, i in enumerate(idx):
                nodata = self._after_src.nodatavals[i - 1]
                if nodata is not None and not math.isnan(nodata):
                    valid &= after[k] != np.float32(nodata)
        elif self._cache_after is not None:
            after, valid = self._cache_after.read(window)
        else:
            after = self._after.read(idx, window=window, out_dtype="float32")
            valid = read_valid(self._after, idx, window)
        valid &= np.isfinite(after).all(axis=0)
        after[:, ~valid] = 0.0
        return after, valid

    def _read_after_warped(
        self, warp: AfterWarp, r0: int, r1: int, c0: int, c1: int
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        h, w = self._before.height, self._before.width
        tile = Tile(0, r0, c0, r1 - r0, c1 - c0, halo=warp.margin)
        rr0, rr1, cc0, cc1 = tile.read_bounds(h, w)
        after, valid = self._read_after(Window(cc0, rr0, cc1 - cc0, rr1 - rr0))
        pads = tile.pad_widths(h, w)
        after = pad_to_halo(after, pads)  # type: ignore[assignment]
        valid = pad_to_halo(valid, pads)  # type: ignore[assignment]
        return warp.apply(after, valid, r0, r1, c0, c1)

    def read_tile(self, tile: Tile) -> PairArrays:
        """Read a tile's core and halo; the halo beyond the raster edge is reflected."""
        h, w = self.grid.height, self.grid.width
        r0, r1, c0, c1 = tile.read_bounds(h, w)
        arrays = self.read(r0, r1, c0, c1)
        pads = tile.pad_widths(h, w)
        return PairArrays(
            pad_to_halo(arrays.before, pads),  # type: ignore[arg-type]
            pad_to_halo(arrays.after, pads),  # type: ignore[arg-type]
            pad_to_halo(arrays.valid, pads),  # type: ignore[arg-type]
            tile.halo,
        )

    def beyond_float32(self, side: int = 512) -> str | None:
        """Why values could not be read, if a date holds finite values beyond float32's range.

        Values are computed in float32; larger float64 values become infinite and so invalid.
        Looks at a central window of ``side`` px of each date as stored.

        Returns:
            A sentence naming the file, its largest value and the fix, or None.
        """
        limit = float(np.finfo(np.float32).max)
        for role, path, ds in (("BEFORE", self.before_path, self._before),
                               ("AFTER", self.after_path, self._after_src)):
            if ds.dtypes[0] != "float64":
                continue
            h, w = min(side, ds.height), min(side, ds.width)
            window = Window((ds.width - w) // 2, (ds.height - h) // 2, w, h)
            with read_errors(path, role=role):
                values = ds.read(list(self.bands), window=window)
            big = np.abs(values[np.isfinite(values)])
            if big.size and big.max() > limit:
                return (f"{role} {path!r} holds values up to {big.max():.3g} ({ds.dtypes[0]}), "
                        f"beyond the float32 range (+-{limit:.3g}) microchange computes in: "
                        "rescale it (e.g. gdal_translate -ot Float32 -scale) or set those "
                        "pixels to nodata")
        return None

    def pixel_area_m2(self) -> float:
        """Area of one pixel in square metres (NaN without a CRS; approximate for lon/lat)."""
        g = self.grid
        crs = g.crs
        if crs is None:
            return math.nan
        a = g.affine
        area = abs(a.a * a.e - a.b * a.d)
        if crs.is_geographic:
            # Area of the central pixel on the WGS84 ellipsoid (good to <0.1% over a scene).
            from pyproj import Geod

            cx, cy = a @ (g.width / 2, g.height / 2)
            dx, dy = abs(a.a), abs(a.e)
            geod = Geod(ellps="WGS84")
            lons = [cx, cx + dx, cx + dx, cx]
            lats = [cy, cy, cy + dy, cy + dy]
            return float(abs(geod.polygon_area_perimeter(lons, lats)[0]))
        return float(area * (crs.linear_units_factor[1] ** 2))

    # -- lifecycle ---------------------------------------------------------------------------
    def reopen(self, *, block_cache_mb: int | None = None) -> PairReader:
        """A new reader of the same inputs with the same options.

        One per thread: GDAL datasets must not be shared between threads.

        Args:
            block_cache_mb: Another size of its block cache (default: this reader's).
        """
        args = dict(self._args)
        if block_cache_mb is not None:
            args["block_cache_mb"] = block_cache_mb
        return PairReader(**args)

    def close(self) -> None:
        """Close every open dataset."""
        if self._masks is not None:
            self._masks.close()
        if self._after is not self._after_src:
            self._after.close()
        self._after_src.close()
        self._before.close()
