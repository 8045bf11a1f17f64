"""Sub-pixel co-registration of AFTER onto BEFORE: global shift or a smooth local shift field.

Misregistration of a fraction of a pixel creates false change along every edge. The shift is
estimated by phase correlation (scikit-image's upsampled-DFT ``phase_cross_correlation`` on
Hann-windowed blocks) on blocks spread over the whole raster; the median over blocks is robust
to the few blocks that hold real change. Local distortions (terrain, a slightly rotated or scaled
acquisition) are followed by a :class:`ShiftField`: one shift per cell of a coarse grid, cells
without a usable estimate or far from the global shift take the global one, a 3x3 median over
cells drops isolated outliers (often real change), and the field is bilinear between cell centres.

The correction resamples AFTER window by window with a 4-tap Keys cubic kernel, which is local
(unlike spline prefiltering), and a field is evaluated at absolute raster coordinates, so the
corrected values do not depend on the tile size. :class:`GlobalShift` and :class:`ShiftField`
are the :class:`~microchange.io.pair.AfterWarp` that the pair reader applies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = (
    "GlobalShift",
    "ShiftEstimate",
    "ShiftField",
    "block_shift",
    "estimate_shift",
    "estimate_shift_field",
    "median_shift",
    "shift_image",
    "shift_image_field",
    "shift_margin",
)

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


def block_shift(
    before: NDArray[np.float32],
    after: NDArray[np.float32],
    valid: NDArray[np.bool_],
    *,
    upsample: int = 50,
    min_valid: float = 0.9,
) -> tuple[float, float] | None:
    """Shift to apply to AFTER to register one block onto BEFORE (None: block unusable).

    Args:
        before: (C, H, W) values at t0.
        after: (C, H, W) values at t1.
        valid: (H, W) validity.
        upsample: Sub-pixel precision of the phase correlation is 1 / ``upsample`` px.
        min_valid: A block with a smaller fraction of valid pixels (or under 32 px) is unusable.
    """
    h, w = valid.shape
    if min(h, w) < 32 or valid.mean() < min_valid:
        return None
    window = np.outer(np.hanning(h), np.hanning(w))
    ref = _block_signal(before, valid) * window
    mov = _block_signal(after, valid) * window
    if not ref.any() or not mov.any():
        return None
    from skimage.registration import phase_cross_correlation  # 0.3 s: only when estimating

    shift = phase_cross_correlation(  # type: ignore[no-untyped-call]
        ref, mov, upsample_factor=upsample, normalization=None)[0]
    return float(shift[0]), float(shift[1])


def median_shift(shifts: Sequence[tuple[float, float]]) -> ShiftEstimate:
    """Median of per-block shifts, with their spread (median absolute deviation)."""
    if not shifts:
        return ShiftEstimate(0.0, 0.0, 0, 0.0)
    arr = np.asarray(shifts)
    med = np.median(arr, axis=0)
    spread = float(np.median(np.abs(arr - med))) if len(arr) > 1 else 0.0
    return ShiftEstimate(float(med[0]), float(med[1]), len(arr), spread)


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
    shifts = [s for b, a, v in blocks
              if (s := block_shift(b, a, v, upsample=upsample, min_valid=min_valid)) is not None]
    return median_shift(shifts)


@dataclass(frozen=True)
class GlobalShift:
    """One sub-pixel shift of AFTER over the whole raster (output(r, c) = input(r - dy, c - dx)).

    Attributes:
        dy: Row shift in pixels.
        dx: Column shift in pixels.
    """

    dy: float
    dx: float

    @property
    def margin(self) -> int:
        """Pixels read around a window to resample it (:func:`shift_margin`)."""
        return shift_margin(self.dy, self.dx)

    def apply(self, after: NDArray[np.float32], valid: NDArray[np.bool_], r0: int, r1: int,
              c0: int, c1: int) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """Shift a window read with :attr:`margin` around it (see ``AfterWarp``)."""
        return shift_image(after, valid, self.dy, self.dx, self.margin)


@dataclass(frozen=True)
class ShiftField:
    """Shift of AFTER that varies smoothly over the raster (output(r, c) = input(r - dy, c - dx)).

    Values are given at cell centres and interpolated bilinearly between them (held constant
    beyond the outermost centres), at absolute raster coordinates.

    Attributes:
        rows: Row coordinates of the cell centres, increasing.
        cols: Column coordinates of the cell centres, increasing.
        dy: Row shift per cell, ``len(rows)`` lists of ``len(cols)`` values.
        dx: Column shift per cell, same shape.
    """

    rows: tuple[float, ...]
    cols: tuple[float, ...]
    dy: tuple[tuple[float, ...], ...]
    dx: tuple[tuple[float, ...], ...]

    @classmethod
    def from_arrays(cls, rows: Sequence[float], cols: Sequence[float], dy: NDArray[np.floating],
                    dx: NDArray[np.floating]) -> ShiftField:
        """Build a field from (rows, cols) cell-centre coordinates and (ny, nx) shift grids."""
        return cls(tuple(float(r) for r in rows), tuple(float(c) for c in cols),
                   tuple(tuple(float(v) for v in row) for row in np.asarray(dy)),
                   tuple(tuple(float(v) for v in row) for row in np.asarray(dx)))

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> ShiftField:
        """Inverse of :meth:`as_dict`."""
        return cls.from_arrays(doc["rows"], doc["cols"], np.asarray(doc["dy"]),
                               np.asarray(doc["dx"]))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {"rows": list(self.rows), "cols": list(self.cols),
                "dy": [list(r) for r in self.dy], "dx": [list(r) for r in self.dx]}

    def max_abs(self) -> float:
        """Largest row or column shift anywhere in the field."""
        return float(max(np.abs(self.dy).max(), np.abs(self.dx).max()))

    def max_magnitude(self) -> float:
        """Largest shift length over the cells."""
        return float(np.hypot(self.dy, self.dx).max())

    @property
    def margin(self) -> int:
        """Pixels read around a window to resample it (:func:`shift_margin`)."""
        return shift_margin(self.max_abs(), 0.0)

    def apply(self, after: NDArray[np.float32], valid: NDArray[np.bool_], r0: int, r1: int,
              c0: int, c1: int) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """Shift a window read with :attr:`margin` around it (see ``AfterWarp``)."""
        dy, dx = self.sample(r0, r1, c0, c1)
        return shift_image_field(after, valid, dy, dx, self.margin)

    def sample(self, r0: int, r1: int, c0: int, c1: int
               ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(dy, dx) at every pixel of rows r0:r1 and columns c0:c1, each (r1 - r0, c1 - c0)."""
        wr = _interp_matrix(np.arange(r0, r1, dtype=np.float64), self.rows)
        wc = _interp_matrix(np.arange(c0, c1, dtype=np.float64), self.cols)
        dy = wr @ np.asarray(self.dy) @ wc.T
        dx = wr @ np.asarray(self.dx) @ wc.T
        return dy, dx


