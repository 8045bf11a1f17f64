"""The feature-extractor interface every method plugs into."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from microchange.types import PairArrays, State

__all__ = ("FeatureExtractor",)


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

    def fit(self, samples: Sequence[PairArrays]) -> None:
        """Fit on prepared band values of sample blocks (``before``/``after`` are bands here)."""
        ...

    def extract(self, block: PairArrays) -> PairArrays:
        """Features of both dates of one block (same spatial shape as the input)."""
        ...

    def state(self) -> State:
        """Fitted parameters as named arrays."""
        ...

    def load_state(self, state: State) -> None:
        """Restore parameters saved by :meth:`state`."""
        ...
