import warnings

import numpy as np
import pytest
import rasterio
from affine import Affine

from microchange.errors import (
    BandMismatchError,
    GridMismatchError,
    MissingCRSError,
    NoOverlapError,
    RasterReadError,
)
from microchange.io.pair import PairReader
from microchange.tiling import Tile

ORIGIN = (500_000.0, 4_000_000.0)  # of make_geotiff


def _ramp(count: int = 2, h: int = 40, w: int = 50, dtype: str = "uint16") -> np.ndarray:
    r = np.arange(h)[:, None] * 10 + np.arange(w)[None, :]
    return np.stack([r + 1000 * (i + 1) for i in range(count)]).astype(dtype)


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "float32", "float64"])
def test_identical_grids_read_exact_values(make_geotiff, dtype: str) -> None:
    data = _ramp(dtype="float64") % 200 if dtype == "uint8" else _ramp(dtype="float64")
    data = data.astype(dtype)
    b = make_geotiff(data, name="b.tif")
    a = make_geotiff(data, name="a.tif")
    with PairReader(b, a) as pair:
        assert pair.alignment == "identical"
        arr = pair.read(5, 15, 7, 27)
    assert arr.before.dtype == np.float32 and arr.before.shape == (2, 10, 20)
    np.testing.assert_array_equal(arr.before, data[:, 5:15, 7:27].astype(np.float32))
    assert arr.valid.all()


def test_nodata_and_nan_become_invalid(make_geotiff) -> None:
    data = _ramp(dtype="float32")
    b_data = data.copy()
    b_data[:, 0, 0] = -9999
    a_data = data.copy()
    a_data[1, 3, 4] = np.nan
    b = make_geotiff(b_data, name="b.tif", nodata=-9999)
    a = make_geotiff(a_data, name="a.tif")
    with PairReader(b, a) as pair:
        arr = pair.read(0, 40, 0, 50)
    assert not arr.valid[0, 0] and not arr.valid[3, 4]
    assert arr.valid.sum() == 40 * 50 - 2
    assert arr.before[0, 0, 0] == 0 and arr.after[1, 3, 4] == 0


def test_internal_mask_is_honoured(tmp_path) -> None:
    path = tmp_path / "masked.tif"
    data = _ramp(count=1)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(
        path, "w", driver="GTiff", width=50, height=40, count=1, dtype="uint16",
        crs="EPSG:32633", transform=Affine(10, 0, 0, 0, -10, 0),
    ) as dst:
        dst.write(data)
        mask = np.full((40, 50), 255, np.uint8)
        mask[10:20, 10:20] = 0
        dst.write_mask(mask)
    with PairReader(path, path) as pair:
        arr = pair.read(0, 40, 0, 50)
    assert arr.valid.sum() == 40 * 50 - 100


def test_after_on_other_grid_is_resampled_over_the_overlap(make_geotiff) -> None:
    data = _ramp(count=1, h=40, w=40, dtype="float32")
    b = make_geotiff(data, name="b.tif", res=10.0)
    # AFTER: same values at 5 m pixels (2x2 replicated), shifted so it covers the east half only
    fine = np.repeat(np.repeat(data[:, :, 20:], 2, axis=1), 2, axis=2)
    a = make_geotiff(fine, name="a.tif", res=5.0, origin=(500_000.0 + 200.0, 4_000_000.0))
    with PairReader(b, a) as pair:
        assert pair.alignment == "resampled"
        arr = pair.read(0, 40, 0, 40)
    assert not arr.valid[:, :20].any()
    assert arr.valid[:, 21:39].all()
    np.testing.assert_allclose(arr.after[0, 5:35, 22:38], data[0, 5:35, 22:38], atol=0.1)


X0, Y0 = ORIGIN


