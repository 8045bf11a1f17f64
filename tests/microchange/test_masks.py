"""Per-date valid-data masks and class rasters (microchange.io.masks) through the pipeline."""

import json
import math

import numpy as np
import pytest
import rasterio

from microchange.cli import main
from microchange.config import DetectConfig, MaskConfig
from microchange.errors import GridMismatchError, NoOverlapError, RasterReadError
from microchange.io.pair import PairReader
from microchange.pipeline import run_detection

X0, Y0 = 500_000.0, 4_000_000.0
N = 64  # 10 m grid of BEFORE/AFTER; the masks are at 20 m


@pytest.fixture
def scene(tmp_path, write_raster):
    """4-band pair with two planted changes; a 20 m cloud mask and a 20 m SCL raster.

    The SCL raster extends 2 coarse pixels (40 m) beyond the image to the west and north, so it
    is warped (nearest) rather than read in place.
    """
    rng = np.random.default_rng(3)
    base = rng.normal(1000, 50, (4, N, N))
    before = base + rng.normal(0, 5, base.shape)
    after = base + rng.normal(0, 5, base.shape)
    after[:, 4:12, 4:12] += 800  # change A: under the cloud of the AFTER mask
    after[:, 40:48, 40:48] += 800  # change B: clear sky, must be detected
    b = write_raster(tmp_path / "before.tif", before.astype("float32"), res=10)
    a = write_raster(tmp_path / "after.tif", after.astype("float32"), res=10)
    cloud = np.ones((N // 2, N // 2), "uint8")  # 1 = valid
    cloud[1:7, 1:7] = 0  # cloud over fine rows/cols 2..13 (covers change A)
    mask = write_raster(tmp_path / "after_valid.tif", cloud, res=20)
    scl = np.full((N // 2 + 2, N // 2 + 2), 4, "uint8")  # 4 = vegetation
    scl[2 + 20, 2 + 3] = 9  # cloud high probability -> fine rows 40-41, cols 6-7
    scl[2 + 25:2 + 27, 2 + 10] = 3  # cloud shadow -> fine rows 50-53, cols 20-21
    scl[2 + 28, 2 + 28] = 5  # bare soil: kept
    classes = write_raster(tmp_path / "before_scl.tif", scl, res=20, origin=(X0 - 40, Y0 + 40))
    excluded = np.zeros((N, N), bool)
    excluded[2:14, 2:14] = True
    excluded[40:42, 6:8] = True
    excluded[50:54, 20:22] = True
    return b, a, mask, classes, excluded


def test_masks_exclude_exactly_the_expected_pixels(scene):
    b, a, mask, classes, excluded = scene
    cfg = MaskConfig(after_mask=str(mask), before_classes=str(classes))
    with PairReader(b, a, masks=cfg) as pair:
        whole = pair.read(0, N, 0, N)
        np.testing.assert_array_equal(~whole.valid, excluded)
        assert (whole.before[:, excluded] == 0).all()
        assert set(pair.mask_files) == {"after_mask", "before_classes"}
        part = pair.read(5, 45, 3, 33)  # windows agree with the whole
        np.testing.assert_array_equal(part.valid, whole.valid[5:45, 3:33])
    with PairReader(b, a, masks=MaskConfig(after_mask=str(mask), invert_masks=True)) as pair:
        inv = pair.read(0, N, 0, N).valid
    assert inv.sum() == 36 * 4  # only the cloud (6 x 6 coarse pixels) is kept
    only_shadow = MaskConfig(before_classes=str(classes), exclude_classes=(3,))
    with PairReader(b, a, masks=only_shadow) as pair:
        assert (~pair.read(0, N, 0, N).valid).sum() == 8


def test_outputs_are_nodata_where_masked_and_never_changed(scene, tmp_path):
    b, a, mask, classes, excluded = scene
    out = tmp_path / "out"
    cfg = DetectConfig(tile_size=32, masks=MaskConfig(after_mask=str(mask),
                                                      before_classes=str(classes)))
    run_detection(b, a, out, cfg)
    with rasterio.open(out / "change_mask.tif") as m, rasterio.open(out / "change_score.tif") as s:
        cm, score = m.read(1), s.read(1)
    np.testing.assert_array_equal(cm == 255, excluded)
    np.testing.assert_array_equal(np.isnan(score), excluded)
    assert not (cm[4:12, 4:12] == 1).any()  # change A is under the cloud
    assert (cm[40:48, 40:48] == 1).mean() > 0.9  # change B is found
    run = json.loads((out / "run.json").read_text())
    assert run["parameters"]["masks"]["after_mask"] == str(mask.resolve())
    assert run["inputs"]["masks"]["before_classes"]["path"] == str(classes.resolve())
    assert run["counts"]["valid_px"] == N * N - excluded.sum()


def test_cli_mask_flags(scene, tmp_path):
    b, a, mask, classes, excluded = scene
    out = tmp_path / "cli"
    rc = main(["detect", str(b), str(a), "--out", str(out), "--after-mask", str(mask),
               "--before-classes", str(classes), "--exclude-classes", "9", "--tile-size", "32",
               "-q"])
    assert rc == 0
    run = json.loads((out / "run.json").read_text())
    assert run["parameters"]["masks"]["exclude_classes"] == [9]
    expected = excluded.copy()
    expected[50:54, 20:22] = False  # class 3 (shadow) no longer excluded
    with rasterio.open(out / "change_mask.tif") as m:
        np.testing.assert_array_equal(m.read(1) == 255, expected)
    out2 = tmp_path / "cli_inv"
    assert main(["detect", str(b), str(a), "--out", str(out2), "--before-mask", str(mask),
                 "--invert-masks", "-q"]) == 0
    with rasterio.open(out2 / "change_mask.tif") as m:
        assert (m.read(1) != 255).sum() == 36 * 4
    assert main(["detect", str(b), str(a), "--out", str(tmp_path / "x"), "--before-mask",
                 str(tmp_path / "nope.tif"), "-q"]) == 2


def test_mask_errors(scene, tmp_path, make_geotiff, write_raster):
    b, a, _, _, _ = scene
    with pytest.raises(RasterReadError, match=r"--after-mask raster .*nope\.tif' does not exist"):
        PairReader(b, a, masks=MaskConfig(after_mask=str(tmp_path / "nope.tif")))
    far = write_raster(tmp_path / "far.tif", np.ones((4, 4), "uint8"), res=20,
                       origin=(X0 + 1e5, Y0))
    with pytest.raises(NoOverlapError, match=r"--before-mask .*does not overlap"):
        PairReader(b, a, masks=MaskConfig(before_mask=str(far)))
    plain = make_geotiff(np.ones((1, 10, 10), "uint8"), name="plain.tif", crs=None)
    with pytest.raises(GridMismatchError, match=r"must then have the output grid's size 64x64"):
        PairReader(b, a, masks=MaskConfig(before_mask=str(plain)))


def test_mask_outside_its_footprint_is_invalid(scene, tmp_path, write_raster):
    b, a, _, _, _ = scene
    half = write_raster(tmp_path / "half.tif", np.ones((N // 2, N // 4), "uint8"),
                        res=20)  # west half
    with PairReader(b, a, masks=MaskConfig(before_mask=str(half))) as pair:
        valid = pair.read(0, N, 0, N).valid
    assert valid[:, : N // 2].all() and not valid[:, N // 2:].any()
    assert math.isclose(valid.mean(), 0.5)
