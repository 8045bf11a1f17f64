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
    np.testing.assert_allclose(arr.after[0, 5:35, 22:38], data[0, 5:35, 22:38], atol=1.0)


def test_other_crs_is_reprojected(make_geotiff) -> None:
    data = _ramp(count=1, h=40, w=40, dtype="float32")
    b = make_geotiff(data, name="b.tif", crs="EPSG:32633")
    # the same place in EPSG:3857 (no exact match: just check it overlaps and reads)
    from rasterio.warp import calculate_default_transform, reproject

    with rasterio.open(b) as src:
        tr, w, h = calculate_default_transform(src.crs, "EPSG:3857", 40, 40, *src.bounds)
        dst = np.zeros((1, h, w), np.float32)
        reproject(data, dst, src_transform=src.transform, src_crs=src.crs, dst_transform=tr,
                  dst_crs="EPSG:3857")
    a = make_geotiff(dst, name="a.tif", crs="EPSG:3857", transform=tr)
    with PairReader(b, a) as pair:
        arr = pair.read(0, 40, 0, 40)
    inner = arr.valid[5:35, 5:35]
    assert inner.all()
    assert np.abs(arr.after[0, 5:35, 5:35] - data[0, 5:35, 5:35]).mean() < 15


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


def test_block_cache_assembles_windows_exactly_like_direct_reads(tmp_path) -> None:
    import rasterio
    from rasterio.windows import Window

    from microchange.io.datasets import BlockCache

    rng = np.random.default_rng(4)
    data = rng.integers(0, 4000, (3, 100, 120)).astype("uint16")
    data[:, 40:45, 50:70] = 0  # nodata
    path = tmp_path / "tiled.tif"
    with rasterio.open(path, "w", driver="GTiff", width=120, height=100, count=3,
                       dtype="uint16", nodata=0, tiled=True, blockxsize=32,
                       blockysize=32) as dst:
        dst.write(data)
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
