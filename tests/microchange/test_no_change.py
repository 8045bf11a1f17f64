"""Issue 5 acceptance: a pair without change yields < 0.1 % changed pixels with the defaults."""

from dataclasses import replace

import numpy as np
import pytest

from microchange.config import DetectConfig
from microchange.pipeline import run_detection
from microchange.synthetic import make_scene, write_scene


@pytest.fixture(scope="module")
def quiet_scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("quiet")
    scene = make_scene(height=256, width=256, n_changes=0, seed=21, shift_px=0.0)
    # only radiometric nuisance: per-band gain/offset/gamma, plus sensor noise
    gamma = np.array([1.0, 1.1, 0.9, 1.05], np.float32)[:, None, None]
    after = 1.1 * np.power(np.clip(scene.before, 1e-4, None), gamma) + 0.02
    rng = np.random.default_rng(0)
    after = after + rng.normal(0, 0.005, after.shape).astype(np.float32)
    nuisance = replace(scene, after=after.astype(np.float32))
    return (write_scene(scene, root / "same", dtype="uint16"),
            write_scene(nuisance, root / "nuisance", dtype="uint16"))


@pytest.fixture(scope="module")
def quiet_sar(tmp_path_factory):
    """Calibrated backscatter (float32, linear power ~0.01-0.1) of the same ground on two dates:
    independent 4-look speckle, and a calibration gain and gamma on AFTER."""
    scene = make_scene(height=256, width=256, bands=1, n_changes=0, seed=21, shift_px=0.0,
                       noise=0.0)
    rng = np.random.default_rng(0)
    sigma0 = np.clip(scene.before, 0.005, None) ** 2 * 4

    def speckle(x):
        return (x * rng.gamma(4.0, 0.25, x.shape)).astype(np.float32)

    pair = replace(scene, before=speckle(sigma0),
                   after=(1.3 * np.power(speckle(sigma0), 1.1)).astype(np.float32))
    return write_scene(pair, tmp_path_factory.mktemp("sar"), dtype="float32")


@pytest.mark.parametrize("sensor", ["optical", "sar"])
def test_same_image_twice(quiet_scene, tmp_path, sensor) -> None:
    same, _ = quiet_scene
    s = run_detection(same["before"], same["before"], tmp_path / "o", DetectConfig(sensor=sensor))
    assert s["counts"]["changed_fraction"] < 0.001


# the sensor's default, every scorer on the band features with its own default threshold, and
# the 'learned' method with its defaults (PCA-KMeans clustering of its residuals)
SCORED = [(None, None), ("cva", None), ("pca-kmeans", None), ("cva", "mahalanobis"),
          ("cva", "density"), ("learned", None)]


@pytest.mark.parametrize(("method", "scorer"), SCORED)
def test_optical_radiometric_nuisance_only(quiet_scene, tmp_path, method, scorer) -> None:
    _, nuisance = quiet_scene
    s = run_detection(nuisance["before"], nuisance["after"], tmp_path / "o",
                      DetectConfig(method=method, scorer=scorer))
    assert s["counts"]["changed_fraction"] < 0.001, s["threshold"]


@pytest.mark.parametrize(("method", "scorer"), SCORED)
def test_sar_speckle_and_calibration_only(quiet_sar, tmp_path, method, scorer) -> None:
    s = run_detection(quiet_sar["before"], quiet_sar["after"], tmp_path / "o",
                      DetectConfig(sensor="sar", method=method, scorer=scorer))
    assert s["counts"]["changed_fraction"] < 0.001, s["threshold"]
