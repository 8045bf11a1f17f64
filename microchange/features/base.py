"""The feature-extractor interface every method plugs into."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

__all__ = ("FeatureExtractor", "FeatureSample", "State")

State = dict[str, NDArray[np.generic]]


@dataclass
class FeatureSample:
    """Features of both dates for one block (core + halo).

    Attributes:
        before: (F, H, W) float32 features at t0.
        after: (F, H, W) float32 features at t1.
        valid: (H, W) bool, True where both dates hold data.
        halo: Context pixels on each side around the core.
    """

    before: NDArray[np.float32]
    after: NDArray[np.float32]
    valid: NDArray[np.bool_]
    halo: int


@runtime_checkable
class FeatureExtractor(Protocol):
    """Turns prepared band values of both dates into per-pixel features.

    ``fit`` sees a sample of blocks spread over the whole raster (never one tile alone) and
    ``extract`` then runs tile by tile with the fitted state. ``halo`` is the context each output
    pixel depends on (a CNN's receptive-field radius); ``state``/``load_state`` persist what was
    fitted as plain arrays so that a fitted extractor travels between processes as a file.
    """

    name: str

    @property
    def halo(self) -> int:
        """Context pixels needed on each side of a tile."""
        ...

    def fit(self, samples: Sequence[FeatureSample]) -> None:
        """Fit on prepared band values of sample blocks (``before``/``after`` are bands here)."""
        ...

    def extract(self, block: FeatureSample) -> FeatureSample:
        """Features of both dates of one block (same spatial shape as the input)."""
        ...

    def state(self) -> State:
        """Fitted parameters as named arrays."""
        ...

    def load_state(self, state: State) -> None:
        """Restore parameters saved by :meth:`state`."""
        ...
