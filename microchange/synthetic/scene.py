"""The synthetic scene: its record, its generation and its GeoTIFF files (see the package)."""

from __future__ import annotations

import math
import os
import pathlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Final, TypeAlias

import numpy as np
import rasterio
from affine import Affine
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.errors import CRSError, RasterioError
from rasterio.windows import Window
from scipy import ndimage

from microchange.errors import ConfigError, OutputError
from microchange.synthetic.changes import BORDER, MIN_NOISE_REF, implant_changes
from microchange.synthetic.landscape import F32, band_names, make_landscape

__all__ = ("SyntheticScene", "make_scene", "write_scene")

PathLike: TypeAlias = str | os.PathLike[str]

_WRITE_DTYPES: Final = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")
_COMPRESS: Final = ("deflate", "lzw", "zstd", "none")



@dataclass(frozen=True, eq=False)
class SyntheticScene:
    """A bitemporal synthetic scene and its change truth.

    Attributes:
        before: (bands, H, W) float32 reflectance-like values at t0, mostly in [0, 0.6]
            (noise may push a few values slightly below 0).
        after: (bands, H, W) float32 values at t1: BEFORE shifted, rescaled, re-noised and
            with the implanted changes.
        truth: (H, W) uint8; 1 where the ground changed, 0 elsewhere.
        transform: Affine pixel-to-map transform of the grid (north up).
        crs: CRS of the grid, as given by the user (e.g. ``"EPSG:32631"``).
        changes: One dict per implanted change: ``id``, ``kind`` (``micro``, ``building``,
            ``clearing``, ``flooding`` or ``crop_damage``), ``material`` (the new material),
            ``row``/``col`` (the pixel of the change nearest its centroid), ``x``/``y`` (map
            coordinates of that pixel's centre), ``bbox`` (row_start, col_start, row_stop,
            col_stop), ``area_px``, ``contrast`` (RMS change over bands and pixels, in units
            of the noise std, or of 0.005 when ``noise`` is smaller) and ``delta_rms`` (the
            same RMS change in reflectance).
        gain: Per-band gain applied to AFTER.
        offset: Per-band offset applied to AFTER.
        shift: (rows, cols) sub-pixel shift applied to AFTER, as in ``scipy.ndimage.shift``:
            AFTER at (r, c) shows the ground BEFORE shows at (r - rows, c - cols).
    """

    before: F32
    after: F32
    truth: NDArray[np.uint8]
    transform: Affine
    crs: str
    changes: list[dict[str, Any]]
    gain: tuple[float, ...] = ()
    offset: tuple[float, ...] = ()
    shift: tuple[float, float] = (0.0, 0.0)


# --------------------------------------------------------------------------- validation
def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, Integral) and not isinstance(value, bool) and low <= int(value) <= high:
        return int(value)
    raise ConfigError(f"Invalid {name}: {value!r}. Must be an integer in [{low}, {high}].")


def _check_float(name: str, value: object, low: float, high: float, *, open_low: bool) -> float:
    if isinstance(value, Real) and not isinstance(value, bool):
        number = float(value)
        above = low < number if open_low else low <= number
        if math.isfinite(number) and above and number <= high:
            return number
    bracket = "(" if open_low else "["
    raise ConfigError(f"Invalid {name}: {value!r}. Must be a number in {bracket}{low}, {high}].")


# --------------------------------------------------------------------------- public API
def _grid_transform(crs: str, res: float, origin: tuple[float, float]) -> Affine:
    """The north-up transform of the grid, after checking the CRS, pixel size and origin."""
    res = _check_float("res", res, 0.0, 1e7, open_low=True)
    if not isinstance(crs, str) or not crs.strip():
        raise ConfigError(f"Invalid crs: {crs!r}. Must be a CRS string such as 'EPSG:32631'.")
    try:
        CRS.from_user_input(crs)
    except (CRSError, ValueError) as exc:
        raise ConfigError(
            f"Invalid crs: {crs!r}. Must be a CRS string such as 'EPSG:32631' ({exc})."
        ) from exc
    if not (isinstance(origin, tuple | list) and len(origin) == 2):
        raise ConfigError(f"Invalid origin: {origin!r}. Must be an (x, y) pair of numbers.")
    ox = _check_float("origin[0]", origin[0], -1e9, 1e9, open_low=False)
    oy = _check_float("origin[1]", origin[1], -1e9, 1e9, open_low=False)
    return Affine(res, 0.0, ox, 0.0, -res, oy)


