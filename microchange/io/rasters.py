"""Open BEFORE/AFTER rasters on one pixel grid and read them window by window.

The BEFORE raster defines the output grid (CRS, transform, size). If AFTER differs in CRS,
resolution or extent it is resampled onto that grid through a :class:`rasterio.vrt.WarpedVRT`,
window by window; pixels outside AFTER's footprint are invalid. Nodata values, internal masks,
alpha bands and non-finite floats all become ``valid == False``, and invalid pixels are never
reported as changed. Nothing ever reads a whole raster.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import rasterio
from affine import Affine
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from microchange.errors import (
    BandMismatchError,
    GridMismatchError,
    MissingCRSError,
    NoOverlapError,
    RasterReadError,
)
from microchange.io.stacks import BandSelection, BandSource, resolve_input
from microchange.tiling import Tile, pad_to_halo

if TYPE_CHECKING:
    from microchange.config import MaskConfig
    from microchange.coregistration import ShiftField
    from microchange.io.masks import MaskReader

__all__ = ("Grid", "PairReader", "PathLike", "TileArrays", "open_raster")

PathLike: TypeAlias = str | os.PathLike[str]

GDAL_CACHE_MB = 256
"""Cap of GDAL's block cache while a :class:`PairReader` reads, in MiB."""

_FORMATS_HINT = "give a GDAL-readable raster (GeoTIFF/COG, ENVI with its .hdr, PNG, BMP, JPEG ...)"


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
        return Affine(*self.transform)

    @property
    def crs(self) -> CRS | None:
        """The CRS as a :class:`rasterio.crs.CRS`, or None."""
        return CRS.from_wkt(self.crs_wkt) if self.crs_wkt else None

    @property
    def georeferenced(self) -> bool:
        """True when the grid has a CRS."""
        return self.crs_wkt is not None

    def window_transform(self, row_off: int, col_off: int) -> Affine:
        """Transform of a window whose top-left pixel is (row_off, col_off)."""
        return self.affine @ Affine.translation(col_off, row_off)


