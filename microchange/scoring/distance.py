"""Distance-based scoring: change-vector magnitude."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from microchange.features.base import FeatureSample, State

__all__ = ("CvaScorer",)


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

    def fit(self, samples: Sequence[FeatureSample]) -> None:
        """No parameters."""

    def score(self, block: FeatureSample) -> NDArray[np.float32]:
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
