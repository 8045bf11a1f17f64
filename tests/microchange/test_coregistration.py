"""Co-registration: synthetic sub-pixel shifts are recovered within 0.1 px and corrected."""

import json

import numpy as np
import pytest
from scipy import ndimage

from microchange.config import DetectConfig, PreprocessConfig
from microchange.pipeline import run_detection
from microchange.preprocess.coregistration import (
    ShiftField,
    estimate_shift,
    estimate_shift_field,
    shift_image,
    shift_image_field,
    shift_margin,
)
from microchange.synthetic import make_scene, write_scene


def _texture(seed: int = 0, size: int = 256) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(size=(2, size, size)), (0, 2, 2)).astype("float32")


@pytest.mark.parametrize("shift", [(0.3, -0.7), (1.25, 0.4), (-0.05, 0.12), (2.6, -1.9)])
def test_estimate_recovers_shift_within_a_tenth_of_a_pixel(shift) -> None:
    img = _texture()
    moved = np.stack([ndimage.shift(b, shift, order=3, mode="reflect") for b in img])
    valid = np.ones(img.shape[1:], bool)
    est = estimate_shift([(img, moved.astype("float32"), valid)])
    # the estimate is the shift that registers AFTER back onto BEFORE
    assert abs(est.dy + shift[0]) <= 0.1 and abs(est.dx + shift[1]) <= 0.1


def test_shift_image_matches_spline_shift_and_masks_edges() -> None:
    img = _texture(1, 64)
    dy, dx = 0.4, -1.3
    m = shift_margin(dy, dx)
    valid = np.ones((64, 64), bool)
    valid[30, 30] = False
    out, v = shift_image(img, valid, dy, dx, m)
    ref = ndimage.shift(img[0], (dy, dx), order=3)[m:-m, m:-m]
    assert out.shape == (2, 64 - 2 * m, 64 - 2 * m)
    assert np.abs(out[0] - ref).max() < 0.01 * np.abs(ref).max()
    assert (~v).sum() == 16  # 4x4 taps touched the invalid pixel


def test_pipeline_estimates_corrects_and_records_the_shift(tmp_path) -> None:
    scene = make_scene(height=192, width=192, n_changes=0, shift_px=0.6, seed=4)
    paths = write_scene(scene, tmp_path / "in", dtype="float32", scale=1.0)
    run_detection(paths["before"], paths["after"], tmp_path / "o", DetectConfig(tile_size=64))
    coreg = json.loads((tmp_path / "o" / "run.json").read_text())["coregistration"]
    assert coreg["applied"]
    assert abs(coreg["applied_shift"][0] + scene.shift[0]) <= 0.1
    assert abs(coreg["applied_shift"][1] + scene.shift[1]) <= 0.1


def test_correction_is_tile_size_invariant_and_reduces_false_change(tmp_path) -> None:
    scene = make_scene(height=160, width=176, n_changes=0, shift_px=0.8, seed=6)
    paths = write_scene(scene, tmp_path / "in", dtype="float32", scale=1.0)
    scores = {}
    for name, size, coreg in (("a", 32, True), ("b", 512, True), ("off", 512, False)):
        pre = PreprocessConfig(coregister=coreg, smoothing_sigma=0.7)
        run_detection(paths["before"], paths["after"], tmp_path / name,
                      DetectConfig(tile_size=size, preprocess=pre, threshold="value:1"))
        import rasterio

        with rasterio.open(tmp_path / name / "change_score.tif") as src:
            scores[name] = src.read(1)
    np.testing.assert_array_equal(scores["a"], scores["b"])
    assert np.nanmean(scores["b"]) < 0.85 * np.nanmean(scores["off"])


def test_shift_image_field_with_a_constant_field_equals_shift_image() -> None:
    img = _texture(2, 64)
    dy, dx = -0.35, 1.6
    m = shift_margin(dy, dx)
    valid = np.ones((64, 64), bool)
    valid[20, 40] = False
    h = w = 64 - 2 * m
    out, v = shift_image_field(img, valid, np.full((h, w), dy), np.full((h, w), dx), m)
    ref, vref = shift_image(img, valid, dy, dx, m)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    np.testing.assert_array_equal(v, vref)


def test_shift_field_is_bilinear_between_cell_centres_and_constant_beyond() -> None:
    field = ShiftField.from_arrays([10.0, 30.0], [0.0, 100.0], np.array([[0.0, 1.0], [2.0, 3.0]]),
                                   np.zeros((2, 2)))
    dy, dx = field.sample(0, 41, 0, 101)
    assert dy[0, 0] == 0.0 and dy[10, 0] == 0.0 and dy[40, 100] == 3.0  # constant beyond
    assert dy[20, 50] == pytest.approx(1.5) and dy[15, 0] == pytest.approx(0.5)
    assert not dx.any()
    assert ShiftField.from_dict(field.as_dict()) == field