@dataclass
class TileArrays:
    """Both dates of one tile (core + halo), as float32, on the BEFORE grid.

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


def _is_georeferenced(ds: Any) -> bool:
    return ds.crs is not None or not ds.transform.almost_equals(Affine.identity())


def _has_nodata(ds: Any, idx: list[int]) -> bool:
    return any(MaskFlags.nodata in ds.mask_flag_enums[i - 1] for i in idx)


def _read_valid(ds: Any, idx: list[int], window: Window) -> NDArray[np.bool_]:
    """True where every selected band holds data (per-band nodata), else the dataset mask."""
    if _has_nodata(ds, idx):
        return np.asarray(ds.read_masks(idx, window=window).min(axis=0) > 0)
    return np.asarray(ds.dataset_mask(window=window) > 0)


BLOCK_CACHE_MB = 64
"""Decoded blocks kept per date while reading tiles (see :class:`BlockCache`)."""


class BlockCache:
    """Decoded blocks of one tiled raster (selected bands and validity), least recently used out.

    GDAL decodes every internal block a window touches, and its block cache does not serve
    multi-band reads of pixel-interleaved files: a tile read with a halo decodes up to 9 blocks
    that its neighbours decode again (measured: 3x the cost of the aligned reads of a 4096^2
    raster). Windows are therefore assembled from whole blocks, each read once and kept while
    neighbouring tiles need it. Values and validity are those of the same window read directly
    (each block is read with ``out_dtype="float32"`` and its validity as :func:`_read_valid`).

    Args:
        ds: Open dataset; see :meth:`usable`.
        indexes: 1-based bands to read.
        max_mb: Most decoded data kept, in MiB.
    """

    def __init__(self, ds: Any, indexes: list[int], max_mb: int = BLOCK_CACHE_MB) -> None:
        self.ds = ds
        self.indexes = indexes
        self.block_h, self.block_w = ds.block_shapes[indexes[0] - 1]
        self.max_bytes = max_mb << 20
        self.nbytes = 0
        self._blocks: OrderedDict[tuple[int, int], tuple[NDArray[Any], NDArray[np.bool_]]] = (
            OrderedDict())

    @staticmethod
    def usable(ds: Any, indexes: list[int]) -> bool:
        """True for a tiled file (not a VRT) whose selected bands share one block shape."""
        if ds.driver == "VRT":
            return False
        shapes = {ds.block_shapes[i - 1] for i in indexes}
        if len(shapes) != 1:
            return False
        bh, bw = shapes.pop()
        return bool(min(bh, bw) >= 16 and (bh < ds.height or bw < ds.width))

    def read(self, window: Window) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """(C, h, w) float32 values and (h, w) validity of a window inside the raster."""
        r0, c0 = int(window.row_off), int(window.col_off)
        r1, c1 = r0 + int(window.height), c0 + int(window.width)
        out = np.empty((len(self.indexes), r1 - r0, c1 - c0), np.float32)
        valid = np.empty((r1 - r0, c1 - c0), bool)
        bh, bw = self.block_h, self.block_w
        for br in range(r0 // bh, (r1 - 1) // bh + 1):
            for bc in range(c0 // bw, (c1 - 1) // bw + 1):
                data, v = self._block(br, bc)
                top, left = br * bh, bc * bw
                rr0, rr1 = max(r0, top), min(r1, top + data.shape[1])
                cc0, cc1 = max(c0, left), min(c1, left + data.shape[2])
                out[:, rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = data[
                    :, rr0 - top:rr1 - top, cc0 - left:cc1 - left]
                valid[rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = v[
                    rr0 - top:rr1 - top, cc0 - left:cc1 - left]
        return out, valid

    def _block(self, br: int, bc: int) -> tuple[NDArray[Any], NDArray[np.bool_]]:
        key = (br, bc)
        hit = self._blocks.get(key)
        if hit is not None:
            self._blocks.move_to_end(key)
            return hit
        top, left = br * self.block_h, bc * self.block_w
        win = Window(left, top, min(self.block_w, self.ds.width - left),
                     min(self.block_h, self.ds.height - top))
        data = self.ds.read(self.indexes, window=win, out_dtype="float32")
        entry = (data, _read_valid(self.ds, self.indexes, win))
        self._blocks[key] = entry
        self.nbytes += data.nbytes + entry[1].nbytes
        while self.nbytes > self.max_bytes and len(self._blocks) > 1:
            _, (d, v) = self._blocks.popitem(last=False)
            self.nbytes -= d.nbytes + v.nbytes
        return entry


def open_raster(path: PathLike, *, role: str = "raster") -> Any:
    """Open a raster with rasterio, turning failures into a clear :class:`RasterReadError`.

    Args:
        path: File to open.
        role: Name used in messages ('BEFORE', 'AFTER', 'truth').

    Returns:
        An open ``rasterio.DatasetReader``.

    Raises:
        RasterReadError: If the file is missing or GDAL cannot read it.
    """
    p = Path(path)
    if not p.exists():
        raise RasterReadError(f"{role} raster {str(path)!r} does not exist: check the path")
    if p.is_dir():
        raise RasterReadError(
            f"{role} raster {str(path)!r} is a directory: {_FORMATS_HINT}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(p)
    except RasterioIOError as exc:
        raise RasterReadError(
            f"cannot read {role} raster {str(path)!r} ({exc}): {_FORMATS_HINT}"
        ) from exc


class PairReader:
    """Reads windows of BEFORE and AFTER on BEFORE's grid.

    BEFORE and AFTER may each be a raster file, or a folder/glob of single-band files stacked by
    band name (see :mod:`microchange.io.stacks`).

    Args:
        before: Raster at t0 (file, folder or glob); defines the output grid.
        after: Raster at t1 (file, folder or glob); resampled onto BEFORE's grid if its grid
            differs.
        bands: 1-based band indexes used from both rasters, or band names (files of a
            folder/glob, or band descriptions of a file); default: all bands of a file.
        after_shift: Sub-pixel (rows, columns) shift applied to AFTER after alignment, from
            :func:`microchange.coregistration.estimate_shift` (default: none).
        after_shift_field: A shift varying over the raster, applied instead of ``after_shift``
            (:func:`microchange.coregistration.estimate_shift_field`; default: none).
        masks: Per-date mask and class rasters whose excluded pixels become invalid (default:
            none); read onto BEFORE's grid by :class:`microchange.io.masks.MaskReader`.

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
        after_shift: tuple[float, float] = (0.0, 0.0),
        after_shift_field: ShiftField | None = None,
        masks: MaskConfig | None = None,
    ) -> None:
        self._args: dict[str, Any] = {
            "before": before, "after": after, "bands": bands, "after_shift": after_shift,
            "after_shift_field": after_shift_field, "masks": masks}
        self.after_shift = (float(after_shift[0]), float(after_shift[1]))
        self.after_shift_field = after_shift_field
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
                from microchange.io.masks import MaskReader

                self._masks = MaskReader(masks, self.grid)
        except Exception:
            self.close()
            raise
        self.mask_files = dict(self._masks.files) if self._masks is not None else {}
        self.dtypes = (b.dtypes[0], self._after_src.dtypes[0])
        idx = list(self.bands)
        self._cache_before = BlockCache(b, idx) if BlockCache.usable(b, idx) else None
        self._cache_after = (BlockCache(self._after, idx)
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
        geo_b, geo_a = _is_georeferenced(b), _is_georeferenced(a)
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

    def read(self, r0: int, r1: int, c0: int, c1: int) -> TileArrays:
        """Read rows r0:r1 and columns c0:c1 of both dates (inside the raster, no halo).

        AFTER is co-registered by ``after_shift_field`` or ``after_shift`` when one is set. GDAL's block cache is capped
        at :data:`GDAL_CACHE_MB` while reading (its default, 5 % of RAM, would otherwise grow the
        memory of a run with the raster size).
        """
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB):
            return self._read(r0, r1, c0, c1)

    def _read(self, r0: int, r1: int, c0: int, c1: int) -> TileArrays:
        window = Window(c0, r0, c1 - c0, r1 - r0)
        idx = list(self.bands)
        if self._cache_before is not None:
            before, valid = self._cache_before.read(window)
        else:
            before = self._before.read(idx, window=window, out_dtype="float32")
            valid = _read_valid(self._before, idx, window)
        if self._masks is not None:
            valid &= self._masks.read(window)
        if self.after_shift_field is not None or self.after_shift != (0.0, 0.0):
            after, valid_after = self._read_after_shifted(r0, r1, c0, c1)
            valid &= valid_after
        else:
            after, valid_after = self._read_after(window)
            valid &= valid_after
        if before.dtype.kind == "f":
            valid &= np.isfinite(before).all(axis=0) & np.isfinite(after).all(axis=0)
        before[:, ~valid] = 0.0
        after[:, ~valid] = 0.0
        return TileArrays(before, after, valid, 0)

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
            valid = _read_valid(self._after, idx, window)
        valid &= np.isfinite(after).all(axis=0)
        after[:, ~valid] = 0.0
        return after, valid

    def _read_after_shifted(
        self, r0: int, r1: int, c0: int, c1: int
    ) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        from microchange.coregistration import shift_image, shift_image_field, shift_margin

        field = self.after_shift_field
        dy, dx = self.after_shift
        m = shift_margin(field.max_abs(), 0.0) if field is not None else shift_margin(dy, dx)
        h, w = self._before.height, self._before.width
        tile = Tile(0, r0, c0, r1 - r0, c1 - c0, halo=m)
        rr0, rr1, cc0, cc1 = tile.read_bounds(h, w)
        after, valid = self._read_after(Window(cc0, rr0, cc1 - cc0, rr1 - rr0))
        pads = tile.pad_widths(h, w)
        after = pad_to_halo(after, pads)  # type: ignore[assignment]
        valid = pad_to_halo(valid, pads)  # type: ignore[assignment]
        if field is not None:
            fdy, fdx = field.sample(r0, r1, c0, c1)
            return shift_image_field(after, valid, fdy, fdx, m)
        return shift_image(after, valid, dy, dx, m)

    def read_tile(self, tile: Tile) -> TileArrays:
        """Read a tile's core and halo; the halo beyond the raster edge is reflected."""
        h, w = self.grid.height, self.grid.width
        r0, r1, c0, c1 = tile.read_bounds(h, w)
        arrays = self.read(r0, r1, c0, c1)
        pads = tile.pad_widths(h, w)
        return TileArrays(
            pad_to_halo(arrays.before, pads),  # type: ignore[arg-type]
            pad_to_halo(arrays.after, pads),  # type: ignore[arg-type]
            pad_to_halo(arrays.valid, pads),  # type: ignore[arg-type]
            tile.halo,
        )

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
    def reopen(self) -> PairReader:
        """A new reader of the same inputs with the same options.

        One per thread: GDAL datasets must not be shared between threads.
        """
        return PairReader(**self._args)

    def close(self) -> None:
        """Close every open dataset."""
        if self._masks is not None:
            self._masks.close()
        if self._after is not self._after_src:
            self._after.close()
        self._after_src.close()
        self._before.close()

    def __enter__(self) -> PairReader:  # noqa: PYI034
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
