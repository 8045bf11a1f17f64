"""Co-registration: synthetic sub-pixel shifts are recovered within 0.1 px and corrected."""

import json

import numpy as np
import pytest
from scipy import ndimage

from microchange.config import DetectConfig, PreprocessConfig
from microchange.coregistration import estimate_shift, shift_image, shift_margin
from microchange.pipeline import run_detection
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
