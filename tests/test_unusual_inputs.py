"""Valid but unusual inputs succeed: other grids, every dtype, odd sizes, many bands, huge values.

Each pair holds one planted change (a 4 x 4 block, or one pixel on the tiniest rasters) on
a noisy background; the run must exit 0, write the mask on BEFORE's grid and find the change
(or, for identical inputs, report no change). Method ``cva`` where the method does not matter.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning
from rasterio.warp import Resampling, reproject

from microchange.cli import main

ORIGIN = (500_000.0, 4_000_000.0)
CVA = ("--method", "cva", "--tile-size", "32", "-q")
BLOCK = (slice(8, 12), slice(8, 12))


def write_tif(path: Path, data: np.ndarray, *, crs: str | None = "EPSG:32633",
              transform: Affine | None = None, res: float = 10.0,
              nodata: float | None = None) -> Path:
    if data.ndim == 2:
        data = data[None]
    count, height, width = data.shape
    profile: dict[str, Any] = {"driver": "GTiff", "width": width, "height": height,
                               "count": count, "dtype": data.dtype}
    if nodata is not None:
        profile["nodata"] = nodata
    if crs is not None:
        profile.update(crs=crs,
                       transform=transform or Affine(res, 0, ORIGIN[0], 0, -res, ORIGIN[1]))
    if height >= 16 and width >= 16:
        profile.update(tiled=True, blockxsize=16, blockysize=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
    return path


def pair(shape: tuple[int, int, int], *, dtype: str = "float32", mean: float = 100.0,
         sd: float = 10.0, jump: float = 80.0, seed: int = 0
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(before, after, truth): noise around ``mean``, AFTER + ``jump`` on the planted block."""
    rng = np.random.default_rng(seed)
    before = rng.normal(mean, sd, shape)
    after = before + rng.normal(0, sd / 10, shape)
    truth = np.zeros(shape[1:], bool)
    if shape[1] >= 16 and shape[2] >= 16:
        truth[BLOCK] = True
    else:
        truth[0, 0] = True
    after[:, truth] += jump
    kind = np.dtype(dtype)
    if kind.kind in "iu":
        info = np.iinfo(kind)
        before = np.clip(before.round(), info.min, info.max)
        after = np.clip(after.round(), info.min, info.max)
    return before.astype(dtype), after.astype(dtype), truth


def detect(tmp_path: Path, before: Path, after: Path, *args: str) -> tuple[Path, dict[str, Any]]:
    out = tmp_path / "out"
    code = main(["detect", str(before), str(after), "--out", str(out), *CVA, *args])
    assert code == 0
    return out, json.loads((out / "run.json").read_text())


def read_mask(out: Path) -> tuple[np.ndarray, Any]:
    with rasterio.open(out / "change_mask.tif") as ds:
        return ds.read(1), ds.profile


def assert_found(out: Path, truth: np.ndarray, *, max_false: int = 4) -> None:
    """Most of the planted change found, next to nothing else."""
    mask, _ = read_mask(out)
    assert mask.shape == truth.shape
    assert (mask[truth] == 1).mean() >= 0.75, mask[truth]
    assert ((mask == 1) & ~truth).sum() <= max_false


DTYPES = {  # dtype -> (mean, sd, jump) inside the dtype's range
    "uint8": (100, 8, 80), "int8": (-20, 8, 80), "uint16": (1000, 80, 800),
    "int16": (-500, 80, 800), "uint32": (100_000, 8_000, 80_000),
    "int32": (-100_000, 8_000, 80_000), "float32": (0.2, 0.02, 0.2),
    "float64": (1e5, 1e4, 1e5),
}


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_every_dtype(tmp_path, dtype) -> None:
    mean, sd, jump = DTYPES[dtype]
    b, a, truth = pair((3, 40, 40), dtype=dtype, mean=mean, sd=sd, jump=jump)
    out, _ = detect(tmp_path, write_tif(tmp_path / "b.tif", b), write_tif(tmp_path / "a.tif", a))
    assert_found(out, truth)


