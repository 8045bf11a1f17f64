"""Raw band values standardised per date: the classical feature space of CVA."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from microchange.errors import NoOverlapError, NotFittedError
from microchange.types import PairArrays, State

__all__ = ("BandFeatures", "masked_band_stats")


def masked_band_stats(
    arrays: Sequence[NDArray[np.float32]], valids: Sequence[NDArray[np.bool_]]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-band mean and standard deviation over the valid pixels of several blocks.

    Args:
        arrays: (C, H, W) float32 blocks.
        valids: (H, W) bool masks, one per block.

    Returns:
        (mean, std), each (C,) float64; std is floored at 1e-6 times the mean magnitude (>0).
    """
    n = 0
    s = None
    ss = None
    for a, v in zip(arrays, valids, strict=True):
        x = a[:, v].astype(np.float64)
        n += x.shape[1]
        s = x.sum(axis=1) if s is None else s + x.sum(axis=1)
        ss = (x * x).sum(axis=1) if ss is None else ss + (x * x).sum(axis=1)
    if n == 0 or s is None or ss is None:
        raise NoOverlapError("no valid pixel in the sample: the inputs hold only nodata")
    mean = s / n
    var = np.maximum(ss / n - mean * mean, 0.0)
    std = np.sqrt(var)
    floor = np.maximum(1e-6 * np.abs(mean), 1e-12)
    return mean, np.maximum(std, floor)


class BandFeatures:
    """Per-band z-scores, each date with its own statistics from the global sample.

    Standardising each date separately removes a global per-band gain and offset between the
    acquisitions (illumination, calibration) before the dates are compared; the statistics come
    from a sample of the whole raster, so every tile uses the same scaling.
    """

    name = "bands"

    def __init__(self) -> None:
        self._mean: NDArray[np.float64] | None = None  # (2, C)
        self._std: NDArray[np.float64] | None = None

    @property
    def halo(self) -> int:
        """Per-pixel features need no context."""
        return 0

    def fit(self, samples: Sequence[PairArrays]) -> None:
        """Fit per-date, per-band mean and std on the valid pixels of the sample."""
        valids = [s.valid for s in samples]
        mb, sb = masked_band_stats([s.before for s in samples], valids)
        ma, sa = masked_band_stats([s.after for s in samples], valids)
        self._mean = np.stack([mb, ma])
        self._std = np.stack([sb, sa])

    def extract(self, block: PairArrays) -> PairArrays:
        """Standardise both dates of a block; invalid pixels hold 0."""
        if self._mean is None or self._std is None:
            raise NotFittedError("BandFeatures.extract called before fit/load_state")
        out = []
        for d, image in enumerate((block.before, block.after)):
            m = self._mean[d].astype(np.float32)[:, None, None]
            s = self._std[d].astype(np.float32)[:, None, None]
            z = (image - m) / s
            z[:, ~block.valid] = 0.0
            out.append(z.astype(np.float32, copy=False))
        return PairArrays(out[0], out[1], block.valid, block.halo)

    def state(self) -> State:
        """Fitted per-date statistics."""
        if self._mean is None or self._std is None:
            return {}
        return {"mean": self._mean, "std": self._std}

    def load_state(self, state: State) -> None:
        """Restore statistics saved by :meth:`state`."""
        self._mean = np.asarray(state["mean"], dtype=np.float64)
        self._std = np.asarray(state["std"], dtype=np.float64)
