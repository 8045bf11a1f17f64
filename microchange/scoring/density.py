"""Density-based scoring: how unlikely a difference vector is under the no-change density.

A density model of the *no-change* difference vectors describes everything that is not change
(noise, residual radiometry, misregistration); real change falls in its low-density tail.

1. **No-change sample.** Difference vectors are drawn from the global sample; those whose
   magnitude is above the ``auto`` threshold of the magnitudes (Otsu when the sample shows a
   second mode, else a 1e-4 null-model bound; at least the median is kept) are left out, so a
   large changed area does not get a component of its own and look "normal".
2. **Gaussian mixture** of 1..4 full-covariance components on them, chosen by BIC
   (:class:`sklearn.mixture.GaussianMixture`).
3. **Calibrated score.** The negative log-likelihood (NLL) is turned into a tail probability
   under the fitted density itself: 200 000 vectors drawn from the mixture give the distribution
   of the NLL under "no change", and a pixel's score is ``-log10 P(NLL >= its NLL)`` (beyond
   the simulated range the tail decays as ``exp(-NLL)``, that of a Gaussian's). A score of 4
   means "one in 10^4 unchanged pixels looks this unusual": the method's default threshold is
   ``value:4``, a false-alarm rate of 1e-4 under the fitted no-change density, and a pair without
   change gives (almost) no changed pixel.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from microchange.errors import NoOverlapError, NotFittedError, StateMismatchError
from microchange.scoring.distance import sample_differences
from microchange.types import PairArrays, State

__all__ = ("DENSITY_THRESHOLD", "DensityScorer")

DENSITY_THRESHOLD = "value:4"
"""Default threshold: a false-alarm rate of 1e-4 under the fitted no-change density."""

_SIMULATED = 200_000
_LEVELS = 256


class DensityScorer:
    """Tail probability (-log10) of the feature difference under a no-change Gaussian mixture.

    Args:
        max_components: Largest mixture size tried (1..max_components, by BIC).
        max_samples: Difference vectors drawn from the global sample to fit the mixture.
        seed: Seed of the draw and of the mixture initialisation.
    """

    name = "density"

    def __init__(
        self, *, max_components: int = 4, max_samples: int = 20_000, seed: int = 0
    ) -> None:
        self.max_components = max_components
        self.max_samples = max_samples
        self.seed = seed
        self._weights: NDArray[np.float64] | None = None
        self._means: NDArray[np.float64] | None = None
        self._prec_chol: NDArray[np.float64] | None = None  # (K, F, F) full
        self._nll: NDArray[np.float64] | None = None  # NLL at the levels of _tail_levels()

    @property
    def halo(self) -> int:
        """Per-pixel score: no context."""
        return 0

    def fit(self, samples: Sequence[PairArrays]) -> None:
        """Fit the no-change mixture (1..max_components components, lowest BIC) and its NLL law.

        Raises:
            ValueError: If the sample holds too few valid pixels.
        """
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import GaussianMixture

        from microchange.scoring.thresholds import auto_threshold

        d = sample_differences(samples, self.max_samples, self.seed)
        if d.shape[0] >= 20:
            r = np.sqrt((d * d).sum(axis=1))
            cut = max(auto_threshold(r)[0], float(np.median(r)))
            d = d[r <= cut]
        n_distinct = len(np.unique(d[: min(len(d), 5000)], axis=0))
        best = None
        for k in range(1, min(self.max_components, n_distinct) + 1):
            if d.shape[0] < 10 * k:
                break
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                gm = GaussianMixture(k, covariance_type="full", reg_covar=1e-4, n_init=1,
                                     random_state=self.seed, max_iter=200).fit(d)
            bic = gm.bic(d)
            if best is None or bic < best[0]:
                best = (bic, gm)
        if best is None:
            raise NoOverlapError("too few valid pixels in the sample to fit a density model")
        gm = best[1]
        self._weights = np.asarray(gm.weights_, np.float64)
        self._means = np.asarray(gm.means_, np.float64)
        self._prec_chol = np.asarray(gm.precisions_cholesky_, np.float64)
        gm.random_state = self.seed
        simulated, _ = gm.sample(_SIMULATED)
        nll = np.sort(self._nll_of(np.asarray(simulated, np.float64)))
        # NLL at tail probabilities 1 .. 10 / _SIMULATED, log-spaced
        p = _tail_levels()
        idx = np.clip(np.round((1.0 - p) * (nll.size - 1)).astype(np.int64), 0, nll.size - 1)
        self._nll = np.maximum.accumulate(nll[idx])

    def _nll_of(self, x: NDArray[np.float64]) -> NDArray[np.float64]:
        """Negative log-likelihood of (N, F) vectors under the mixture."""
        if self._weights is None or self._means is None or self._prec_chol is None:
            raise NotFittedError("DensityScorer used before fit/load_state")
        f = x.shape[1]
        log_terms = []
        for k in range(self._weights.size):
            y = (x - self._means[k]) @ self._prec_chol[k]
            log_det = np.log(np.diag(self._prec_chol[k])).sum()
            log_terms.append(np.log(self._weights[k]) + log_det
                             - 0.5 * (np.einsum("ij,ij->i", y, y) + f * np.log(2 * np.pi)))
        stacked = np.stack(log_terms)
        m = stacked.max(axis=0)
        out: NDArray[np.float64] = -(m + np.log(np.exp(stacked - m).sum(axis=0)))
        return out

    def surprise(self, nll: NDArray[np.float64]) -> NDArray[np.float64]:
        """``-log10`` of the tail probability of NLL values under the no-change mixture."""
        if self._nll is None:
            raise NotFittedError("DensityScorer used before fit/load_state")
        log_p = np.log10(_tail_levels())
        out = -np.interp(nll, self._nll, log_p)  # 0 below the table, -log10 p_min at its end
        beyond = nll > self._nll[-1]
        out[beyond] = -log_p[-1] + (nll[beyond] - self._nll[-1]) / np.log(10.0)
        return out

    def score(self, block: PairArrays) -> NDArray[np.float32]:
        """(H, W) ``-log10 P(NLL >= NLL(x))`` of each pixel's difference vector."""
        f, h, w = block.before.shape
        x = (block.after - block.before).reshape(f, -1).T.astype(np.float64)
        out: NDArray[np.float32] = self.surprise(self._nll_of(x)).reshape(h, w).astype(
            np.float32)
        return out

    def state(self) -> State:
        """The mixture's weights, means and Cholesky factors of the precisions."""
        if self._weights is None or self._means is None or self._prec_chol is None:
            return {}
        state: State = {"weights": self._weights, "means": self._means,
                        "prec_chol": self._prec_chol}
        if self._nll is not None:
            state["nll_table"] = self._nll
        return state

    def load_state(self, state: State) -> None:
        """Restore a mixture saved by :meth:`state`."""
        self._weights = np.asarray(state["weights"], np.float64)
        self._means = np.asarray(state["means"], np.float64)
        self._prec_chol = np.asarray(state["prec_chol"], np.float64)
        if "nll_table" not in state:
            raise StateMismatchError("density state without its calibration table (saved by an older "
                             "version): fit it again")
        self._nll = np.asarray(state["nll_table"], np.float64)


def _tail_levels() -> NDArray[np.float64]:
    """Tail probabilities of the calibration table: 1 down to 10 / _SIMULATED, log-spaced."""
    return np.logspace(0.0, np.log10(10.0 / _SIMULATED), _LEVELS)
