"""The co-registration policy of a pair: estimate AFTER's shift, decide whether to apply it.

With ``coregister_cell`` > 0 and a raster of at least 2x2 cells, a shift is estimated in every
cell of a coarse grid (:func:`~microchange.preprocess.coregistration.estimate_shift_field`); the
global shift is their median. The field is applied when it departs from the global shift by
more than ``coregister_min_shift`` somewhere, stays within 3 px, and the cells agree with it
(median distance of a cell's estimate from the field at most 0.3 px). Otherwise one global shift
(from the cells, or from up to 16 blocks of a smaller raster) is applied when it is trustworthy:
at least 3 usable blocks agreeing within 0.3 px on a shift of at most 3 px (residual
misregistration, not a different scene). The reason for not correcting is recorded.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict

from microchange.config import PreprocessConfig
from microchange.io.pair import AfterWarp, PairReader
from microchange.parallel import available_cpus, ordered_map
from microchange.preprocess.chain import preprocess_image
from microchange.preprocess.coregistration import (
    GlobalShift,
    ShiftEstimate,
    ShiftField,
    block_shift,
    estimate_shift,
    estimate_shift_field,
    median_shift,
)
from microchange.tiling import iter_blocks

__all__ = ("CoregistrationRecord", "estimate_coregistration")

log = logging.getLogger("microchange")

_COREG_BLOCKS = 16
_COREG_MIN_BLOCKS = 3
_COREG_MAX_SPREAD = 0.3
_COREG_MAX_SHIFT = 3.0
_COREG_CELL_BLOCK = 128
_COREG_MAX_CELLS = 4096


def _prepared_block(pair: PairReader, pre: PreprocessConfig, r: int, c: int, h: int, w: int
                    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]]:
    arr = pair.read(r, r + h, c, c + w)
    if pre.denoise == "bilateral":  # its noise level is fitted later: smooth alike for the shift
        pre = pre.model_copy(update={"denoise": "gaussian"})
    return (preprocess_image(arr.before, arr.valid, pre),
            preprocess_image(arr.after, arr.valid, pre), arr.valid)


def _cell_shifts(pair: PairReader, pre: PreprocessConfig, cell: int
                 ) -> tuple[list[float], list[float], list[list[tuple[float, float] | None]]]:
    """Phase-correlation shift of a central block of every cell of a coarse grid.

    Each cell's block (:data:`_COREG_CELL_BLOCK` px) sits at the cell centre, moved (by at most
    half its size) into the input's internal block that holds the centre, so that reading it
    decodes one block per date rather than the four it would straddle. The returned row and
    column positions are those of the blocks' centres. Rows of cells are read and correlated on
    threads, each with its own reader; no block is read twice, so its block cache holds one.
    """
    g = pair.grid
    grain = pair.block_shape or (0, 0)

    def place(start: int, extent: int, inner: int) -> tuple[int, int]:
        """(first pixel, size) of the block of the cell starting at ``start`` along one axis."""
        size = min(_COREG_CELL_BLOCK, cell, extent - start)
        centre = start + (min(cell, extent - start) - 1) / 2
        first = min(max(0, round(centre - size / 2)), extent - size)
        if inner >= size:
            lo = int(centre) // inner * inner
            hi = min(lo + inner, extent)
            if hi - lo >= size:
                first = min(max(first, lo), hi - size)
        return first, size

    row_blocks = [place(r, g.height, grain[0]) for r in range(0, g.height, cell)]
    col_blocks = [place(c, g.width, grain[1]) for c in range(0, g.width, cell)]
    rows = [r0 + (h - 1) / 2 for r0, h in row_blocks]
    cols = [c0 + (w - 1) / 2 for c0, w in col_blocks]

    def line(k: int) -> list[tuple[float, float] | None]:
        r0, h = row_blocks[k]
        with pair.reopen(block_cache_mb=1) as own:
            return [block_shift(*_prepared_block(own, pre, r0, c0, h, w))
                    for c0, w in col_blocks]

    return rows, cols, ordered_map(line, range(len(row_blocks)), available_cpus())


class CoregistrationRecord(BaseModel):
    """The co-registration decided for a pair, as kept in the plan and run.json.

    Attributes:
        enabled: Whether co-registration was asked for (``coregister``).
        estimate: The global estimate (dy, dx, n_blocks, spread, magnitude).
        cells: The local grid (size, grid, usable cells, misfit) when one was estimated.
        applied: Whether a correction is applied.
        mode: 'global' (one shift), 'local' (a field) or None.
        reason: Why no correction is applied.
        applied_shift: The global (rows, columns) shift applied; zeros otherwise.
        field: The shift field applied (:meth:`ShiftField.as_dict`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool
    estimate: dict[str, Any] | None = None
    cells: dict[str, Any] | None = None
    applied: bool = False
    mode: Literal["global", "local"] | None = None
    reason: str | None = None
    applied_shift: tuple[float, float] = (0.0, 0.0)
    field: dict[str, Any] | None = None

    def warp(self) -> AfterWarp | None:
        """The resampling of AFTER this record applies, if any."""
        if self.field:
            return ShiftField.from_dict(self.field)
        dy, dx = self.applied_shift
        if (dy, dx) == (0.0, 0.0):
            return None
        return GlobalShift(float(dy), float(dx))


def _local_field(pair: PairReader, pre: PreprocessConfig, cell: int
                 ) -> tuple[ShiftEstimate, ShiftField | None, dict[str, Any]]:
    """Global estimate, the field when it is applicable, and the record of the cells."""
    rows, cols, shifts = _cell_shifts(pair, pre, cell)
    usable = [s for line in shifts for s in line if s is not None]
    est = median_shift(usable)
    cells_doc: dict[str, Any] = {"size": cell, "grid": [len(rows), len(cols)],
                                 "usable": len(usable)}
    if est.n_blocks < _COREG_MIN_BLOCKS:
        return est, None, cells_doc
    field = estimate_shift_field(rows, cols, shifts, (est.dy, est.dx))
    dev = float(np.hypot(np.asarray(field.dy) - est.dy, np.asarray(field.dx) - est.dx).max())
    # the cells must agree with the smooth field, as blocks must agree on a global shift
    misfit = float(np.median([
        math.hypot(sh[0] - field.dy[i][j], sh[1] - field.dx[i][j])
        for i, line in enumerate(shifts) for j, sh in enumerate(line) if sh is not None]))
    cells_doc["misfit"] = misfit
    applicable = (dev >= max(pre.coregister_min_shift, 1e-9)
                  and field.max_magnitude() <= _COREG_MAX_SHIFT and misfit <= _COREG_MAX_SPREAD)
    return est, field if applicable else None, cells_doc


def _global_estimate(pair: PairReader, pre: PreprocessConfig, seed: int) -> ShiftEstimate:
    """Median shift over up to 16 random blocks of a raster too small for cells."""
    g = pair.grid
    block = 256 if min(g.height, g.width) >= 1024 else 128
    grid_blocks = list(iter_blocks(g.height, g.width, block))
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(grid_blocks), size=min(_COREG_BLOCKS, len(grid_blocks)),
                                replace=False))
    return estimate_shift([_prepared_block(pair, pre, *grid_blocks[j]) for j in chosen.tolist()])