def _shifted(ground: F32, shift: tuple[float, float]) -> F32:
    """Every band shifted by ``shift`` (cubic spline), bands on a few threads (scipy frees the GIL)."""
    after = np.empty_like(ground)

    def _shift_band(b: int) -> None:
        ndimage.shift(ground[b], shift, output=after[b], order=3, mode="reflect")

    with ThreadPoolExecutor(max_workers=min(len(ground), os.cpu_count() or 1, 8)) as pool:
        list(pool.map(_shift_band, range(len(ground))))
    return after


def _add_noise(stack: F32, rng: np.random.Generator, noise: float) -> None:
    """Gaussian noise of std ``noise``, added band by band (small temporaries)."""
    for b in range(stack.shape[0]):
        draw = rng.standard_normal(stack.shape[1:], dtype=np.float32)
        draw *= np.float32(noise)
        stack[b] += draw


def make_scene(
    *,
    height: int = 512,
    width: int = 512,
    bands: int = 4,
    seed: int = 0,
    n_changes: int = 40,
    shift_px: float = 0.3,
    noise: float = 0.01,
    crs: str = "EPSG:32631",
    res: float = 10.0,
    origin: tuple[float, float] = (500_000.0, 5_000_000.0),
) -> SyntheticScene:
    """Make a BEFORE/AFTER pair of a synthetic landscape with known small changes.

    Args:
        height: Rows of the grid, in [32, 16384].
        width: Columns of the grid, in [32, 16384].
        bands: Spectral bands, in [1, 32]: blue, green, red, NIR, then SWIR-like bands.
        seed: Seed of ``numpy.random.default_rng``; >= 0.
        n_changes: Changes to implant, >= 0 (at most about one per 25 px of the image).
        shift_px: Length in px of the global sub-pixel shift of AFTER, in [0, 3]; its
            direction is random.
        noise: Std of the Gaussian noise added to each date, in reflectance, in [0, 0.2].
        crs: Any CRS string rasterio understands, e.g. ``"EPSG:32631"``.
        res: Pixel size in CRS units, > 0.
        origin: (x, y) map coordinates of the upper-left corner of the grid.

    Returns:
        The scene: BEFORE, AFTER, truth, grid and the list of implanted changes.

    Raises:
        ConfigError: If an argument is out of range, ``crs`` is not a valid CRS, or the
            changes cannot all be placed without overlapping.
    """
    height = _check_int("height", height, 32, 16384)
    width = _check_int("width", width, 32, 16384)
    bands = _check_int("bands", bands, 1, 32)
    seed = _check_int("seed", seed, 0, 2**63 - 1)
    max_changes = (height - 2 * BORDER) * (width - 2 * BORDER) // 25
    n_changes = _check_int("n_changes", n_changes, 0, max_changes)
    shift_px = _check_float("shift_px", shift_px, 0.0, 3.0, open_low=False)
    noise = _check_float("noise", noise, 0.0, 0.2, open_low=False)
    transform = _grid_transform(crs, res, origin)
    rng_land, rng_nuisance, rng_change, rng_noise = np.random.default_rng(seed).spawn(4)
    ground = make_landscape(rng_land, height, width, bands)

    angle = rng_nuisance.uniform(0.0, 2 * np.pi)
    shift = (shift_px * math.sin(angle), shift_px * math.cos(angle))
    gain = rng_nuisance.uniform(0.85, 1.15, bands).astype(np.float32)
    offset = rng_nuisance.uniform(-0.02, 0.02, bands).astype(np.float32)

    after = _shifted(ground, shift) if shift_px > 0 else ground.copy()
    truth, changes = implant_changes(
        rng_change, after, n_changes, max(noise, MIN_NOISE_REF), transform
    )
    after *= gain[:, None, None]
    after += offset[:, None, None]
    if noise > 0:
        for stack in (ground, after):
            _add_noise(stack, rng_noise, noise)
    return SyntheticScene(
        before=ground,
        after=after,
        truth=truth,
        transform=transform,
        crs=crs,
        changes=changes,
        gain=tuple(float(g) for g in gain),
        offset=tuple(float(o) for o in offset),
        shift=(float(shift[0]), float(shift[1])),
    )


