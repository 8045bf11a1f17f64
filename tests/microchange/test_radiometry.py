"""Relative radiometric normalisation: gain/offset/gamma removed, change kept out of the fit."""

import json

import numpy as np
import pytest
import rasterio

from microchange.config import DetectConfig, PreprocessConfig
from microchange.pipeline import run_detection
from microchange.preprocess.radiometry import RadiometricNormaliser


def relative_error(mapped, reference) -> float:
    """Median of |mapped - reference| / |reference| over nonzero reference values."""
    ref = np.abs(reference)
    ok = ref > 0
    return float(np.median(np.abs(mapped[ok] - reference[ok]) / ref[ok]))


def _pair(seed: int = 0, n_changed: int = 0):
    rng = np.random.default_rng(seed)
    before = rng.gamma(4.0, 0.05, (3, 64, 64)).astype(np.float32) + 0.02
    gain = np.array([1.2, 0.8, 1.1], np.float32)[:, None, None]
    offset = np.array([0.03, -0.01, 0.05], np.float32)[:, None, None]
    gamma = np.array([1.0, 1.15, 0.85], np.float32)[:, None, None]
    after = gain * np.power(before, gamma) + offset
    truth = np.zeros((64, 64), bool)
    truth[:, :n_changed] = True
    after[:, truth] = 1.5  # changed ground: far brighter on every band
    valid = np.ones((64, 64), bool)
    return before, after.astype(np.float32), valid, truth


@pytest.mark.parametrize("blocks", [1, 4])
def test_histogram_removes_gain_offset_and_gamma_within_one_percent(blocks) -> None:
    before, after, valid, _ = _pair()
    norm = RadiometricNormaliser("histogram")
    step = 64 // blocks
    norm.fit([(before[:, i:i + step], after[:, i:i + step], valid[i:i + step])
              for i in range(0, 64, step)])
    mapped = norm.apply(after, valid)
    assert relative_error(after, before) > 0.05  # the nuisance is real
    assert relative_error(mapped, before) < 0.01


def test_changed_pixels_are_not_used_as_invariant_pixels() -> None:
    before, after, valid, truth = _pair(n_changed=6)  # ~9 % of the pixels changed
    norm = RadiometricNormaliser("histogram")
    norm.fit([(before, after, valid)])
    mapped = norm.apply(after, valid)
    assert relative_error(mapped[:, ~truth], before[:, ~truth]) < 0.01
    assert norm.n_pif <= int((~truth).sum())
    # change survives the mapping: far from BEFORE
    assert np.abs(mapped[:, truth] - before[:, truth]).mean() > 0.5


def test_linear_recovers_gain_and_offset() -> None:
    rng = np.random.default_rng(3)
    before = rng.uniform(100, 2000, (2, 50, 50)).astype(np.float32)
    after = (before * np.array([1.3, 0.7], np.float32)[:, None, None]
             + np.array([-40.0, 25.0], np.float32)[:, None, None])
    valid = np.ones((50, 50), bool)
    valid[:5] = False
    after[:, :5] = 0.0
    norm = RadiometricNormaliser("linear")
    norm.fit([(before, after, valid)])
    bands = norm.summary()["bands"]
    assert bands[0]["gain"] == pytest.approx(1 / 1.3, rel=1e-3)
    assert bands[1]["offset"] == pytest.approx(-25.0 / 0.7, rel=1e-3)
    mapped = norm.apply(after, valid)
    assert (mapped[:, :5] == 0).all()
    np.testing.assert_allclose(mapped[:, valid], before[:, valid], rtol=1e-3)


def test_state_round_trip_and_errors() -> None:
    before, after, valid, _ = _pair(seed=2)
    norm = RadiometricNormaliser("histogram")
    norm.fit([(before, after, valid)])
    other = RadiometricNormaliser("histogram")
    other.load_state(norm.state())
    assert np.array_equal(other.apply(after, valid), norm.apply(after, valid))
    with pytest.raises(ValueError, match="'histogram', not 'linear'"):
        RadiometricNormaliser("linear").load_state(norm.state())
    with pytest.raises(ValueError, match="fitted on 3 bands, got 2"):
        norm.apply(after[:2], valid)
    with pytest.raises(ValueError, match="unknown radiometric normalisation 'gamma'"):
        RadiometricNormaliser("gamma")  # type: ignore[arg-type]
    none = RadiometricNormaliser("none")
    none.fit([(before, after, valid)])
    assert none.apply(after, valid) is after and none.summary() == {"method": "none"}


