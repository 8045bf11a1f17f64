"""Bitemporal synthetic scenes with known small changes, for the demo and the tests.

A scene is a pair of co-registered multispectral rasters, BEFORE and AFTER, of an invented
agricultural landscape, plus the exact mask of what changed on the ground between the dates.

What the scene models, and why:

* **Landscape.** Polygonal (Voronoi) parcels, each given one land-cover class (bare soil, green
  crop, mature crop, grass, forest) with its own per-band spectrum, within-field texture (smooth
  low-frequency brightness variation, fine grain, and row stripes on crops and ploughed soil),
  hedges along parcel edges, a meandering river lined with riparian trees and a few straight
  roads. Bands are ordered blue, green, red, NIR, then SWIR-like bands; water is dark,
  especially in the NIR, as real surface reflectance is. The texture makes the scene hard
  enough that a detector cannot just flag every pixel that differs from its neighbours.
* **Nuisance, which is not change.** AFTER is BEFORE seen through a different acquisition: a
  per-band gain (0.85 to 1.15) and offset (+-0.02) as from illumination, atmosphere and
  calibration; a small sub-pixel global misregistration (``shift_px``); and independent
  Gaussian noise of std ``noise`` on each date. A useful detector must ignore all of these,
  which is why none of them is marked in the truth.
* **Real change.** ``n_changes`` small objects are implanted into AFTER: micro objects of 1 to
  9 pixels, new buildings (rectangles or L shapes, 4 to 12 pixels a side), and irregular blobs
  of up to ~300 pixels (clearing, flooding, crop damage). Each moves the ground spectrum
  towards a new material by a chosen amount, from subtle (about twice the noise std, RMS over
  bands) to strong. Changes do not overlap (their boxes keep a 2-pixel gap, so each is one
  connected component of the truth) and stay at least 3 pixels from the image border.

The changes are implanted after the misregistration shift and before the gain, offset and
noise, so the truth is exactly the set of modified ground pixels. Every draw comes from
``numpy.random.default_rng(seed)`` (split into independent streams for the landscape, the
nuisance, the changes and the noise), so the same arguments give byte-identical arrays on the
same platform, and changing ``n_changes`` keeps the same landscape.
"""

from __future__ import annotations

import math
import os
import pathlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Final, TypeAlias

import numpy as np
import rasterio
from affine import Affine
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.errors import CRSError, RasterioError
from rasterio.windows import Window
from scipy import ndimage

from microchange.errors import ConfigError, OutputError

__all__ = ("SyntheticScene", "make_scene", "write_scene")

PathLike: TypeAlias = str | os.PathLike[str]
F32: TypeAlias = NDArray[np.float32]

#: Surface reflectance of each material in (blue, green, red, NIR, SWIR1, SWIR2).
_MATERIALS: Final[dict[str, tuple[float, ...]]] = {
    "soil": (0.090, 0.120, 0.160, 0.240, 0.320, 0.270),
    "crop_green": (0.035, 0.075, 0.045, 0.420, 0.220, 0.110),
    "crop_mature": (0.070, 0.110, 0.140, 0.280, 0.330, 0.240),
    "grass": (0.045, 0.085, 0.060, 0.330, 0.250, 0.140),
    "forest": (0.025, 0.050, 0.030, 0.270, 0.140, 0.065),
    "water": (0.060, 0.065, 0.045, 0.020, 0.012, 0.008),
    "asphalt": (0.090, 0.100, 0.110, 0.130, 0.160, 0.150),
    "roof_red": (0.100, 0.110, 0.220, 0.270, 0.300, 0.250),
    "roof_grey": (0.200, 0.210, 0.220, 0.240, 0.260, 0.240),
    "bright": (0.350, 0.370, 0.380, 0.400, 0.380, 0.330),
    "damaged_crop": (0.060, 0.090, 0.120, 0.200, 0.300, 0.240),
    "burnt": (0.030, 0.035, 0.040, 0.080, 0.120, 0.120),
}
_FIELD_CLASSES: Final = ("soil", "crop_green", "crop_mature", "grass", "forest")
_FIELD_PROBS: Final = (0.22, 0.30, 0.18, 0.18, 0.12)
_FINE_TEXTURE: Final = (0.04, 0.03, 0.03, 0.04, 0.12)  # std of 1-2 px grain, per class
_STRIPE_AMP: Final = (0.30, 0.35, 0.30, 0.0, 0.0)  # max mix weight of row stripes, per class