def _interp_matrix(x: NDArray[np.float64], centres: Sequence[float]) -> NDArray[np.float64]:
    """(len(x), len(centres)) weights of linear interpolation, constant beyond the ends."""
    n = len(centres)
    out = np.zeros((x.size, n))
    if n == 1:
        out[:, 0] = 1.0
        return out
    pos = np.interp(x, np.asarray(centres, np.float64), np.arange(n, dtype=np.float64))
    i0 = np.minimum(np.floor(pos).astype(np.intp), n - 2)
    t = pos - i0
    rows = np.arange(x.size)
    out[rows, i0] = 1.0 - t
    out[rows, i0 + 1] = t
    return out


def estimate_shift_field(
    rows: Sequence[float],
    cols: Sequence[float],
    shifts: Sequence[Sequence[tuple[float, float] | None]],
    fallback: tuple[float, float],
    *,
    max_deviation: float = 1.0,
) -> ShiftField:
    """Smooth, robust shift field from per-cell estimates on a coarse grid.

    Args:
        rows: Row coordinates of the cell centres.
        cols: Column coordinates of the cell centres.
        shifts: ``len(rows)`` lists of ``len(cols)`` per-cell shifts (None: no usable estimate).
        fallback: Shift used for cells without an estimate or with an outlying one (the global
            shift).
        max_deviation: Cells further than this (pixels) from ``fallback`` are outliers.

    Returns:
        The field after a 3x3 median over cells, which removes isolated outliers (a cell whose
        estimate follows a real change rather than the misregistration).
    """
    from scipy import ndimage

    ny, nx = len(rows), len(cols)
    grid = np.empty((2, ny, nx))
    grid[0], grid[1] = fallback
    for i, line in enumerate(shifts):
        for j, s in enumerate(line):
            if s is not None and math.hypot(s[0] - fallback[0], s[1] - fallback[1]) <= max_deviation:
                grid[:, i, j] = s
    smooth = ndimage.median_filter(grid, size=(1, 3, 3), mode="nearest")
    return ShiftField.from_arrays(rows, cols, smooth[0], smooth[1])


