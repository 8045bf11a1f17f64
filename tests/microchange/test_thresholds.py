import numpy as np
import pytest

from microchange.errors import ConfigError
from microchange.scoring.thresholds import fit_threshold, otsu_threshold


def test_otsu_splits_a_bimodal_sample_between_the_modes() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(1.0, 0.2, 9000), rng.normal(5.0, 0.3, 1000)])
    t = otsu_threshold(values)
    assert 2.0 < t < 4.0
    assert ((values > t) == (np.arange(values.size) >= 9000)).mean() > 0.999


def test_otsu_of_constant_sample_is_that_value() -> None:
    assert otsu_threshold(np.full(10, 3.0)) == 3.0


def test_fixed_value_and_unknown_spec() -> None:
    assert fit_threshold("value:2.5", np.ones(4)).value == 2.5
    with pytest.raises(ConfigError, match="unknown threshold 'median'"):
        fit_threshold("median", np.ones(4))


def _bimodal(n0: int = 9000, n1: int = 1000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(1.0, 0.2, n0), rng.normal(5.0, 0.6, n1)])


@pytest.mark.parametrize("spec", ["otsu", "kittler-illingworth", "kmeans"])
def test_every_histogram_threshold_separates_bimodal_data(spec: str) -> None:
    values = _bimodal()
    t = fit_threshold(spec, values)
    assert t.method == spec and t.n_sample == values.size
    truth = np.arange(values.size) >= 9000
    assert ((values > t.value) == truth).mean() > 0.995


@pytest.mark.parametrize("seed", [1, 5, 9])
def test_kittler_illingworth_handles_rare_change_where_otsu_splits_the_noise(seed: int) -> None:
    """1 % change, wider than the noise: Otsu (and 2-means) split the no-change mode, KI does not.

    Both bounds count: marking nothing would keep false alarms at 0, marking the upper half of the
    noise would keep recall at 1.
    """
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.normal(0.0, 1.0, 19800), rng.normal(8.0, 1.5, 200)])
    truth = np.arange(values.size) >= 19800

    def rates(spec: str) -> tuple[float, float]:
        flagged = values > fit_threshold(spec, values).value
        return flagged[truth].mean(), flagged[~truth].mean()

    ki_recall, ki_false_alarms = rates("kittler-illingworth")
    otsu_recall, otsu_false_alarms = rates("otsu")
    assert ki_recall >= 0.98 and ki_false_alarms <= 0.001
    assert otsu_recall >= 0.98 and otsu_false_alarms > 0.2  # the case KI is for
    assert ki_false_alarms < otsu_false_alarms / 100


def test_fpr_threshold_bounds_false_alarms_of_a_gaussian_null() -> None:
    rng = np.random.default_rng(2)
    null = rng.normal(0.0, 2.0, 200_000)  # signed scores: Gaussian null (median, MAD)
    t = fit_threshold("fpr:0.001", null)
    assert t.method == "fpr"
    assert 0.0007 < (null > t.value).mean() < 0.0013
    with_change = np.concatenate([null, rng.normal(20, 2, 2000)])  # 1 % change barely moves it
    assert abs(fit_threshold("fpr:0.001", with_change).value - t.value) < 0.15
    with pytest.raises(ConfigError, match="out of range"):
        fit_threshold("fpr:0.7", null)


@pytest.mark.parametrize("dof", [1, 4, 13])
def test_fpr_threshold_is_exact_for_change_vector_magnitudes(dof: int) -> None:
    # CVA magnitude of no-change pixels: a scaled chi; the Gamma null of its square is exact
    rng = np.random.default_rng(dof)
    magnitudes = 0.3 * np.sqrt(rng.chisquare(dof, 400_000))
    t = fit_threshold("fpr:0.001", magnitudes).value
    assert 0.0008 < (magnitudes > t).mean() < 0.0012


@pytest.mark.parametrize("changed_share", [0.0, 0.05, 0.25, 0.4])
def test_auto_keeps_otsu_on_scenes_with_much_change_and_bounds_noise_without(
        changed_share: float) -> None:
    # no-change magnitudes are a scaled chi (4 bands); changed pixels a separate, brighter mode
    rng = np.random.default_rng(7)
    n = 200_000
    k = int(n * changed_share)
    unchanged = 0.3 * np.sqrt(rng.chisquare(4, n - k))
    values = np.concatenate([unchanged, rng.normal(2.5, 0.4, k)])
    t = fit_threshold("auto", values)
    if changed_share == 0.0:
        assert t.detail["rule"].startswith("fpr")
        assert (unchanged > t.value).mean() < 0.0005
    else:
        # the null, fitted on the lower half, does not swallow a change mode of up to 40 %
        assert t.detail["rule"] == "otsu"
        assert (unchanged > t.value).mean() < 0.01 and (values[n - k:] > t.value).mean() > 0.95