#: Change kinds: (probability, candidate new materials).
_KINDS: Final[dict[str, tuple[float, tuple[str, ...]]]] = {
    "micro": (0.30, ("roof_grey", "bright", "burnt", "asphalt", "roof_red")),
    "building": (0.30, ("roof_red", "roof_grey", "bright")),
    "clearing": (0.15, ("soil", "burnt")),
    "flooding": (0.10, ("water",)),
    "crop_damage": (0.15, ("damaged_crop", "burnt")),
}
_BORDER: Final = 3  # minimum distance of a change to the image border, px
_GAP: Final = 2  # minimum gap between the boxes of two changes, px
_CONTRAST_RANGE: Final = (2.0, 30.0)  # requested contrast, in units of the noise std
_MIN_NOISE_REF: Final = 0.005  # contrast unit when ``noise`` is smaller than this
_WRITE_DTYPES: Final = ("uint8", "uint16", "int16", "uint32", "int32", "float32", "float64")
_COMPRESS: Final = ("deflate", "lzw", "zstd", "none")


@dataclass(frozen=True, eq=False)
class SyntheticScene:
    """A bitemporal synthetic scene and its change truth.

    Attributes:
        before: (bands, H, W) float32 reflectance-like values at t0, mostly in [0, 0.6]
            (noise may push a few values slightly below 0).
        after: (bands, H, W) float32 values at t1: BEFORE shifted, rescaled, re-noised and
            with the implanted changes.
        truth: (H, W) uint8; 1 where the ground changed, 0 elsewhere.
        transform: Affine pixel-to-map transform of the grid (north up).
        crs: CRS of the grid, as given by the user (e.g. ``"EPSG:32631"``).
        changes: One dict per implanted change: ``id``, ``kind`` (``micro``, ``building``,
            ``clearing``, ``flooding`` or ``crop_damage``), ``material`` (the new material),
            ``row``/``col`` (the pixel of the change nearest its centroid), ``x``/``y`` (map
            coordinates of that pixel's centre), ``bbox`` (row_start, col_start, row_stop,
            col_stop), ``area_px``, ``contrast`` (RMS change over bands and pixels, in units
            of the noise std, or of 0.005 when ``noise`` is smaller) and ``delta_rms`` (the
            same RMS change in reflectance).
        gain: Per-band gain applied to AFTER.
        offset: Per-band offset applied to AFTER.
        shift: (rows, cols) sub-pixel shift applied to AFTER, as in ``scipy.ndimage.shift``:
            AFTER at (r, c) shows the ground BEFORE shows at (r - rows, c - cols).
    """

    before: F32
    after: F32
    truth: NDArray[np.uint8]
    transform: Affine
    crs: str
    changes: list[dict[str, Any]]
    gain: tuple[float, ...] = ()
    offset: tuple[float, ...] = ()
    shift: tuple[float, float] = (0.0, 0.0)


# --------------------------------------------------------------------------- validation
def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, Integral) and not isinstance(value, bool) and low <= int(value) <= high:
        return int(value)
    raise ConfigError(f"Invalid {name}: {value!r}. Must be an integer in [{low}, {high}].")


def _check_float(name: str, value: object, low: float, high: float, *, open_low: bool) -> float:
    if isinstance(value, Real) and not isinstance(value, bool):
        number = float(value)
        above = low < number if open_low else low <= number
        if math.isfinite(number) and above and number <= high:
            return number
    bracket = "(" if open_low else "["
    raise ConfigError(f"Invalid {name}: {value!r}. Must be a number in {bracket}{low}, {high}].")


