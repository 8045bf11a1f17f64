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
