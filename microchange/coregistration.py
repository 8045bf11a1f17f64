"""Sub-pixel co-registration of AFTER onto BEFORE: estimate a global shift, correct it per window.

Misregistration of a fraction of a pixel creates false change along every edge. The shift is
estimated by phase correlation (:func:`skimage.registration.phase_cross_correlation`, upsampled
DFT, Hann window) on blocks spread over the whole raster; the median over blocks is robust to the
few blocks that hold real change. The correction resamples AFTER window by window with a 4-tap
Keys cubic kernel, which is local (unlike spline prefiltering), so the corrected values do not
depend on the tile size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ("ShiftEstimate", "estimate_shift", "shift_image", "shift_margin")

_KEYS_A = -0.5


@dataclass(frozen=True)
class ShiftEstimate:
    """Global shift to apply to AFTER (rows, columns), as scipy.ndimage.shift would.

    Attributes:
        dy: Row shift in pixels.
        dx: Column shift in pixels.
        n_blocks: Blocks the median was taken over.
        spread: Median absolute deviation of the block estimates (pixels).
    """

    dy: float
    dx: float
    n_blocks: int
    spread: float

    @property
    def magnitude(self) -> float:
        """Length of the shift in pixels."""
        return math.hypot(self.dy, self.dx)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields plus the magnitude."""
        return {**asdict(self), "magnitude": self.magnitude}


def _block_signal(image: NDArray[np.float32], valid: NDArray[np.bool_]) -> NDArray[np.float64]:
    x = image.astype(np.float64).mean(axis=0)
    if valid.any():
        x = x - x[valid].mean()
        s = x[valid].std()
        if s > 0:
            x /= s
    x[~valid] = 0.0
    out: NDArray[np.float64] = x
    return out


def estimate_shift(
    blocks: Sequence[tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]]],
    *,
    upsample: int = 50,
    min_valid: float = 0.9,
) -> ShiftEstimate:
    """Estimate the global shift of AFTER relative to BEFORE.

    Args:
        blocks: (before (C, H, W), after (C, H, W), valid (H, W)) blocks from over the raster.
        upsample: Sub-pixel precision of the phase correlation is 1 / ``upsample`` px.
        min_valid: Blocks with a smaller fraction of valid pixels are skipped.

    Returns:
        The median shift over the usable blocks (0, 0 when none is usable).
    """
    from skimage.registration import phase_cross_correlation

    shifts = []
    for before, after, valid in blocks:
        h, w = valid.shape
        if min(h, w) < 32 or valid.mean() < min_valid:
            continue
        window = np.outer(np.hanning(h), np.hanning(w))
        ref = _block_signal(before, valid) * window
        mov = _block_signal(after, valid) * window
        if not ref.any() or not mov.any():
            continue
        shift, _, _ = phase_cross_correlation(  # type: ignore[no-untyped-call]
            ref, mov, upsample_factor=upsample, normalization=None
        )
        shifts.append(shift)
    if not shifts:
        return ShiftEstimate(0.0, 0.0, 0, 0.0)
    arr = np.asarray(shifts)
    med = np.median(arr, axis=0)
    spread = float(np.median(np.abs(arr - med))) if len(arr) > 1 else 0.0
    return ShiftEstimate(float(med[0]), float(med[1]), len(arr), spread)


def shift_margin(dy: float, dx: float) -> int:
    """Extra pixels to read around a window to shift it by (dy, dx) with the 4-tap kernel."""
    return math.floor(max(abs(dy), abs(dx))) + 2


def _keys(x: float) -> float:
    x = abs(x)
    a = _KEYS_A
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x < 2:
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return 0.0


def _taps(s: float) -> list[tuple[int, float]]:
    """(offset, weight) pairs so that out[i] = sum w * in[i + offset] equals in(i - s)."""
    n = math.floor(s)
    f = s - n
    if f == 0:
        return [(-n, 1.0)]
    t = 1.0 - f  # position i - s lies at floor + t, floor = i - n - 1
    base = -n - 1
    return [(base - 1, _keys(t + 1)), (base, _keys(t)), (base + 1, _keys(1 - t)),
            (base + 2, _keys(2 - t))]


def shift_image(
    image: NDArray[np.float32],
    valid: NDArray[np.bool_],
    dy: float,
    dx: float,
    margin: int,
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Shift a block by (dy, dx) pixels and drop ``margin`` pixels on every side.

    Args:
        image: (C, H + 2 margin, W + 2 margin) float32 values.
        valid: (H + 2 margin, W + 2 margin) validity.
        dy: Row shift (output(r) = input(r - dy)).
        dx: Column shift.
        margin: Context pixels around the output, >= :func:`shift_margin`.

    Returns:
        (C, H, W) shifted values and (H, W) validity: valid only where every contributing input
        pixel is valid.
    """
    h = image.shape[-2] - 2 * margin
    w = image.shape[-1] - 2 * margin
    rows = _taps(dy)
    cols = _taps(dx)
    tmp = np.zeros((image.shape[0], h, image.shape[-1]), np.float32)
    vtmp = np.ones((h, image.shape[-1]), bool)
    for off, wgt in rows:
        tmp += np.float32(wgt) * image[:, margin + off:margin + off + h, :]
        vtmp &= valid[margin + off:margin + off + h, :]
    out = np.zeros((image.shape[0], h, w), np.float32)
    vout = np.ones((h, w), bool)
    for off, wgt in cols:
        out += np.float32(wgt) * tmp[:, :, margin + off:margin + off + w]
        vout &= vtmp[:, margin + off:margin + off + w]
    return out, vout