# --------------------------------------------------------------------------- landscape
def _spectra(names: tuple[str, ...] | list[str], bands: int) -> F32:
    """(len(names), bands) reflectance; bands past NIR interpolate SWIR1 -> SWIR2."""
    base = np.array([_MATERIALS[name] for name in names], dtype=np.float64)
    if bands <= 4:
        return base[:, :bands].astype(np.float32)
    t = np.linspace(0.0, 1.0, bands - 4) if bands > 5 else np.zeros(1)
    swir = base[:, 4:5] * (1.0 - t) + base[:, 5:6] * t
    return np.concatenate([base[:, :4], swir], axis=1).astype(np.float32)


def _band_names(bands: int) -> list[str]:
    names = ["blue", "green", "red", "nir"][:bands]
    return names + [f"swir{i + 1}" for i in range(bands - 4)]


def _smooth_noise(rng: np.random.Generator, height: int, width: int, scale: float) -> F32:
    """(H, W) smooth Gaussian noise, unit std, correlation length ~``scale`` px."""
    step = max(int(scale) // 2, 1)
    low = rng.standard_normal((height // step + 3, width // step + 3)).astype(np.float32)
    low = ndimage.gaussian_filter(low, 1.0, mode="wrap")
    full = ndimage.zoom(low, step, order=1)[:height, :width]
    std = float(full.std())
    out: F32 = (full / std if std > 0 else full).astype(np.float32, copy=False)
    return out


def _parcels(rng: np.random.Generator, height: int, width: int) -> tuple[NDArray[np.intp], int]:
    """Voronoi parcel label per pixel, from seeds jittered around a square grid."""
    spacing = rng.uniform(36.0, 64.0)
    ny, nx = max(round(height / spacing), 1), max(round(width / spacing), 1)
    gy, gx = np.meshgrid(
        (np.arange(ny) + 0.5) * height / ny, (np.arange(nx) + 0.5) * width / nx, indexing="ij"
    )
    jitter = (
        rng.uniform(-0.45, 0.45, (2, ny, nx)) * np.array([height / ny, width / nx])[:, None, None]
    )
    rows = np.clip(np.rint(gy + jitter[0]), 0, height - 1).astype(np.intp).ravel()
    cols = np.clip(np.rint(gx + jitter[1]), 0, width - 1).astype(np.intp).ravel()
    seed_id = np.full((height, width), -1, dtype=np.intp)
    seed_id[rows, cols] = np.arange(rows.size)
    idx = ndimage.distance_transform_edt(seed_id < 0, return_distances=False, return_indices=True)
    labels = seed_id[idx[0], idx[1]]
    return labels, int(rows.size)


def _river_distance(rng: np.random.Generator, height: int, width: int) -> F32:
    """(H, W) distance in px to the centre line of a meandering river crossing the image."""
    theta = rng.uniform(0.0, np.pi)
    centre = np.array([height, width]) * rng.uniform(0.3, 0.7, 2)
    u, n = np.array([np.sin(theta), np.cos(theta)]), np.array([np.cos(theta), -np.sin(theta)])
    half = math.hypot(height, width) / 2 + 10
    t = np.arange(-half, half, 0.25)
    size = min(height, width)
    offset = np.zeros_like(t)
    for k in range(3):
        wavelength = size * rng.uniform(0.3, 1.2) / (k + 1)
        offset += (
            size
            * rng.uniform(0.02, 0.08)
            / (k + 1)
            * np.sin(2 * np.pi * t / wavelength + rng.uniform(0, 2 * np.pi))
        )
    pts = centre[:, None] + t * u[:, None] + offset * n[:, None]
    r, c = np.rint(pts).astype(np.intp)
    keep = (r >= 0) & (r < height) & (c >= 0) & (c < width)
    off_line = np.ones((height, width), dtype=bool)
    off_line[r[keep], c[keep]] = False
    if off_line.all():  # centre line left the image: no river
        return np.full((height, width), np.inf, dtype=np.float32)
    dist: F32 = ndimage.distance_transform_edt(off_line).astype(np.float32)
    return dist


def _blend(img: F32, cover: F32, spectrum: F32) -> None:
    """In place: img = cover * spectrum + (1 - cover) * img where cover > 0."""
    sel = cover > 0
    w = cover[sel][None, :]
    spec = spectrum if spectrum.ndim == 2 else spectrum[:, None]
    img[:, sel] = w * spec + (1.0 - w) * img[:, sel]


def _make_landscape(rng: np.random.Generator, height: int, width: int, bands: int) -> F32:
    """(bands, H, W) float32 ground reflectance of fields, hedges, a river and roads."""
    labels, n_fields = _parcels(rng, height, width)
    cls = rng.choice(len(_FIELD_CLASSES), size=n_fields, p=_FIELD_PROBS)
    class_spec = _spectra(_FIELD_CLASSES, bands)
    jittered = (
        class_spec[cls]
        * (1 + 0.08 * rng.standard_normal((n_fields, 1)))
        * (1 + 0.03 * rng.standard_normal((n_fields, bands)))
    )
    field_spec: F32 = np.maximum(jittered, 0.005).astype(np.float32)
    img: F32 = np.ascontiguousarray(field_spec.T[:, labels])

    # Row stripes: crops mixed with the soil between rows; furrows darken ploughed soil.
    amp = np.asarray(_STRIPE_AMP, np.float32)[cls] * rng.uniform(0.3, 1.0, n_fields)
    amp[rng.random(n_fields) < 0.35] = 0.0
    angle = rng.uniform(0.0, np.pi, n_fields)
    period = rng.uniform(3.0, 9.0, n_fields)
    ky = (2 * np.pi * np.sin(angle) / period).astype(np.float32)
    kx = (2 * np.pi * np.cos(angle) / period).astype(np.float32)
    phase = rng.uniform(0.0, 2 * np.pi, n_fields).astype(np.float32)
    rr = np.arange(height, dtype=np.float32)[:, None]
    cc = np.arange(width, dtype=np.float32)[None, :]
    mix = amp[labels] * (0.5 + 0.5 * np.sin(rr * ky[labels] + cc * kx[labels] + phase[labels]))
    soil = class_spec[0]
    stripe_spec = np.where((cls == 0)[:, None], 0.7 * soil, soil).astype(np.float32)
    img += mix * (stripe_spec.T[:, labels] - img)
    del mix

    # Brightness texture: smooth multi-scale variation plus class-dependent fine grain.
    tex = 0.05 * _smooth_noise(rng, height, width, 48) + 0.03 * _smooth_noise(
        rng, height, width, 12
    )
    grain = ndimage.gaussian_filter(rng.standard_normal((height, width), dtype=np.float32), 0.7)
    grain *= np.float32(1.0 / max(float(grain.std()), 1e-6))
    tex += np.asarray(_FINE_TEXTURE, np.float32)[cls][labels] * grain
    tex += 1.0
    img *= tex

    # Hedges along parcel edges.
    edge = np.zeros((height, width), dtype=bool)
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    hedge = _spectra(("forest",), bands)[0]
    img[:, edge] = 0.4 * img[:, edge] + 0.6 * hedge[:, None] * tex[edge][None, :]
    del labels, edge

    # Meandering river with riparian trees and anti-aliased banks.
    dist = _river_distance(rng, height, width)
    half_width = float(np.clip(min(height, width) / 120, 1.5, 9.0) * rng.uniform(0.8, 1.25))
    wobble = _smooth_noise(rng, height, width, 24)
    bank = dist - half_width - 1.2 * wobble
    trees = (bank < rng.uniform(2.0, 6.0)) & (wobble + 0.3 * grain > -0.4)
    img[:, trees] = _spectra(("forest",), bands)[0][:, None] * (tex[trees] + 0.1 * grain[trees])
    water = _spectra(("water",), bands)[0]
    cover = np.clip(0.5 - bank, 0.0, 1.0).astype(np.float32)
    sel = cover > 0
    turbid = 1.0 + 0.5 * (tex[sel] - 1.0)
    img[:, sel] = cover[sel] * water[:, None] * turbid + (1 - cover[sel]) * img[:, sel]
    del dist, wobble, bank, trees, cover, sel

    # A few straight roads (drawn last: bridges cross the river).
    asphalt = _spectra(("asphalt",), bands)[0]
    for _ in range(int(rng.integers(2, 5))):
        theta = rng.uniform(0.0, np.pi)
        r0, c0 = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
        road_half = rng.uniform(0.6, 1.8)
        d = np.abs((cc - c0) * np.float32(np.sin(theta)) - (rr - r0) * np.float32(np.cos(theta)))
        _blend(img, np.clip(road_half + 0.5 - d, 0.0, 1.0), asphalt)
    return img


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
    r_hi, c_hi = height - _BORDER - h, width - _BORDER - w
    if r_hi < _BORDER or c_hi < _BORDER:
        return None
    for _ in range(60):
        r, c = int(rng.integers(_BORDER, r_hi + 1)), int(rng.integers(_BORDER, c_hi + 1))
        if not occupied[r - _GAP : r + h + _GAP, c - _GAP : c + w + _GAP].any():
            return r, c
    # Exhaustive search with a summed-area table.
    sat = np.zeros((height + 1, width + 1), dtype=np.int32)
    sat[1:, 1:] = occupied.cumsum(0, dtype=np.int32).cumsum(1, dtype=np.int32)
    bh, bw = h + 2 * _GAP, w + 2 * _GAP
    top = np.arange(_BORDER - _GAP, r_hi - _GAP + 1)[:, None]
    left = np.arange(_BORDER - _GAP, c_hi - _GAP + 1)[None, :]
    count = sat[top + bh, left + bw] - sat[top, left + bw] - sat[top + bh, left] + sat[top, left]
    free_r, free_c = np.nonzero(count == 0)
    if free_r.size == 0:
        return None
    k = int(rng.integers(free_r.size))
    return int(top[free_r[k], 0]) + _GAP, int(left[0, free_c[k]]) + _GAP


def _implant_changes(
    rng: np.random.Generator, ground: F32, n_changes: int, noise_ref: float, transform: Affine
) -> tuple[NDArray[np.uint8], list[dict[str, Any]]]:
    """In place: move ``ground`` towards new materials inside ``n_changes`` objects."""
    bands, height, width = ground.shape
    usable = (height - 2 * _BORDER) * (width - 2 * _BORDER)
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
        candidates = _spectra(list(_KINDS[kind][1]), bands).astype(np.float64)
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


# --------------------------------------------------------------------------- public API
def make_scene(
    *,
    height: int = 512,
    width: int = 512,
    bands: int = 4,
    seed: int = 0,
    n_changes: int = 40,
    shift_px: float = 0.3,
    noise: float = 0.01,
    crs: str = "EPSG:32631",
    res: float = 10.0,
    origin: tuple[float, float] = (500_000.0, 5_000_000.0),
) -> SyntheticScene:
    """Make a BEFORE/AFTER pair of a synthetic landscape with known small changes.

    Args:
        height: Rows of the grid, in [32, 16384].
        width: Columns of the grid, in [32, 16384].
        bands: Spectral bands, in [1, 32]: blue, green, red, NIR, then SWIR-like bands.
        seed: Seed of ``numpy.random.default_rng``; >= 0.
        n_changes: Changes to implant, >= 0 (at most about one per 25 px of the image).
        shift_px: Length in px of the global sub-pixel shift of AFTER, in [0, 3]; its
            direction is random.
        noise: Std of the Gaussian noise added to each date, in reflectance, in [0, 0.2].
        crs: Any CRS string rasterio understands, e.g. ``"EPSG:32631"``.
        res: Pixel size in CRS units, > 0.
        origin: (x, y) map coordinates of the upper-left corner of the grid.

    Returns:
        The scene: BEFORE, AFTER, truth, grid and the list of implanted changes.

    Raises:
        ConfigError: If an argument is out of range, ``crs`` is not a valid CRS, or the
            changes cannot all be placed without overlapping.
    """
    height = _check_int("height", height, 32, 16384)
    width = _check_int("width", width, 32, 16384)
    bands = _check_int("bands", bands, 1, 32)
    seed = _check_int("seed", seed, 0, 2**63 - 1)
    max_changes = (height - 2 * _BORDER) * (width - 2 * _BORDER) // 25
    n_changes = _check_int("n_changes", n_changes, 0, max_changes)
    shift_px = _check_float("shift_px", shift_px, 0.0, 3.0, open_low=False)
    noise = _check_float("noise", noise, 0.0, 0.2, open_low=False)
    res = _check_float("res", res, 0.0, 1e7, open_low=True)
    if not isinstance(crs, str) or not crs.strip():
        raise ConfigError(f"Invalid crs: {crs!r}. Must be a CRS string such as 'EPSG:32631'.")
    try:
        CRS.from_user_input(crs)
    except (CRSError, ValueError) as exc:
        raise ConfigError(
            f"Invalid crs: {crs!r}. Must be a CRS string such as 'EPSG:32631' ({exc})."
        ) from exc
    if not (isinstance(origin, tuple | list) and len(origin) == 2):
        raise ConfigError(f"Invalid origin: {origin!r}. Must be an (x, y) pair of numbers.")
    ox = _check_float("origin[0]", origin[0], -1e9, 1e9, open_low=False)
    oy = _check_float("origin[1]", origin[1], -1e9, 1e9, open_low=False)
    transform = Affine(res, 0.0, ox, 0.0, -res, oy)

    rng_land, rng_nuisance, rng_change, rng_noise = np.random.default_rng(seed).spawn(4)
    ground = _make_landscape(rng_land, height, width, bands)

    angle = rng_nuisance.uniform(0.0, 2 * np.pi)
    shift = (shift_px * math.sin(angle), shift_px * math.cos(angle))
    gain = rng_nuisance.uniform(0.85, 1.15, bands).astype(np.float32)
    offset = rng_nuisance.uniform(-0.02, 0.02, bands).astype(np.float32)

    after = np.empty_like(ground)
    if shift_px > 0:  # bands are independent: shift them on a few threads (scipy frees the GIL)

        def _shift_band(b: int) -> None:
            ndimage.shift(ground[b], shift, output=after[b], order=3, mode="reflect")

        with ThreadPoolExecutor(max_workers=min(bands, os.cpu_count() or 1, 8)) as pool:
            list(pool.map(_shift_band, range(bands)))
    else:
        after[...] = ground
    truth, changes = _implant_changes(
        rng_change, after, n_changes, max(noise, _MIN_NOISE_REF), transform
    )
    after *= gain[:, None, None]
    after += offset[:, None, None]
    if noise > 0:  # band by band, to keep temporaries small
        for stack in (ground, after):
            for b in range(bands):
                draw = rng_noise.standard_normal((height, width), dtype=np.float32)
                draw *= np.float32(noise)
                stack[b] += draw
    return SyntheticScene(
        before=ground,
        after=after,
        truth=truth,
        transform=transform,
        crs=crs,
        changes=changes,
        gain=tuple(float(g) for g in gain),
        offset=tuple(float(o) for o in offset),
        shift=(float(shift[0]), float(shift[1])),
    )


def _encode(block: F32, dtype: str, scale: float, nodata: int | None) -> NDArray[Any]:
    """Scale, round and clip a block of reflectance to an integer dtype (float: unchanged)."""
    if np.issubdtype(np.dtype(dtype), np.floating):
        return block.astype(dtype)
    info = np.iinfo(dtype)
    values = np.clip(np.rint(block.astype(np.float64) * scale), info.min, info.max)
    if nodata is not None:  # keep valid pixels off the nodata value
        values[values == nodata] = nodata + 1 if nodata < info.max else nodata - 1
    return values.astype(dtype)


def _write_stack(
    array: NDArray[Any],
    path: pathlib.Path,
    scene: SyntheticScene,
    *,
    dtype: str,
    scale: float | None,
    nodata: int | None,
    tile: int,
    compress: str,
) -> None:
    count, height, width = array.shape
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": count,
        "dtype": dtype,
        "crs": scene.crs,
        "transform": scene.transform,
        "nodata": nodata,
        "tiled": True,
        "blockxsize": tile,
        "blockysize": tile,
        "BIGTIFF": "IF_SAFER",
    }
    if compress != "none":
        profile["compress"] = compress
        profile["predictor"] = 3 if np.issubdtype(np.dtype(dtype), np.floating) else 2
    with rasterio.open(path, "w", **profile) as dst:
        if scale is not None:
            dst.descriptions = tuple(_band_names(count))
        for r0 in range(0, height, tile):
            for c0 in range(0, width, tile):
                h, w = min(tile, height - r0), min(tile, width - c0)
                block = array[:, r0 : r0 + h, c0 : c0 + w]
                data = block if scale is None else _encode(block, dtype, scale, nodata)
                dst.write(data, window=Window(c0, r0, w, h))


def write_scene(
    scene: SyntheticScene,
    directory: PathLike,
    *,
    dtype: str = "uint16",
    scale: float = 10000.0,
    nodata: int | None = None,
    tile: int = 256,
    compress: str = "deflate",
) -> dict[str, pathlib.Path]:
    """Write a scene as tiled GeoTIFFs ``before.tif``, ``after.tif`` and ``truth.tif``.

    Args:
        scene: The scene to write.
        directory: Output directory; created if missing. Existing files are overwritten.
        dtype: Pixel type of BEFORE and AFTER: one of uint8, uint16, int16, uint32, int32
            (values times ``scale``, rounded and clipped to the type's range), float32 or
            float64 (reflectance written as is).
        scale: Factor applied to reflectance for integer dtypes, > 0.
        nodata: Nodata value written in the BEFORE and AFTER metadata, within the range of
            ``dtype``; valid pixels that would equal it are moved by one. None: no nodata.
        tile: Tile size in pixels, a multiple of 16 in [16, 4096].
        compress: One of deflate, lzw, zstd or none.

    Returns:
        Paths of the files written, keyed ``"before"``, ``"after"`` and ``"truth"``.

    Raises:
        ConfigError: If an option is out of range.
        OutputError: If the directory or a file cannot be written.
    """
    if dtype not in _WRITE_DTYPES:
        raise ConfigError(f"Invalid dtype: {dtype!r}. Must be one of {_WRITE_DTYPES}.")
    scale = _check_float("scale", scale, 0.0, 1e9, open_low=True)
    tile = _check_int("tile", tile, 16, 4096)
    if tile % 16:
        raise ConfigError(f"Invalid tile: {tile!r}. Must be a multiple of 16 in [16, 4096].")
    compress = compress.lower() if isinstance(compress, str) else compress
    if compress not in _COMPRESS:
        raise ConfigError(f"Invalid compress: {compress!r}. Must be one of {_COMPRESS}.")
    if nodata is not None:
        if np.issubdtype(np.dtype(dtype), np.integer):
            info = np.iinfo(dtype)
            nodata = _check_int("nodata", nodata, int(info.min), int(info.max))
        else:
            nodata = _check_int("nodata", nodata, -(2**53), 2**53)
    out = pathlib.Path(directory)
    paths = {name: out / f"{name}.tif" for name in ("before", "after", "truth")}
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name in ("before", "after"):
            _write_stack(
                getattr(scene, name),
                paths[name],
                scene,
                dtype=dtype,
                scale=scale,
                nodata=nodata,
                tile=tile,
                compress=compress,
            )
        _write_stack(
            scene.truth[None],
            paths["truth"],
            scene,
            dtype="uint8",
            scale=None,
            nodata=None,
            tile=tile,
            compress=compress,
        )
    except (OSError, RasterioError) as exc:
        raise OutputError(f"Cannot write the synthetic scene to {str(out)!r}: {exc}") from exc
    return paths