def _pixel_coordinates(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(2, ...) column and row of BEFORE's 10 m grid at EPSG:32633 points (x, y)."""
    return np.stack([(x - X0) / 10.0, (Y0 - y) / 10.0])


def _sampled_at(fn, crs: str, transform: Affine, shape: tuple[int, int]) -> np.ndarray:
    """(C, H, W) ``fn(x, y)`` of EPSG:32633 points, evaluated exactly at the pixel centres of a
    grid in ``crs`` (no resampling in the test itself)."""
    from rasterio.transform import xy
    from rasterio.warp import transform as transform_points

    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    xs, ys = xy(transform, rows.ravel(), cols.ravel(), offset="center")
    ux, uy = transform_points(crs, "EPSG:32633", xs, ys)
    return np.asarray(fn(np.asarray(ux), np.asarray(uy))).reshape(-1, *shape)


def _reprojected_grid(h: int, w: int, crs: str, resolution: float) -> tuple[Affine, int, int]:
    """BEFORE's footprint (10 m pixels at ORIGIN) on a grid of ``crs`` at ``resolution``."""
    from rasterio.transform import array_bounds
    from rasterio.warp import calculate_default_transform

    west, south, east, north = array_bounds(h, w, Affine(10, 0, X0, 0, -10, Y0))
    tr, width, height = calculate_default_transform("EPSG:32633", crs, w, h, west, south, east,
                                                    north, resolution=resolution)
    return tr, height, width


@pytest.mark.parametrize(("crs", "resolution"), [("EPSG:3857", 6.0), ("EPSG:4326", 1.5e-4)])
def test_other_crs_and_resolution_are_reprojected_to_a_tenth_of_a_pixel(make_geotiff, crs,
                                                                         resolution) -> None:
    """AFTER holds, in another CRS and pixel size, the column and row of BEFORE's grid at each
    of its pixel centres: read back on BEFORE's grid, a shift of a tenth of a pixel would show."""
    h = w = 40
    rows, cols = np.mgrid[0:h, 0:w] + 0.5
    b = make_geotiff(np.stack([cols, rows]).astype(np.float32), name="b.tif")
    tr, ah, aw = _reprojected_grid(h, w, crs, resolution)
    a = make_geotiff(_sampled_at(_pixel_coordinates, crs, tr, (ah, aw)).astype(np.float32),
                     name="a.tif", crs=crs, transform=tr)
    with PairReader(b, a) as pair:
        assert pair.alignment == "resampled"
        arr = pair.read(0, h, 0, w)
    inner = (slice(None), slice(2, h - 2), slice(2, w - 2))
    assert arr.valid[inner[1:]].all()
    shift = arr.after[inner] - arr.before[inner]  # (column, row) offset in BEFORE pixels
    assert np.abs(shift).max() < 0.1, np.abs(shift).max(axis=(1, 2))


def test_a_whole_run_detects_in_place_across_crs_and_resolution(make_geotiff, tmp_path) -> None:
    """BEFORE at 10 m in EPSG:32633; AFTER at ~4.9 m in EPSG:3857 with three planted squares,
    computed exactly at its own pixel centres. Without co-registration (which would hide a
    misplaced resampling), the run's mask is exactly the planted pixels of BEFORE's grid."""
    import json

    from microchange.config import DetectConfig, PreprocessConfig
    from microchange.pipeline import run_detection

    h, w = 64, 72
    truth = np.zeros((h, w), bool)
    for r0, c0, size in ((10, 12, 6), (40, 50, 3), (30, 20, 2)):
        truth[r0:r0 + size, c0:c0 + size] = True

    def scene(changed: bool):
        def fn(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            col, row = _pixel_coordinates(x, y)
            texture = [1000 + 80 * np.sin(col / 5.0 + k) * np.cos(row / 7.0 - k)
                       for k in range(3)]
            if changed:
                inside = truth[np.clip(row.astype(int), 0, h - 1), np.clip(col.astype(int), 0,
                                                                          w - 1)]
                texture = [t + 400 * inside for t in texture]
            return np.stack(texture)
        return fn

    rows, cols = np.mgrid[0:h, 0:w] + 0.5
    x, y = X0 + 10 * cols, Y0 - 10 * rows
    b = make_geotiff(scene(False)(x, y).astype(np.float32), name="b.tif")
    tr, ah, aw = _reprojected_grid(h, w, "EPSG:3857", 6.0)
    a = make_geotiff(_sampled_at(scene(True), "EPSG:3857", tr, (ah, aw)).astype(np.float32),
                     name="a.tif", crs="EPSG:3857", transform=tr)
    cfg = DetectConfig(method="cva", tile_size=32,
                       preprocess=PreprocessConfig(coregister=False, smoothing_sigma=0.0))
    run_detection(b, a, tmp_path / "o", cfg)
    with rasterio.open(tmp_path / "o" / "change_mask.tif") as src:
        assert src.crs == "EPSG:32633" and src.transform == Affine(10, 0, X0, 0, -10, Y0)
        mask = src.read(1)
    assert json.loads((tmp_path / "o" / "run.json").read_text())["alignment"] == "resampled"
    np.testing.assert_array_equal(mask[2:-2, 2:-2] == 1, truth[2:-2, 2:-2])


def test_read_tile_reflects_beyond_edges(make_geotiff) -> None:
    data = _ramp(count=1, h=10, w=10, dtype="float32")
    b = make_geotiff(data, name="b.tif")
    with PairReader(b, b) as pair:
        arr = pair.read_tile(Tile(0, 0, 0, 4, 4, halo=2))
    assert arr.before.shape == (1, 8, 8) and arr.valid.shape == (8, 8)
    assert arr.before[0, 0, 2] == data[0, 2, 0]


def test_band_mismatch_names_both_files(make_geotiff) -> None:
    b = make_geotiff(_ramp(count=3), name="b.tif")
    a = make_geotiff(_ramp(count=2), name="a.tif")
    with pytest.raises(BandMismatchError, match=r"has 3 bands .* has 2.*--bands"):
        PairReader(b, a)
    with PairReader(b, a, bands=(1, 2)) as pair:
        assert pair.count == 2
    with pytest.raises(BandMismatchError, match="has only 2 bands"):
        PairReader(b, a, bands=(3,))


def test_missing_and_unreadable_files(tmp_path, make_geotiff) -> None:
    b = make_geotiff(_ramp(), name="b.tif")
    with pytest.raises(FileNotFoundError, match=r"AFTER raster .*nope\.tif. does not exist"):
        PairReader(b, tmp_path / "nope.tif")
    junk = tmp_path / "junk.tif"
    junk.write_text("not a raster")
    with pytest.raises(RasterReadError, match="cannot read AFTER raster"):
        PairReader(b, junk)


def test_plain_pixel_grids(make_geotiff) -> None:
    data = _ramp(count=1)
    b = make_geotiff(data, name="b.tif", crs=None)
    a = make_geotiff(data, name="a.tif", crs=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with PairReader(b, a) as pair:
            assert pair.alignment == "pixel-grid"
            assert pair.grid.crs_wkt is None
            assert any("not georeferenced" in w for w in pair.warnings)
        geo = make_geotiff(data, name="geo.tif")
        with pytest.raises(MissingCRSError, match="is georeferenced but"):
            PairReader(geo, a)
        small = make_geotiff(data[:, :30], name="small.tif", crs=None)
        with pytest.raises(GridMismatchError, match="same size"):
            PairReader(b, small)


def test_disjoint_footprints(make_geotiff) -> None:
    data = _ramp(count=1)
    b = make_geotiff(data, name="b.tif")
    a = make_geotiff(data, name="a.tif", origin=(900_000.0, 4_000_000.0))
    with pytest.raises(NoOverlapError, match="does not overlap"):
        PairReader(b, a)


def test_block_cache_assembles_windows_exactly_like_direct_reads(write_raster,
                                                                  tmp_path) -> None:
    from rasterio.windows import Window

    from microchange.io.datasets import BlockCache

    rng = np.random.default_rng(4)
    data = rng.integers(0, 4000, (3, 100, 120)).astype("uint16")
    data[:, 40:45, 50:70] = 0  # nodata
    path = write_raster(tmp_path / "tiled.tif", data, crs=None, nodata=0, block=32)
    with rasterio.open(path) as ds:
        assert BlockCache.usable(ds, [1, 3])
        cache = BlockCache(ds, [3, 1], max_mb=1)
        for r0, c0, h, w in ((0, 0, 100, 120), (31, 33, 40, 50), (90, 5, 10, 115), (7, 7, 1, 1)):
            win = Window(c0, r0, w, h)
            values, valid = cache.read(win)
            np.testing.assert_array_equal(values, ds.read([3, 1], window=win,
                                                          out_dtype="float32"))
            np.testing.assert_array_equal(valid, ds.read_masks([3, 1], window=win).min(0) > 0)
        assert cache.nbytes <= 1 << 20


@pytest.mark.parametrize("dtype", ["uint8", "int16", "uint16", "float32"])
def test_block_cache_keeps_narrow_types_as_read_with_the_same_blocks(write_raster, tmp_path,
                                                                      dtype) -> None:
    """8/16-bit blocks are kept as read (less memory); values and kept blocks do not change."""
    from rasterio.windows import Window

    from microchange.io.datasets import BlockCache

    data = np.random.default_rng(5).integers(1, 120, (4, 96, 96)).astype(dtype)
    path = write_raster(tmp_path / f"{dtype}.tif", data, crs=None, block=32)
    with rasterio.open(path) as ds:
        cache = BlockCache(ds, [1, 2, 3, 4], max_mb=1)
        cache.max_bytes = 3 * (4 * 4 * 32 * 32 + 32 * 32)  # three blocks, counted as float32
        for r0, c0 in ((0, 0), (10, 40), (50, 60), (64, 0)):
            win = Window(c0, r0, 30, 30)
            values, _ = cache.read(win)
            assert values.dtype == np.float32
            np.testing.assert_array_equal(values, ds.read(window=win, out_dtype="float32"))
        assert len(cache._blocks) == 3
        assert cache.read_dtype == ("float32" if dtype == "float32" else dtype)
        assert cache.nbytes == 3 * (32 * 32 * 4 * np.dtype(cache.read_dtype).itemsize + 32 * 32)
