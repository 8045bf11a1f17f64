"""Small changes implanted into a synthetic scene, with their exact truth.

Micro objects of 1 to 9 pixels, new buildings (rectangles or L shapes, 4 to 12 pixels a side)
and irregular blobs of up to ~300 pixels (clearing, flooding, crop damage), each moving the
ground spectrum towards a new material by a chosen contrast. Changes do not overlap (their boxes
keep a 2-pixel gap, so each is one connected component of the truth) and stay 3 pixels from the
image border.
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np
from affine import Affine
from numpy.typing import NDArray
from scipy import ndimage

from microchange.errors import ConfigError
from microchange.synthetic.landscape import F32, spectra

__all__ = ("BORDER", "MIN_NOISE_REF", "implant_changes")


#: Change kinds: (probability, candidate new materials).
_KINDS: Final[dict[str, tuple[float, tuple[str, ...]]]] = {
    "micro": (0.30, ("roof_grey", "bright", "burnt", "asphalt", "roof_red")),
    "building": (0.30, ("roof_red", "roof_grey", "bright")),
    "clearing": (0.15, ("soil", "burnt")),
    "flooding": (0.10, ("water",)),
    "crop_damage": (0.15, ("damaged_crop", "burnt")),
}
BORDER: Final = 3  # minimum distance of a change to the image border, px
_GAP: Final = 2  # minimum gap between the boxes of two changes, px
_CONTRAST_RANGE: Final = (2.0, 30.0)  # requested contrast, in units of the noise std
MIN_NOISE_REF: Final = 0.005  # contrast unit when ``noise`` is smaller than this
# --------------------------------------------------------------------------- changes
def _blob(rng: np.random.Generator, area: int) -> NDArray[np.bool_]:
    """Irregular connected blob of roughly ``area`` pixels, cropped to its box."""
    radius = math.sqrt(area / math.pi)
    half = math.ceil(1.5 * radius) + 1
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    wobble = ndimage.gaussian_filter(rng.standard_normal(yy.shape), max(radius / 2.5, 0.8))
    wobble /= max(float(wobble.std()), 1e-9)
    mask = np.hypot(yy, xx) / radius + 0.3 * wobble < 1.0
    mask[half, half] = True
    lab, _ = ndimage.label(mask)
    blob: NDArray[np.bool_] = lab == lab[half, half]
    rows, cols = np.nonzero(blob)
    return blob[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


def _change_shape(rng: np.random.Generator, kind: str, max_blob: int) -> NDArray[np.bool_]:
    if kind == "micro":
        h, w = rng.integers(1, 4, size=2)
        return np.ones((h, w), dtype=bool)
    if kind == "building":
        side = max(min(12, int(math.sqrt(max_blob))), 4)
        h, w = rng.integers(4, side + 1, size=2)
        mask = np.ones((h, w), dtype=bool)
        if h >= 6 and w >= 6 and rng.random() < 0.3:  # L-shaped building
            mask[: h // 2, : w // 2] = False
        return mask
    area = math.exp(rng.uniform(math.log(12), math.log(max(max_blob, 13))))
    blob = _blob(rng, round(area))
    while blob.sum() > max(max_blob, 13) * 1.1:  # random edges overshot: shrink and retry
        area *= 0.8
        blob = _blob(rng, round(area))
    return blob


def _find_free(
    occupied: NDArray[np.bool_], h: int, w: int, rng: np.random.Generator
) -> tuple[int, int] | None:
    """Top-left (row, col) where an h x w box plus gap fits, or None."""
    height, width = occupied.shape
    r_hi, c_hi = height - BORDER - h, width - BORDER - w
    if r_hi < BORDER or c_hi < BORDER:
        return None
    for _ in range(60):
        r, c = int(rng.integers(BORDER, r_hi + 1)), int(rng.integers(BORDER, c_hi + 1))
        if not occupied[r - _GAP : r + h + _GAP, c - _GAP : c + w + _GAP].any():
            return r, c
    # Exhaustive search with a summed-area table.
    sat = np.zeros((height + 1, width + 1), dtype=np.int32)
    sat[1:, 1:] = occupied.cumsum(0, dtype=np.int32).cumsum(1, dtype=np.int32)
    bh, bw = h + 2 * _GAP, w + 2 * _GAP
    top = np.arange(BORDER - _GAP, r_hi - _GAP + 1)[:, None]
    left = np.arange(BORDER - _GAP, c_hi - _GAP + 1)[None, :]
    count = sat[top + bh, left + bw] - sat[top, left + bw] - sat[top + bh, left] + sat[top, left]
    free_r, free_c = np.nonzero(count == 0)
    if free_r.size == 0:
        return None
    k = int(rng.integers(free_r.size))
    return int(top[free_r[k], 0]) + _GAP, int(left[0, free_c[k]]) + _GAP


def implant_changes(
    rng: np.random.Generator, ground: F32, n_changes: int, noise_ref: float, transform: Affine
) -> tuple[NDArray[np.uint8], list[dict[str, Any]]]:
    """In place: move ``ground`` towards new materials inside ``n_changes`` objects."""
    bands, height, width = ground.shape
    usable = (height - 2 * BORDER) * (width - 2 * BORDER)
    max_blob = int(np.clip(usable / (6 * max(n_changes, 1)), 12, 300))
    kinds = list(_KINDS)
    kind_idx = rng.choice(len(kinds), size=n_changes, p=[_KINDS[k][0] for k in kinds])
    shapes = [(kinds[i], _change_shape(rng, kinds[i], max_blob)) for i in kind_idx]
    order = sorted(range(n_changes), key=lambda i: -shapes[i][1].size)  # place big ones first
    occupied = np.zeros((height, width), dtype=bool)
    truth = np.zeros((height, width), dtype=np.uint8)
    changes: list[dict[str, Any]] = []
    lo, hi = np.log(_CONTRAST_RANGE[0]), np.log(_CONTRAST_RANGE[1])
    for i in order:
        kind, mask = shapes[i]
        h, w = mask.shape
        pos = _find_free(occupied, h, w, rng)
        if pos is None:
            raise ConfigError(
                f"Invalid n_changes: {n_changes!r}. Cannot place that many non-overlapping "
                f"changes in a {height}x{width} image; use fewer changes or a larger image."
            )
        r0, c0 = pos
        occupied[r0 : r0 + h, c0 : c0 + w] = True
        rows, cols = np.nonzero(mask)
        rows, cols = rows + r0, cols + c0
        old = ground[:, rows, cols].astype(np.float64)
        candidates = spectra(list(_KINDS[kind][1]), bands).astype(np.float64)
        grain = 1.0 + 0.03 * rng.standard_normal(rows.size)
        full = candidates[:, :, None] * grain[None, None, :] - old[None]  # (k, bands, n)
        full_rms = np.sqrt(np.mean(full**2, axis=(1, 2)))
        wanted = float(np.exp(rng.uniform(lo, hi))) * noise_ref
        pick = int(rng.integers(len(candidates)))
        if full_rms[pick] < wanted:
            pick = int(np.argmax(full_rms))
        alpha = min(1.0, wanted / max(float(full_rms[pick]), 1e-12))
        new = (old + alpha * full[pick]).astype(np.float32)
        ground[:, rows, cols] = new
        truth[rows, cols] = 1
        delta_rms = float(np.sqrt(np.mean((new.astype(np.float64) - old) ** 2)))
        k = int(np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2))
        x, y = transform @ (float(cols[k]) + 0.5, float(rows[k]) + 0.5)
        changes.append(
            {
                "id": 0,
                "kind": kind,
                "material": _KINDS[kind][1][pick],
                "row": int(rows[k]),
                "col": int(cols[k]),
                "x": float(x),
                "y": float(y),
                "bbox": (r0, c0, r0 + h, c0 + w),
                "area_px": int(rows.size),
                "contrast": delta_rms / noise_ref,
                "delta_rms": delta_rms,
            }
        )
    changes.sort(key=lambda ch: (ch["row"], ch["col"]))
    for j, ch in enumerate(changes):
        ch["id"] = j + 1
    return truth, changes