def _refusal(est: ShiftEstimate, min_shift: float) -> str:
    """Why a global estimate is not applied ('' when it is)."""
    if est.n_blocks < _COREG_MIN_BLOCKS:
        return f"only {est.n_blocks} usable block(s) (< {_COREG_MIN_BLOCKS})"
    if est.spread > _COREG_MAX_SPREAD:
        return f"blocks disagree (spread {est.spread:.2f} px > {_COREG_MAX_SPREAD})"
    if est.magnitude > _COREG_MAX_SHIFT:
        return f"shift {est.magnitude:.2f} px > {_COREG_MAX_SHIFT} px is not a residual"
    if est.magnitude < min_shift:
        return f"shift {est.magnitude:.3f} px below coregister_min_shift"
    return ""


def estimate_coregistration(
    pair: PairReader, pre: PreprocessConfig, *, seed: int
) -> CoregistrationRecord:
    """Sub-pixel shift of AFTER (see the module docstring) and why it is or is not applied.

    Args:
        pair: Reader of the pair, without a warp.
        pre: Preprocessing options (``coregister*``; blocks are smoothed as the run will be).
        seed: Seed of the block choice on rasters too small for cells.

    Returns:
        The record kept in the plan and run.json.
    """
    if not pre.coregister:
        return CoregistrationRecord(enabled=False)
    g, cell = pair.grid, pre.coregister_cell
    local: ShiftField | None = None
    cells_doc: dict[str, Any] | None = None
    if (cell > 0 and g.height >= 2 * cell and g.width >= 2 * cell
            and math.ceil(g.height / cell) * math.ceil(g.width / cell) <= _COREG_MAX_CELLS):
        est, local, cells_doc = _local_field(pair, pre, cell)
    else:
        est = _global_estimate(pair, pre, seed)
    reason = "" if local is not None else _refusal(est, pre.coregister_min_shift)
    mode = None if reason else ("local" if local is not None else "global")
    if local is not None:
        log.info("co-registration: AFTER shifted by a field over %dx%d cells (up to %.3f px)",
                 len(local.rows), len(local.cols), local.max_magnitude())
    elif mode:
        log.info("co-registration: AFTER shifted by (%.3f, %.3f) px", est.dy, est.dx)
    else:
        log.info("co-registration not applied: %s", reason)
    return CoregistrationRecord(
        enabled=True, estimate=est.as_dict(), cells=cells_doc, applied=mode is not None,
        mode=mode, reason=reason or None,
        applied_shift=(est.dy, est.dx) if mode == "global" else (0.0, 0.0),
        field=local.as_dict() if local is not None else None)
