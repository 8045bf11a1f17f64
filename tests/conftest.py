"""Shared fixtures: tiny georeferenced rasters built on the fly, a Prefect test harness."""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# Prefect must run offline and never touch the user's ~/.prefect: set before it is imported.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="microchange-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # tests import benchmarks.datasets, flows, tasks
    sys.path.insert(0, str(ROOT))

import numpy as np
import pytest
import rasterio
from affine import Affine
from numpy.typing import NDArray
from rasterio.errors import NotGeoreferencedWarning

ORIGIN = (500_000.0, 4_000_000.0)


def _write_raster(
    path: Path,
    data: NDArray[Any],
    *,
    crs: str | None = "EPSG:32633",
    res: float = 10.0,
    origin: tuple[float, float] = ORIGIN,
    transform: Affine | None = None,
    nodata: float | None = None,
    driver: str = "GTiff",
    descriptions: tuple[str, ...] | None = None,
    block: int | None = None,
) -> Path:
    """Write a (C, H, W) or (H, W) array to ``path``; the one raster writer of the tests.

    Args:
        path: File to write (its folder is created).
        data: Band values; the file takes their dtype.
        crs: CRS of the grid; None writes a plain pixel grid (no CRS, no transform).
        res: Pixel size, north-up, from ``origin`` (the upper-left corner).
        origin: (x, y) of the upper-left corner.
        transform: The grid's transform instead of ``res`` and ``origin``.
        nodata: Nodata value of every band.
        driver: GDAL driver ('GTiff', 'PNG', 'BMP', ...).
        descriptions: Band descriptions (band names), one per band.
        block: Side of square internal tiles (GTiff); None writes strips.

    Returns:
        ``path``.
    """
    if data.ndim == 2:
        data = data[None]
    count, height, width = data.shape
    profile: dict[str, Any] = {"driver": driver, "width": width, "height": height,
                               "count": count, "dtype": data.dtype}
    if nodata is not None:
        profile["nodata"] = nodata
    if crs is not None:
        profile["crs"] = crs
        profile["transform"] = transform or Affine(res, 0, origin[0], 0, -res, origin[1])
    if block is not None:
        profile.update(tiled=True, blockxsize=block, blockysize=block)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            for i, text in enumerate(descriptions or (), start=1):
                dst.set_band_description(i, text)
    return path


@pytest.fixture(scope="session")
def write_raster() -> Callable[..., Path]:
    """The tests' one raster writer: ``write_raster(path, data, **keywords)``; see
    :func:`_write_raster` for the keywords (grid, nodata, driver, band names, tiling)."""
    return _write_raster


@pytest.fixture
def make_geotiff(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing a (C, H, W) array as a GeoTIFF named ``name`` in tmp_path.

    Takes the keywords of :func:`_write_raster`; rasters of 16 px or more a side are tiled in
    16-px blocks, so that reads cross blocks.
    """

    def _make(data: NDArray[Any], *, name: str = "image.tif", **kwargs: Any) -> Path:
        height, width = data.shape[-2:]
        if height >= 16 and width >= 16:
            kwargs.setdefault("block", 16)
        return _write_raster(tmp_path / name, data, **kwargs)

    return _make


@pytest.fixture
def truth_raster(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing a change truth in tmp_path, by default on the grid of :func:`planted_pair`.

    ``truth_raster(truth, value=255, name="gt.tif", **keywords)`` writes uint8 ``value`` where
    ``truth`` is True and 0 elsewhere; the keywords are those of :func:`_write_raster`.
    """

    def _make(truth: NDArray[np.bool_], *, value: int = 255, name: str = "gt.tif",
              **kwargs: Any) -> Path:
        data = np.where(truth, value, 0).astype(np.uint8)
        return _write_raster(tmp_path / name, data, **kwargs)

    return _make


@pytest.fixture
def planted_pair(make_geotiff: Callable[..., Path]) -> tuple[Path, Path, NDArray[np.bool_]]:
    """A 4-band uint16 pair (150 x 170 px) with gain/offset nuisance and three planted changes.

    One change straddles the 64-px tile borders so that tiling effects would show.
    """
    rng = np.random.default_rng(42)
    h, w = 150, 170
    base = rng.normal(1000, 120, (4, h, w))
    before = base + rng.normal(0, 15, base.shape)
    after = 1.08 * base + 30 + rng.normal(0, 15, base.shape)
    truth = np.zeros((h, w), bool)
    for r0, c0, size in ((10, 12, 3), (60, 60, 8), (120, 150, 1)):
        truth[r0:r0 + size, c0:c0 + size] = True
    after[:, truth] += 900
    b = make_geotiff(before.round().astype("uint16"), name="before.tif")
    a = make_geotiff(after.round().astype("uint16"), name="after.tif")
    return b, a, truth


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """One Prefect test API for the whole session (it costs ~10 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield
