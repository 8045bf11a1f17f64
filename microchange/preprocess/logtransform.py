"""The log transform of SAR amplitudes (and any positive values), fitted on the global sample.

The log transform is ``log(x + c)`` per band. ``c`` keeps zeros finite without flattening the
data's own range: ``c = 1`` (``log1p``) for data in digital numbers (band median >= 1, e.g. 8- or
16-bit SAR amplitude), else 1 % of the band median, fitted on the global sample
(:class:`LogTransform`): calibrated backscatter in linear units (sigma0 around 0.01-0.5) would
otherwise see ``log1p(x) ~ x`` and keep its multiplicative speckle.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from microchange.config import PreprocessConfig
from microchange.parallel import SwitchedStatistic

__all__ = ("LogTransform", "log_transform")

_LOG_FRACTION = 0.01


class LogTransform(SwitchedStatistic):
    """Per-band offset ``c`` of the log transform ``log(x + c)``, fitted on the global sample.

    Args:
        enabled: Whether the log transform is on (off: nothing is fitted).
    """

    def __init__(self, enabled: bool) -> None:
        super().__init__(enabled)
        self.offset: NDArray[np.float32] | None = None

    @staticmethod
    def partial(before: NDArray[np.float32], after: NDArray[np.float32],
                valid: NDArray[np.bool_]) -> NDArray[np.float32]:
        """One block's share of the fit: (C, 2N) valid values of both dates."""
        return np.concatenate([before[:, valid], after[:, valid]], axis=1)

    def fit_parts(self, parts: Sequence[NDArray[np.float32]]) -> None:
        """Fit ``c`` from the :meth:`partial` of every sample block."""
        self.offset = None
        values = self._pooled(parts)
        if values is None:
            return
        median = np.median(np.maximum(values, 0.0), axis=1)
        self.offset = np.where(median >= 1.0, 1.0,
                               np.maximum(_LOG_FRACTION * median, 1e-12)).astype(np.float32)

    def state(self) -> dict[str, NDArray[np.generic]]:
        """The fitted offsets as named arrays."""
        return {} if self.offset is None else {"log_offset": self.offset}

    def load_state(self, state: dict[str, NDArray[np.generic]]) -> None:
        """Restore what :meth:`state` saved (an empty state: ``log1p``)."""
        self.offset = (np.asarray(state["log_offset"], np.float32) if "log_offset" in state
                       else None)


def log_transform(
    image: NDArray[np.float32], valid: NDArray[np.bool_], cfg: PreprocessConfig, *,
    log_offset: NDArray[np.float32] | None = None,
) -> NDArray[np.float32]:
    """``log(x + c)`` per band when the config asks for it, else ``image`` itself."""
    if not cfg.log_transform:
        return image
    x = np.maximum(image, 0.0, dtype=np.float32)
    if log_offset is None or bool((log_offset == 1.0).all()):
        return np.log1p(x).astype(np.float32, copy=False)
    out = np.log(x + log_offset.astype(np.float32)[:, None, None]).astype(np.float32)
    out[:, ~valid] = 0.0
    return out
