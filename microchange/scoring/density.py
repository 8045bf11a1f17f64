"""Density-based scoring: how unlikely a difference vector is under the no-change density.

Most pixels of a scene are unchanged, so a density model fitted to the difference vectors of
the global sample describes "no change" (including its nuisance: noise, residual radiometry,
misregistration); real change falls in its low-density tail. The model is a Gaussian mixture whose
number of components is chosen by BIC; the score is the negative log-likelihood.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from microchange.features.base import FeatureSample, State
from microchange.scoring.distance import sample_differences

__all__ = ("DensityScorer",)


class DensityScorer:
    """Negative log-likelihood of the feature difference under a BIC-selected Gaussian mixture.

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

    @property
    def halo(self) -> int:
        """Per-pixel score: no context."""
        return 0

    def fit(self, samples: Sequence[FeatureSample]) -> None:
        """Fit mixtures of 1..max_components components; keep the lowest BIC."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import GaussianMixture

        d = sample_differences(samples, self.max_samples, self.seed)
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
            raise ValueError("too few valid pixels in the sample to fit a density model")
        gm = best[1]
        self._weights = np.asarray(gm.weights_, np.float64)
        self._means = np.asarray(gm.means_, np.float64)
        self._prec_chol = np.asarray(gm.precisions_cholesky_, np.float64)

    def score(self, block: FeatureSample) -> NDArray[np.float32]:
        """(H, W) negative log-likelihood of each pixel's difference vector."""
        if self._weights is None or self._means is None or self._prec_chol is None:
            raise RuntimeError("DensityScorer.score called before fit/load_state")
        f, h, w = block.before.shape
        x = (block.after - block.before).reshape(f, -1).T.astype(np.float64)
        log_terms = []
        for k in range(self._weights.size):
            y = (x - self._means[k]) @ self._prec_chol[k]
            log_det = np.log(np.diag(self._prec_chol[k])).sum()
            log_terms.append(np.log(self._weights[k]) + log_det
                             - 0.5 * (np.einsum("ij,ij->i", y, y) + f * np.log(2 * np.pi)))
        stacked = np.stack(log_terms)
        m = stacked.max(axis=0)
        loglik = m + np.log(np.exp(stacked - m).sum(axis=0))
        out: NDArray[np.float32] = (-loglik).reshape(h, w).astype(np.float32)
        return out

    def state(self) -> State:
        """The mixture's weights, means and Cholesky factors of the precisions."""
        if self._weights is None or self._means is None or self._prec_chol is None:
            return {}
        return {"weights": self._weights, "means": self._means, "prec_chol": self._prec_chol}

    def load_state(self, state: State) -> None:
        """Restore a mixture saved by :meth:`state`."""
        self._weights = np.asarray(state["weights"], np.float64)
        self._means = np.asarray(state["means"], np.float64)
        self._prec_chol = np.asarray(state["prec_chol"], np.float64)
