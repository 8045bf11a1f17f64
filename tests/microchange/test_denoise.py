"""Denoisers: median and bilateral keep edges, ignore nodata, and do not depend on tile size."""

import numpy as np
import pytest
import rasterio

from microchange.config import DetectConfig, PreprocessConfig
from microchange.pipeline import run_detection
from microchange.preprocess.denoise import (
    NoiseLevel,
    bilateral_masked,
    denoise_halo,
    median_masked,
    smooth_masked,
)


def _step(noise: float = 0.0, seed: int = 0) -> np.ndarray:
    """(2, 64, 64) image: 0 left, 10 right, plus Gaussian noise."""
    img = np.zeros((2, 64, 64), np.float32)
    img[:, :, 32:] = 10.0
    if noise:
        img += np.random.default_rng(seed).normal(0, noise, img.shape).astype(np.float32)
    return img


def test_median_removes_impulses_and_keeps_a_step_edge() -> None:
    img = _step()
    img[0, 10, 10] = 1000.0
    img[1, 40, 50] = -1000.0
    out = median_masked(img, np.ones((64, 64), bool), 1)
    np.testing.assert_array_equal(out, _step())


def test_median_ignores_invalid_pixels() -> None:
    img = _step()
    valid = np.ones((64, 64), bool)
    valid[20:24, 5:9] = False
    img[:, ~valid] = 1e6  # must not leak
    out = median_masked(img, valid, 2)
    assert out[:, valid].max() == 10.0 and (out[:, ~valid] == 0).all()
    np.testing.assert_array_equal(out[:, valid], _step()[:, valid])


def test_bilateral_smooths_noise_but_keeps_the_edge_sharper_than_gaussian() -> None:
    img = _step(noise=1.0)
    valid = np.ones((64, 64), bool)
    noise = NoiseLevel(True)
    noise.fit([(img, img, valid)])
    assert noise.level is not None
    np.testing.assert_allclose(noise.level, 1.0, rtol=0.1)  # the edge hardly biases it
    bil = bilateral_masked(img, valid, 1.5, noise.level)
    gau = smooth_masked(img, valid, 1.5)
    flat = (slice(None), slice(8, 56), slice(4, 24))
    assert bil[flat].std() < 0.5 * img[flat].std()
    edge = bil[:, 8:56, 33].mean() - bil[:, 8:56, 30].mean()
    assert edge > 9.0 > gau[:, 8:56, 33].mean() - gau[:, 8:56, 30].mean()


def test_bilateral_ignores_invalid_pixels() -> None:
    img = _step(noise=0.5, seed=2)
    valid = np.ones((64, 64), bool)
    valid[30:34, 10:14] = False
    dirty = img.copy()
    dirty[:, ~valid] = 1e6
    level = np.ones(2, np.float32)
    np.testing.assert_array_equal(bilateral_masked(img, valid, 1.0, level),
                                  bilateral_masked(dirty, valid, 1.0, level))


def test_halo_covers_each_filter() -> None:
    assert denoise_halo("gaussian", 0.7) == 3
    assert denoise_halo("median", 0.7) == 1
    assert denoise_halo("bilateral", 0.7) == 2
    assert denoise_halo("bilateral", 0.0) == 0


@pytest.mark.parametrize("kind", ["median", "bilateral"])
def test_denoised_scores_do_not_depend_on_tile_size(tmp_path, planted_pair, kind) -> None:
    before, after, _ = planted_pair
    scores = []
    for size in (32, 512):
        pre = PreprocessConfig(denoise=kind, smoothing_sigma=1.0, coregister=False)
        out = tmp_path / f"{kind}-{size}"
        run_detection(before, after, out, DetectConfig(tile_size=size, preprocess=pre))
        with rasterio.open(out / "change_score.tif") as src:
            scores.append(src.read(1))
    np.testing.assert_array_equal(scores[0], scores[1])


def test_bilateral_noise_level_is_recorded(tmp_path, planted_pair) -> None:
    import json

    before, after, truth = planted_pair
    pre = PreprocessConfig(denoise="bilateral", smoothing_sigma=1.0)
    run_detection(before, after, tmp_path / "o", DetectConfig(tile_size=64, preprocess=pre))
    doc = json.loads((tmp_path / "o" / "run.json").read_text())
    levels = doc["fitted_preprocess"]["noise_level"]
    assert len(levels) >= 1 and all(v > 0 for v in levels)
    with rasterio.open(tmp_path / "o" / "change_mask.tif") as src:
        mask = src.read(1)
    assert (mask[truth] == 1).mean() > 0.8  # the planted change is found


@pytest.mark.parametrize("sigma", [0.5, 0.7, 1.5, 3.3])
@pytest.mark.parametrize("shape", [(518, 518), (37, 100), (7, 5)])
def test_all_valid_smoothing_equals_the_normalised_convolution_bit_for_bit(sigma, shape) -> None:
    """The all-valid shortcut skips the weights; the general path gives the same bits."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    img = rng.normal(0, 1, (3, *shape)).astype(np.float32)
    valid = np.ones(shape, bool)
    w = valid.astype(np.float32)
    norm = ndimage.gaussian_filter(w, sigma, mode="mirror", truncate=4.0)
    general = np.stack([ndimage.gaussian_filter(b * w, sigma, mode="mirror", truncate=4.0)
                        for b in img]) / norm
    assert np.array_equal(smooth_masked(img, valid, sigma), general.astype(np.float32))