def test_field_drops_an_outlying_cell_and_fills_missing_ones() -> None:
    shifts = [[(0.1, 0.0), (0.1, 0.0), (0.2, 0.0)],
              [(0.1, 0.0), (0.9, -0.8), None],
              [(0.3, 0.0), (0.3, 0.0), (0.4, 0.0)]]
    field = estimate_shift_field([0, 1, 2], [0, 1, 2], shifts, (0.2, 0.0))
    dy = np.asarray(field.dy)
    assert dy[1, 1] < 0.35 and abs(field.dx[1][1]) < 1e-9  # the real-change cell is out
    assert np.all(np.abs(dy - np.array([[0.1, 0.1, 0.2], [0.1, 0.2, 0.3], [0.3, 0.3, 0.4]]))
                  <= 0.1 + 1e-9)


def _warped_pair(make_geotiff, size: int = 512):
    """A textured 2-band scene and a copy warped by a shift that varies over the raster."""
    img = _texture(3, size) * 100 + 1000
    r, c = np.mgrid[0:size, 0:size].astype("float64")
    d_row = -0.6 + 1.2 * r / (size - 1)  # AFTER(r, c) = BEFORE(r - d_row, c - d_col)
    d_col = 0.5 * np.sin(np.pi * c / (size - 1)) - 0.2
    warped = np.stack([ndimage.map_coordinates(b, [r - d_row, c - d_col], order=3,
                                               mode="reflect") for b in img])
    before = make_geotiff(img.astype("float32"), name="before.tif")
    after = make_geotiff(warped.astype("float32"), name="after.tif")
    return before, after, d_row, d_col


def test_local_field_recovers_a_varying_shift_within_a_tenth_of_a_pixel(
    tmp_path, make_geotiff
) -> None:
    before, after, d_row, d_col = _warped_pair(make_geotiff)
    pre = PreprocessConfig(coregister_cell=128)
    run_detection(before, after, tmp_path / "o", DetectConfig(tile_size=128, preprocess=pre))
    coreg = json.loads((tmp_path / "o" / "run.json").read_text())["coregistration"]
    assert coreg["mode"] == "local" and coreg["cells"]["usable"] == 16
    field = ShiftField.from_dict(coreg["field"])
    rows = np.rint(field.rows).astype(int)
    cols = np.rint(field.cols).astype(int)
    # the field registers AFTER back: the opposite of the distortion at each cell centre
    err_r = np.asarray(field.dy) + d_row[np.ix_(rows, cols)]
    err_c = np.asarray(field.dx) + d_col[np.ix_(rows, cols)]
    assert np.abs(err_r).max() <= 0.1 and np.abs(err_c).max() <= 0.1


def test_local_correction_beats_a_global_shift_and_is_tile_size_invariant(
    tmp_path, make_geotiff
) -> None:
    import rasterio

    before, after, _, _ = _warped_pair(make_geotiff)
    scores = {}
    for name, size, cell in (("a", 64, 128), ("b", 512, 128), ("global", 512, 0)):
        pre = PreprocessConfig(coregister_cell=cell, smoothing_sigma=0.7)
        run_detection(before, after, tmp_path / name,
                      DetectConfig(tile_size=size, preprocess=pre, threshold="value:1"))
        with rasterio.open(tmp_path / name / "change_score.tif") as src:
            scores[name] = src.read(1)
    np.testing.assert_array_equal(scores["a"], scores["b"])
    inner = (slice(8, -8), slice(8, -8))
    assert np.nanmean(scores["b"][inner]) < 0.5 * np.nanmean(scores["global"][inner])


def test_coregister_cell_below_64_is_refused() -> None:
    with pytest.raises(ValueError, match="coregister_cell=32"):
        PreprocessConfig(coregister_cell=32)


def test_no_field_is_applied_when_the_cells_do_not_agree(tmp_path, make_geotiff) -> None:
    # two unrelated textures: per-cell phase correlation returns noise, which must not be applied
    before = make_geotiff((_texture(7, 512) * 100 + 1000).astype("float32"), name="b.tif")
    after = make_geotiff((_texture(8, 512) * 100 + 1000).astype("float32"), name="a.tif")
    run_detection(before, after, tmp_path / "o",
                  DetectConfig(tile_size=256, preprocess=PreprocessConfig(coregister_cell=128)))
    coreg = json.loads((tmp_path / "o" / "run.json").read_text())["coregistration"]
    assert coreg["mode"] != "local" and coreg["field"] is None
    assert not coreg["applied"], coreg["reason"]


@pytest.mark.parametrize(("tile", "centres"), [(256, [191.5, 703.5]), (1024, [255.5, 767.5])])
def test_cell_blocks_sit_inside_one_internal_block(tmp_path, tile, centres) -> None:
    """Tiled input: each cell's 128 px block is moved into the 256 px block holding the cell
    centre (one decode per date, not four). One block for the whole raster: cell centres."""
    from microchange.io.pair import PairReader
    from microchange.preprocess.alignment import _cell_shifts

    scene = make_scene(height=1024, width=1024, bands=1, seed=2, n_changes=0)
    paths = write_scene(scene, tmp_path, tile=tile)
    pre = DetectConfig().preprocess
    with PairReader(paths["before"], paths["after"]) as pair:
        rows, cols, shifts = _cell_shifts(pair, pre, 512)
    assert rows == centres and cols == centres
    for r in rows:  # 128 px blocks, centred on these positions, within one 256 px block
        first = int(r - 63.5)
        assert tile == 1024 or first // 256 == (first + 127) // 256
    assert all(s is not None for line in shifts for s in line)  # every cell correlated
