"""The scorer interface: fit once on a global sample, then score any tile."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from microchange.types import PairArrays, State

__all__ = ("Scorer",)


@runtime_checkable
class Scorer(Protocol):
    """Per-pixel change score from the features of both dates (higher = more change).

    ``fit`` sees feature blocks sampled over the *whole* raster; fitting on one tile alone would
    force change into quiet tiles and make thresholds jump at tile borders. ``halo`` is the
    neighbourhood a score depends on.
    """

    name: str

    @property
    def halo(self) -> int:
        """Context pixels needed on each side of a tile."""
        ...

    def fit(self, samples: Sequence[PairArrays]) -> None:
        """Fit on feature blocks from the global sample."""
        ...

    def score(self, block: PairArrays) -> NDArray[np.float32]:
        """(H, W) float32 scores of a block; values at invalid pixels are undefined."""
        ...

    def state(self) -> State:
        """Fitted parameters as named arrays."""
        ...

    def load_state(self, state: State) -> None:
        """Restore parameters saved by :meth:`state`."""
        ...