@pytest.mark.parametrize(("height", "width"), [(37, 53), (20, 20), (16, 200)])
def test_odd_sizes_and_smaller_than_a_tile(tmp_path, height, width) -> None:
    b, a, truth = pair((3, height, width))
    out, run = detect(tmp_path, write_tif(tmp_path / "b.tif", b), write_tif(tmp_path / "a.tif", a))
    assert_found(out, truth)
    assert run["counts"]["tiles"] == -(-height // 32) * -(-width // 32)


@pytest.mark.parametrize(("height", "width"), [(1, 1), (1, 50), (50, 1), (3, 3)])
def test_tiny_rasters_give_a_valid_result(tmp_path, height, width) -> None:
    """Too few pixels to tell change from noise, but a complete, well-formed result."""
    b, a, _ = pair((3, height, width))
    out, run = detect(tmp_path, write_tif(tmp_path / "b.tif", b), write_tif(tmp_path / "a.tif", a))
    mask, profile = read_mask(out)
    assert (profile["height"], profile["width"]) == (height, width)
    assert set(np.unique(mask)) <= {0, 1}
    with rasterio.open(out / "change_score.tif") as ds:
        assert np.isfinite(ds.read(1)).all()
    assert run["counts"]["changed_px"] == int((mask == 1).sum())


@pytest.mark.parametrize("bands", [1, 13])
def test_one_and_thirteen_bands(tmp_path, bands) -> None:
    b, a, truth = pair((bands, 40, 40), jump=150)
    out, _ = detect(tmp_path, write_tif(tmp_path / "b.tif", b), write_tif(tmp_path / "a.tif", a))
    assert_found(out, truth)


@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_huge_and_tiny_float_values(tmp_path, scale) -> None:
    b, a, truth = pair((3, 40, 40), mean=1.0, sd=0.1, jump=1.0)
    b, a = (b * np.float32(scale)).astype("float32"), (a * np.float32(scale)).astype("float32")
    assert np.isfinite(b).all() and np.isfinite(a).all()
    out, _ = detect(tmp_path, write_tif(tmp_path / "b.tif", b), write_tif(tmp_path / "a.tif", a))
    assert_found(out, truth)
    with rasterio.open(out / "change_score.tif") as ds:
        score = ds.read(1)
    assert np.isfinite(score).all()


def _reproject(data: np.ndarray, src_transform: Affine, crs: str, res: float,
               dst_crs: str) -> tuple[np.ndarray, Affine]:
    from rasterio.warp import calculate_default_transform

    h, w = data.shape[1:]
    left, top = src_transform.c, src_transform.f
    bounds = (left, top + h * src_transform.e, left + w * src_transform.a, top)
    transform, width, height = calculate_default_transform(crs, dst_crs, w, h, *bounds,
                                                           resolution=res)
    out = np.zeros((data.shape[0], height, width), data.dtype)
    reproject(data, out, src_transform=src_transform, src_crs=crs, dst_transform=transform,
              dst_crs=dst_crs, resampling=Resampling.nearest)
    return out, transform


@pytest.mark.parametrize(("dst_crs", "res"), [("EPSG:32633", 5.0), ("EPSG:3035", 20.0),
                                              ("EPSG:4326", 1e-4)])
def test_other_crs_and_resolution(tmp_path, dst_crs, res) -> None:
    """AFTER on another grid is resampled onto BEFORE's; the outputs have BEFORE's grid."""
    rows, cols = np.mgrid[0:64, 0:64]
    smooth = 100 + 20 * np.sin(cols / 9) + 20 * np.cos(rows / 13)  # survives resampling
    rng = np.random.default_rng(0)
    b = np.stack([smooth, smooth[::-1]]) + rng.normal(0, 0.5, (2, 64, 64))
    a = b + rng.normal(0, 0.5, b.shape)
    a[:, 8:24, 8:24] += 80
    src = Affine(10, 0, ORIGIN[0], 0, -10, ORIGIN[1])
    warped, transform = _reproject(a.astype("float32"), src, "EPSG:32633", res, dst_crs)
    before = write_tif(tmp_path / "b.tif", b.astype("float32"), transform=src)
    after = write_tif(tmp_path / "a.tif", warped, crs=dst_crs, transform=transform, nodata=0)
    out, _ = detect(tmp_path, before, after, "--radiometric", "none")
    mask, profile = read_mask(out)
    with rasterio.open(before) as ds:
        assert (profile["crs"], profile["transform"]) == (ds.crs, ds.transform)
        assert (profile["height"], profile["width"]) == (ds.height, ds.width)
    assert (mask[11:21, 11:21] == 1).all()  # away from the block's resampled edges
    assert (mask[30:, 30:] == 1).mean() < 0.01


def test_identical_inputs_report_no_change(tmp_path, capsys) -> None:
    b, _, _ = pair((3, 40, 40))
    before = write_tif(tmp_path / "b.tif", b)
    out = tmp_path / "out"
    code = main(["detect", str(before), str(before), "--out", str(out), "--method", "cva",
                 "--tile-size", "32"])
    assert code == 0
    assert "no change found (0 px changed)" in capsys.readouterr().out
    mask, _ = read_mask(out)
    assert set(np.unique(mask)) == {0}
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["changed_px"] == 0 and run["counts"]["regions"] == 0
    import pyarrow.parquet as pq

    assert pq.read_table(out / "changes.parquet").num_rows == 0


def test_some_nonfinite_and_nodata_pixels_become_nodata(tmp_path) -> None:
    b, a, truth = pair((3, 40, 40))
    b[:, 0, :5] = np.inf
    a[:, 1, :5] = -np.inf
    a[:, 2, :5] = np.nan
    out, _ = detect(tmp_path, write_tif(tmp_path / "b.tif", b), write_tif(tmp_path / "a.tif", a))
    mask, _ = read_mask(out)
    assert (mask[:3, :5] == 255).all()
    assert (mask[truth] == 1).mean() >= 0.75


def test_pixel_grids_without_georeference(tmp_path) -> None:
    b, a, truth = pair((3, 40, 40))
    out, _ = detect(tmp_path, write_tif(tmp_path / "b.tif", b, crs=None),
                    write_tif(tmp_path / "a.tif", a, crs=None))
    assert_found(out, truth)


def test_partial_overlap_leaves_the_rest_nodata(tmp_path) -> None:
    """AFTER covers the right half of BEFORE only: the left half is nodata, never changed."""
    b, a, _ = pair((3, 40, 40))
    shifted = Affine(10, 0, ORIGIN[0] + 200, 0, -10, ORIGIN[1])  # 20 px to the east
    a_right = np.zeros_like(a)
    a_right[:, :, :20] = a[:, :, 20:]
    before = write_tif(tmp_path / "b.tif", b)
    after = write_tif(tmp_path / "a.tif", a_right, transform=shifted)
    out, _ = detect(tmp_path, before, after)
    mask, _ = read_mask(out)
    assert (mask[:, :20] == 255).all()
    assert set(np.unique(mask[:, 20:])) <= {0, 1}