def shift_margin(dy: float, dx: float) -> int:
    """Extra pixels to read around a window to shift it by (dy, dx) with the 4-tap kernel."""
    return math.floor(max(abs(dy), abs(dx))) + 2


def _keys_array(x: NDArray[np.float64]) -> NDArray[np.float64]:
    x = np.abs(x)
    a = _KEYS_A
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    out: NDArray[np.float64] = np.where(x <= 1, near, np.where(x < 2, far, 0.0))
    return out


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


def shift_image_field(
    image: NDArray[np.float32],
    valid: NDArray[np.bool_],
    dy: NDArray[np.float64],
    dx: NDArray[np.float64],
    margin: int,
) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
    """Shift a block by a per-pixel (dy, dx) and drop ``margin`` pixels on every side.

    The same 4x4 Keys cubic kernel as :func:`shift_image`, with the taps and weights of each
    output pixel computed from its own shift.

    Args:
        image: (C, H + 2 margin, W + 2 margin) float32 values.
        valid: (H + 2 margin, W + 2 margin) validity.
        dy: (H, W) row shift of each output pixel (output(r) = input(r - dy)).
        dx: (H, W) column shift.
        margin: Context pixels around the output, >= :func:`shift_margin` of the largest shift.

    Returns:
        (C, H, W) shifted values and (H, W) validity: valid only where the 16 input pixels are.
    """
    c, hp, wp = image.shape
    h, w = dy.shape
    pr = np.arange(h, dtype=np.float64)[:, None] + margin - dy
    pc = np.arange(w, dtype=np.float64)[None, :] + margin - dx
    nr = np.floor(pr)
    nc = np.floor(pc)
    tr = pr - nr
    tc = pc - nc
    wr = [_keys_array(tr + 1), _keys_array(tr), _keys_array(1 - tr), _keys_array(2 - tr)]
    wc = [_keys_array(tc + 1), _keys_array(tc), _keys_array(1 - tc), _keys_array(2 - tc)]
    ir = nr.astype(np.intp)
    ic = nc.astype(np.intp)
    flat = image.reshape(c, hp * wp)
    vflat = valid.reshape(hp * wp)
    out = np.zeros((c, h, w), np.float32)
    vout = np.ones((h, w), bool)
    for a in range(4):
        rows = np.clip(ir + a - 1, 0, hp - 1) * wp
        for b in range(4):
            idx = rows + np.clip(ic + b - 1, 0, wp - 1)
            out += (wr[a] * wc[b]).astype(np.float32) * flat[:, idx]
            vout &= vflat[idx]
    return out, vout