def test_extrapolates_beyond_the_sample_range() -> None:
    before, after, valid, _ = _pair(seed=4)
    norm = RadiometricNormaliser("histogram")
    norm.fit([(before, after, valid)])
    hi = np.full((3, 1, 2), after.max() * 2, np.float32)
    out = norm.apply(hi, np.ones((1, 2), bool))
    assert (out > before.max()).all()  # monotone, not clamped


def _mask(out) -> np.ndarray:
    with rasterio.open(out / "change_mask.tif") as src:
        return src.read(1) == 1


def test_run_records_the_mapping_and_finds_the_changes_only(planted_pair, tmp_path) -> None:
    before, after, truth = planted_pair
    cfg = DetectConfig(preprocess=PreprocessConfig(radiometric="histogram"))
    run_detection(before, after, tmp_path / "o", cfg)
    doc = json.loads((tmp_path / "o" / "run.json").read_text())
    rad = doc["fitted_preprocess"]["radiometry"]
    assert rad["method"] == "histogram"
    assert 0.9 < rad["pif_fraction"] <= 1.0
    assert len(rad["bands"]) == 4
    mask = _mask(tmp_path / "o")
    assert mask[truth].mean() >= 0.9  # recall of the planted changes
    assert (mask & ~truth).sum() <= 0.1 * truth.sum()  # and (almost) nothing else


def test_histogram_normalisation_quietens_a_nonlinear_nuisance_pair(make_geotiff,
                                                                   tmp_path) -> None:
    """Per-band gamma of 0.5, 1.8 and 0.6 over a wide range of values: per-date z-scores
    (CVA's features) leave the curvature, which flags ~100 bright or dark pixels as change;
    quantile mapping onto BEFORE removes it and keeps the 49 changed pixels."""
    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 400.0, (3, 96, 96)) + 50
    gamma = np.array([0.5, 1.8, 0.6])[:, None, None]
    after = 3000 * (base / 3000) ** gamma + rng.normal(0, 10, base.shape)
    truth = np.zeros((96, 96), bool)
    for r0, c0, size in ((10, 12, 3), (50, 60, 6), (80, 20, 2)):
        truth[r0:r0 + size, c0:c0 + size] = True
    after[:, truth] += 600
    b = make_geotiff((base + rng.normal(0, 10, base.shape)).astype("float32"), name="b.tif")
    a = make_geotiff(after.astype("float32"), name="a.tif")
    masks = {}
    for method in ("histogram", "none"):
        cfg = DetectConfig(method="cva", preprocess=PreprocessConfig(
            radiometric=method, smoothing_sigma=0.0, coregister=False))
        run_detection(b, a, tmp_path / method, cfg)
        masks[method] = _mask(tmp_path / method)
    assert (masks["none"] & ~truth).sum() >= 50  # the nuisance is real
    assert masks["histogram"][truth].mean() >= 0.95
    assert (masks["histogram"] & ~truth).sum() <= 5


def test_log_offset_follows_the_data_scale() -> None:
    from microchange.config import PreprocessConfig
    from microchange.preprocess.chain import preprocess_image
    from microchange.preprocess.logtransform import LogTransform

    rng = np.random.default_rng(0)
    valid = np.ones((32, 32), bool)
    sigma0 = rng.gamma(4.0, 0.01, (1, 32, 32)).astype(np.float32)  # calibrated, linear power
    dn = (sigma0 * 10000).round().astype(np.float32)  # digital numbers
    log = LogTransform(True)
    log.fit([(dn, dn, valid)])
    assert log.offset is not None and log.offset.tolist() == [1.0]  # log1p, as for 8/16-bit data
    log.fit([(sigma0, sigma0, valid)])
    median = float(np.median(sigma0))
    assert log.offset[0] == pytest.approx(0.01 * median, rel=1e-5)
    pre = PreprocessConfig(log_transform=True)
    out = preprocess_image(sigma0, valid, pre, log_offset=log.offset)
    # a ratio of 2 is a log difference of ~log 2, whatever the units (log1p would give ~0.01)
    doubled = preprocess_image(2 * sigma0, valid, pre, log_offset=2 * log.offset)
    np.testing.assert_allclose(doubled - out, np.log(2), rtol=1e-4)
    other = LogTransform(True)
    other.load_state(log.state())
    assert np.array_equal(other.offset, log.offset)
    off = LogTransform(False)
    off.fit([(sigma0, sigma0, valid)])
    assert off.offset is None and off.state() == {}
