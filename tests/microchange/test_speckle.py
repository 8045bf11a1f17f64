"""Lee speckle filter: fitted speckle level, smoothing of homogeneous areas, edges kept, masks."""

import numpy as np
import pytest

from microchange.config import DetectConfig, PreprocessConfig
from microchange.detector import build_detector
from microchange.preprocess.speckle import SpeckleFilter, lee_filter
from microchange.types import PairArrays


def _speckled(looks: float = 4.0, seed: int = 0, size: int = 96):
    rng = np.random.default_rng(seed)
    truth = np.full((1, size, size), 0.05, np.float32)
    truth[:, :, size // 2:] = 0.4  # a strong vertical edge
    speckle = rng.gamma(looks, 1 / looks, truth.shape).astype(np.float32)
    return truth, truth * speckle


def test_fitted_speckle_level_matches_the_looks() -> None:
    _, img = _speckled(looks=4.0)
    _, img2 = _speckled(looks=4.0, seed=1)
    f = SpeckleFilter(5)
    f.fit([(img, img2, np.ones(img.shape[1:], bool))])
    # intensity with L looks: Cu^2 = 1 / L = 0.25 (homogeneous windows bias it a little low)
    assert f.cu2 is not None and 0.18 < float(f.cu2[0]) < 0.27


def test_lee_reduces_speckle_and_keeps_the_edge() -> None:
    _, img = _speckled()
    valid = np.ones(img.shape[1:], bool)
    out = lee_filter(img, valid, 7, np.array([0.25], np.float32))
    flat = (slice(None), slice(10, -10), slice(5, 40))
    cv_in = img[flat].std() / img[flat].mean()
    cv_out = out[flat].std() / out[flat].mean()
    assert cv_out < 0.5 * cv_in
    # the edge stays sharp: columns next to it keep their level within 25 %
    left, right = out[0, 10:-10, 44].mean(), out[0, 10:-10, 52].mean()
    assert left == pytest.approx(0.05, rel=0.25) and right == pytest.approx(0.4, rel=0.25)


def test_nodata_never_leaks_and_invalid_pixels_hold_zero() -> None:
    _, img = _speckled()
    valid = np.ones(img.shape[1:], bool)
    valid[:, 30:34] = False
    poisoned = img.copy()
    poisoned[:, ~valid] = 1e6
    a = lee_filter(img, valid, 5, np.array([0.25], np.float32))
    b = lee_filter(poisoned, valid, 5, np.array([0.25], np.float32))
    np.testing.assert_allclose(a, b, rtol=1e-5)
    assert (a[:, ~valid] == 0).all()


def test_tile_invariance_through_the_detector() -> None:
    _, img = _speckled(size=64)
    _, img2 = _speckled(size=64, seed=3)
    cfg = DetectConfig(sensor="sar", preprocess=PreprocessConfig(
        log_transform=True, speckle_window=5, smoothing_sigma=0.0, coregister=False))
    det = build_detector(cfg)
    halo = det.halo
    assert halo >= 2
    valid = np.ones((64, 64), bool)
    det.fit([PairArrays(img, img2, valid, 0)])
    whole = det.score(PairArrays(img, img2, valid, 0))
    pad = [(0, 0), (halo, halo), (halo, halo)]
    b, a = np.pad(img, pad, mode="reflect"), np.pad(img2, pad, mode="reflect")
    v = np.ones(b.shape[1:], bool)
    part = det.score(PairArrays(b[:, :32 + 2 * halo, :32 + 2 * halo],
                                a[:, :32 + 2 * halo, :32 + 2 * halo],
                                v[:32 + 2 * halo, :32 + 2 * halo], halo))
    np.testing.assert_allclose(part[halo:, halo:], whole[halo:32, halo:32], rtol=1e-5, atol=1e-6)


def test_bad_windows() -> None:
    with pytest.raises(ValueError, match="must be 0 \\(off\\) or odd"):
        SpeckleFilter(4)
    with pytest.raises(ValueError, match=r"speckle_window\s.*speckle_window=6 must be 0"):
        PreprocessConfig(speckle_window=6)
    off = SpeckleFilter(0)
    _, img = _speckled()
    off.fit([(img, img, np.ones(img.shape[1:], bool))])
    assert off.apply(img, np.ones(img.shape[1:], bool)) is img and off.state() == {}
