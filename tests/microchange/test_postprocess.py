"""Post-processing: minimum mapping unit and morphology, seamless across tile borders."""

import numpy as np
import pytest
import rasterio

from microchange.config import DetectConfig, PostprocessConfig, PreprocessConfig
from microchange.errors import InputError
from microchange.pipeline import run_detection
from microchange.scoring.mask import make_mask

RAW = PreprocessConfig(radiometric="none", smoothing_sigma=0.0)


def _mask(out):
    with rasterio.open(out / "change_mask.tif") as src:
        return src.read(1)


@pytest.fixture
def blob_pair(make_geotiff):
    """Changes of 1, 4, 6 (across the 32-px tile border) and 30 px on a quiet background."""
    rng = np.random.default_rng(5)
    before = rng.normal(100, 2, (2, 80, 90)).astype("float32")
    after = before + rng.normal(0, 0.5, before.shape).astype("float32")
    truth = np.zeros((80, 90), bool)
    truth[5, 5] = True                      # 1 px
    truth[10:12, 50:52] = True              # 4 px
    truth[31:33, 40:43] = True              # 6 px, split by the row-32 tile border
    truth[50:55, 60:66] = True              # 30 px
    after[:, truth] += 50
    return make_geotiff(before, name="b.tif"), make_geotiff(after, name="a.tif"), truth


@pytest.mark.parametrize("size", [32, 64, 512])
def test_min_region_keeps_whole_regions_across_tiles(blob_pair, tmp_path, size) -> None:
    b, a, truth = blob_pair
    cfg = DetectConfig(tile_size=size, preprocess=RAW, threshold="value:10",
                       postprocess=PostprocessConfig(min_region_px=5))
    summary = run_detection(b, a, tmp_path / "o", cfg)
    mask = _mask(tmp_path / "o") == 1
    expected = truth.copy()
    expected[5, 5] = False
    expected[10:12, 50:52] = False
    np.testing.assert_array_equal(mask, expected)
    assert summary["counts"]["regions"] == 2 and summary["counts"]["changed_px"] == 36
    assert summary["counts"]["removed_by_min_region_px"] == 5


def test_min_region_in_square_metres(blob_pair, tmp_path) -> None:
    b, a, _ = blob_pair  # 10 m pixels: 500 m2 = 5 px
    cfg = DetectConfig(tile_size=32, preprocess=RAW, threshold="value:10",
                       postprocess=PostprocessConfig(min_region_m2=500))
    summary = run_detection(b, a, tmp_path / "o", cfg)
    assert summary["counts"]["changed_px"] == 36


def test_min_region_m2_needs_a_crs(make_geotiff, tmp_path) -> None:
    data = np.zeros((1, 40, 40), "float32")
    p = make_geotiff(data, name="plain.tif", crs=None)
    cfg = DetectConfig(postprocess=PostprocessConfig(min_region_m2=100))
    with pytest.raises(InputError, match=r"min_region_m2=100\.0 needs a georeferenced grid"):
        run_detection(p, p, tmp_path / "o", cfg)


def test_morphology_is_tile_size_invariant(blob_pair, tmp_path) -> None:
    b, a, _ = blob_pair
    masks = []
    for size in (32, 48, 512):
        cfg = DetectConfig(tile_size=size, preprocess=RAW, threshold="value:10",
                           postprocess=PostprocessConfig(opening_radius=1, closing_radius=1))
        run_detection(b, a, tmp_path / f"o{size}", cfg)
        masks.append(_mask(tmp_path / f"o{size}"))
    np.testing.assert_array_equal(masks[0], masks[2])
    np.testing.assert_array_equal(masks[1], masks[2])
    # opening with a radius-1 disk removes the 1-px, 4-px (2x2) and keeps the 5x6 block
    assert masks[2][5, 5] == 0 and masks[2][10, 50] == 0 and masks[2][52, 62] == 1


def test_make_mask_marks_nodata_and_crops() -> None:
    score = np.array([[0, 0, 0, 0], [0, 5, np.nan, 0], [0, 5, 5, 0], [0, 0, 0, 0]], np.float32)
    mask, core = make_mask(score, 1.0, PostprocessConfig(), keep=1)
    np.testing.assert_array_equal(mask, [[1, 255], [1, 1]])
    assert core.shape == (2, 2) and np.isnan(core[0, 1])
