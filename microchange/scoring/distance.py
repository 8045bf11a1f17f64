"""Distance-based scoring: change-vector magnitude."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from microchange.errors import NoOverlapError, NotFittedError
from microchange.types import PairArrays, State

__all__ = ("CvaScorer", "MahalanobisScorer", "sample_differences")


class CvaScorer:
    """Change vector analysis: the Euclidean norm of the feature difference, per pixel.

    With per-date standardised bands this is classical CVA magnitude; with deep features it is
    deep CVA. Nothing to fit.
    """

    name = "cva"

    @property
    def halo(self) -> int:
        """Per-pixel score: no context."""
        return 0

    def fit(self, samples: Sequence[PairArrays]) -> None:
        """No parameters."""

    def score(self, block: PairArrays) -> NDArray[np.float32]:
        """sqrt(sum_f (after_f - before_f)^2) for each pixel."""
        diff = block.after - block.before
        out: NDArray[np.float32] = np.sqrt(np.einsum("fhw,fhw->hw", diff, diff)).astype(
            np.float32, copy=False
        )
        return out

    def state(self) -> State:
        """No parameters."""
        return {}

    def load_state(self, state: State) -> None:
        """No parameters."""


def sample_differences(
    samples: Sequence[PairArrays], max_samples: int, seed: int
) -> NDArray[np.float64]:
    """Up to ``max_samples`` difference vectors (after - before) of valid core pixels.

    Args:
        samples: Feature blocks of the global sample.
        max_samples: Vectors drawn at most (uniformly, without replacement).
        seed: Seed of the draw.

    Returns:
        (N, F) float64 difference vectors.
    """
    diffs = []
    for s in samples:
        core = s.valid.copy()
        if s.halo:
            core[: s.halo] = core[-s.halo:] = False
            core[:, : s.halo] = core[:, -s.halo:] = False
        diffs.append((s.after[:, core] - s.before[:, core]).T)
    d = np.concatenate(diffs).astype(np.float64) if diffs else np.zeros((0, 0))
    if d.shape[0] > max_samples:
        rng = np.random.default_rng(seed)
        d = d[np.sort(rng.choice(d.shape[0], max_samples, replace=False))]
    return d


class MahalanobisScorer:
    """Mahalanobis norm of the feature difference under a robust no-change covariance.

    The location and covariance of the difference vectors are fitted on the global sample by
    iterative trimming: fit, drop the 10 % most distant vectors (mostly real change), refit, three
    times. Correlated nuisance (e.g. a band pair that drifts together) is then discounted, unlike
    plain CVA.

    Args:
        max_samples: Difference vectors drawn from the global sample.
        trim: Fraction of the most distant vectors dropped at each refit.
        seed: Seed of the draw.
    """

    name = "mahalanobis"

    def __init__(self, *, max_samples: int = 200_000, trim: float = 0.1, seed: int = 0) -> None:
        self.max_samples = max_samples
        self.trim = trim
        self.seed = seed
        self._loc: NDArray[np.float64] | None = None
        self._whiten: NDArray[np.float64] | None = None

    @property
    def halo(self) -> int:
        """Per-pixel score: no context."""
        return 0

    def fit(self, samples: Sequence[PairArrays]) -> None:
        """Robust location and covariance of the sample's difference vectors."""
        d = sample_differences(samples, self.max_samples, self.seed)
        if d.shape[0] < d.shape[1] + 2:
            raise NoOverlapError("too few valid pixels in the sample to fit a covariance")
        keep = d
        for _ in range(3):
            loc = keep.mean(axis=0)
            cov = np.cov(keep, rowvar=False).reshape(d.shape[1], d.shape[1])
            cov += np.eye(cov.shape[0]) * 1e-6 * max(float(np.trace(cov)), 1e-12)
            whiten = np.linalg.cholesky(np.linalg.inv(cov))
            dist = np.einsum("ij,ij->i", (d - loc) @ whiten, (d - loc) @ whiten)
            keep = d[dist <= np.quantile(dist, 1 - self.trim)]
        self._loc, self._whiten = loc, whiten

    def score(self, block: PairArrays) -> NDArray[np.float32]:
        """(H, W) Mahalanobis distance of each difference vector from the no-change location."""
        if self._loc is None or self._whiten is None:
            raise NotFittedError("MahalanobisScorer.score called before fit/load_state")
        f, h, w = block.before.shape
        x = (block.after - block.before).reshape(f, -1).T.astype(np.float64) - self._loc
        y = x @ self._whiten
        out: NDArray[np.float32] = np.sqrt(np.einsum("ij,ij->i", y, y)).reshape(h, w).astype(
            np.float32)
        return out

    def state(self) -> State:
        """Robust location and whitening matrix."""
        if self._loc is None or self._whiten is None:
            return {}
        return {"loc": self._loc, "whiten": self._whiten}

    def load_state(self, state: State) -> None:
        """Restore parameters saved by :meth:`state`."""
        self._loc = np.asarray(state["loc"], np.float64)
        self._whiten = np.asarray(state["whiten"], np.float64)
