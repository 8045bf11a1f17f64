"""Quicklooks of a run's rasters for the report: one decimated read each, never a whole raster.

Each read asks GDAL for ``out_shape`` at most ``max_size`` pixels on the long side, which it
serves from the COG overviews when there are some. Images use average resampling; the mask and
the truth use nearest, so changes smaller than the decimation factor may not show on the
quicklooks of rasters larger than ``max_size`` (the metrics and the tables count every pixel).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rasterio.enums import ColorInterp, Resampling

from microchange.errors import GridMismatchError
from microchange.io.datasets import open_raster
from microchange.types import PathLike

__all__ = ("decimated_shape", "grey", "quicklook", "read_outputs", "truth_quicklook")


def read_outputs(mask_path: Path, score_path: Path, max_size: int
                  ) -> tuple[NDArray[np.uint8], NDArray[np.float64], tuple[int, int]]:
    """Decimated mask (nearest) and score map (average), and the full (rows, cols)."""
    with open_raster(mask_path, role="mask") as mask_ds:
        shape = decimated_shape(mask_ds.height, mask_ds.width, max_size)
        mask = mask_ds.read(1, out_shape=shape, resampling=Resampling.nearest)
        full_shape = (mask_ds.height, mask_ds.width)
    with open_raster(score_path, role="score") as score_ds:
        score = score_ds.read(1, out_shape=shape, resampling=Resampling.average)
    return mask, score.astype(np.float64), full_shape


def decimated_shape(height: int, width: int, max_size: int) -> tuple[int, int]:
    """(rows, cols) of a raster shrunk so that its longer side is at most ``max_size``."""
    scale = max(height, width) / max_size
    if scale <= 1:
        return height, width
    return max(1, round(height / scale)), max(1, round(width / scale))


@contextmanager
def _on_grid(path: PathLike, role: str, ref_path: Path) -> Iterator[Any]:
    """Open ``path``, warped onto the grid of ``ref_path`` when both are georeferenced and differ."""
    from rasterio.vrt import WarpedVRT

    with open_raster(path, role=role) as ds:
        if ds.crs is None:
            yield ds
            return
        with open_raster(ref_path, role="mask") as ref:
            same = (ref.crs == ds.crs and ref.shape == ds.shape
                    and ref.transform.almost_equals(ds.transform))
            if same or ref.crs is None:
                yield ds
                return
            with WarpedVRT(ds, crs=ref.crs, transform=ref.transform, width=ref.width,
                           height=ref.height, resampling=Resampling.bilinear) as vrt:
                yield vrt


def _rgb_bands(ds: Any) -> list[int]:
    if ds.count < 3:
        return [1]
    interp = list(ds.colorinterp)
    wanted = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    if all(c in interp for c in wanted):
        return [interp.index(c) + 1 for c in wanted]
    return [1, 2, 3]


def quicklook(path: PathLike, role: str, shape: tuple[int, int],
              ref: Path) -> NDArray[np.float64]:
    """(h, w, 3) RGB in [0, 1] on the grid of ``ref`` decimated to ``shape``; NaN = no data."""
    with _on_grid(path, role, ref) as ds:
        bands = _rgb_bands(ds)
        data = ds.read(bands, out_shape=(len(bands), *shape), resampling=Resampling.average,
                       masked=True)
    arr = np.ma.filled(data.astype(np.float64), np.nan)
    arr[~np.isfinite(arr)] = np.nan
    out = np.stack([_stretch(band) for band in arr], axis=-1)
    return np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out


def _stretch(band: NDArray[np.float64]) -> NDArray[np.float64]:
    finite = band[np.isfinite(band)]
    if finite.size == 0:
        return np.full_like(band, np.nan)
    lo, hi = np.percentile(finite, (2, 98))
    if hi <= lo:
        hi = lo + 1.0
    out: NDArray[np.float64] = np.clip((band - lo) / (hi - lo), 0.0, 1.0)
    return out


def truth_quicklook(truth: PathLike, shape: tuple[int, int], full_shape: tuple[int, int],
                    mask_path: Path) -> NDArray[Any]:
    """The truth decimated to ``shape`` (nearest), after checking it is on the mask's grid."""
    with open_raster(truth, role="truth") as ds:
        if ds.shape != full_shape:
            raise GridMismatchError(
                f"truth {str(truth)!r} is {ds.height}x{ds.width} but mask {str(mask_path)!r} is "
                f"{full_shape[0]}x{full_shape[1]} (rows x cols): give the truth of this pair"
            )
        data: NDArray[Any] = ds.read(1, out_shape=shape, resampling=Resampling.nearest)
    return data


def grey(rgb: NDArray[np.float64] | None, shape: tuple[int, int]) -> NDArray[np.float64]:
    """Darkened grey background (h, w, 3) for overlays."""
    if rgb is None or rgb.shape[:2] != shape:
        return np.full((*shape, 3), 0.5)
    grey = np.nan_to_num(rgb.mean(axis=-1), nan=0.0)
    return np.repeat((0.15 + 0.6 * grey)[..., None], 3, axis=-1)