def _encode(block: F32, dtype: str, scale: float, nodata: int | None) -> NDArray[Any]:
    """Scale, round and clip a block of reflectance to an integer dtype (float: unchanged)."""
    if np.issubdtype(np.dtype(dtype), np.floating):
        return block.astype(dtype)
    info = np.iinfo(dtype)
    values = np.clip(np.rint(block.astype(np.float64) * scale), info.min, info.max)
    if nodata is not None:  # keep valid pixels off the nodata value
        values[values == nodata] = nodata + 1 if nodata < info.max else nodata - 1
    return values.astype(dtype)


def _write_stack(
    array: NDArray[Any],
    path: pathlib.Path,
    scene: SyntheticScene,
    *,
    dtype: str,
    scale: float | None,
    nodata: int | None,
    tile: int,
    compress: str,
) -> None:
    count, height, width = array.shape
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": dtype,
        "crs": scene.crs,
        "transform": scene.transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": tile,
        "blockysize": tile,
        "BIGTIFF": "IF_SAFER",
    }
    if compress != "none":
        profile["compress"] = compress
        profile["predictor"] = 3 if np.issubdtype(np.dtype(dtype), np.floating) else 2
    with rasterio.open(path, "w", **profile) as dst:
        if scale is not None:
            dst.descriptions = tuple(band_names(count))
        for r0 in range(0, height, tile):
            for c0 in range(0, width, tile):
                h, w = min(tile, height - r0), min(tile, width - c0)
                block = array[:, r0 : r0 + h, c0 : c0 + w]
                data = block if scale is None else _encode(block, dtype, scale, nodata)
                dst.write(data, window=Window(c0, r0, w, h))


def write_scene(
    scene: SyntheticScene,
    directory: PathLike,
    *,
    dtype: str = "uint16",
    scale: float = 10000.0,
    nodata: int | None = None,
    tile: int = 256,
    compress: str = "deflate",
) -> dict[str, pathlib.Path]:
    """Write a scene as tiled GeoTIFFs ``before.tif``, ``after.tif`` and ``truth.tif``.

    Args:
        scene: The scene to write.
        directory: Output directory; created if missing. Existing files are overwritten.
        dtype: Pixel type of BEFORE and AFTER: one of uint8, uint16, int16, uint32, int32
            (values times ``scale``, rounded and clipped to the type's range), float32 or
            float64 (reflectance written as is).
        scale: Factor applied to reflectance for integer dtypes, > 0.
        nodata: Nodata value written in the BEFORE and AFTER metadata, within the range of
            ``dtype``; valid pixels that would equal it are moved by one. None: no nodata.
        tile: Tile size in pixels, a multiple of 16 in [16, 4096].
        compress: One of deflate, lzw, zstd or none.

    Returns:
        Paths of the files written, keyed ``"before"``, ``"after"`` and ``"truth"``.

    Raises:
        ConfigError: If an option is out of range.
        OutputError: If the directory or a file cannot be written.
    """
    if dtype not in _WRITE_DTYPES:
        raise ConfigError(f"Invalid dtype: {dtype!r}. Must be one of {_WRITE_DTYPES}.")
    scale = _check_float("scale", scale, 0.0, 1e9, open_low=True)
    tile = _check_int("tile", tile, 16, 4096)
    if tile % 16:
        raise ConfigError(f"Invalid tile: {tile!r}. Must be a multiple of 16 in [16, 4096].")
    compress = compress.lower() if isinstance(compress, str) else compress
    if compress not in _COMPRESS:
        raise ConfigError(f"Invalid compress: {compress!r}. Must be one of {_COMPRESS}.")
    if nodata is not None:
        if np.issubdtype(np.dtype(dtype), np.integer):
            info = np.iinfo(dtype)
            nodata = _check_int("nodata", nodata, int(info.min), int(info.max))
        else:
            nodata = _check_int("nodata", nodata, -(2**53), 2**53)
    out = pathlib.Path(directory)
    paths = {name: out / f"{name}.tif" for name in ("before", "after", "truth")}
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("before", "after"):
            _write_stack(
                getattr(scene, name),
                paths[name],
                scene,
                dtype=dtype,
                scale=scale,
                nodata=nodata,
                tile=tile,
                compress=compress,
            )
        _write_stack(
            scene.truth[None],
            paths["truth"],
            scene,
            dtype="uint8",
            scale=None,
            nodata=None,
            tile=tile,
            compress=compress,
        )
    except (OSError, RasterioError) as exc:
        raise OutputError(f"Cannot write the synthetic scene to {str(out)!r}: {exc}") from exc
    return paths
