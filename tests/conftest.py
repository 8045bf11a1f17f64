"""Shared fixtures: tiny georeferenced rasters built on the fly, a Prefect test harness."""

from __future__ import annotations

import os
import sys
import tempfile
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

ORIGIN = (500_000.0, 4_000_000.0)


@pytest.fixture
def make_geotiff(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing a (C, H, W) array as a tiled GeoTIFF in tmp_path."""

    def _make(
        data: NDArray[Any],
        *,
        name: str = "image.tif",
        crs: str | None = "EPSG:32633",
        res: float = 10.0,
        origin: tuple[float, float] = ORIGIN,
        nodata: float | None = None,
        transform: Affine | None = None,
    ) -> Path:
        if data.ndim == 2:
            data = data[None]
        count, height, width = data.shape
        path = tmp_path / name
        profile: dict[str, Any] = {
            "driver": "GTiff", "width": width, "height": height, "count": count,
            "dtype": data.dtype, "nodata": nodata,
        }
        if crs is not None:
            profile["crs"] = crs
            profile["transform"] = transform or Affine(res, 0, origin[0], 0, -res, origin[1])
        if height >= 16 and width >= 16:
            profile.update(tiled=True, blockxsize=16, blockysize=16)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
        return path

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
