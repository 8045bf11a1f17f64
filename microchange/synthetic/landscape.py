"""The invented agricultural landscape of a synthetic scene: parcels, river, roads, hedges.

Polygonal (Voronoi) parcels of one land-cover class each (bare soil, green or mature crop,
grass, forest), each with its own per-band spectrum and within-field texture (low-frequency
brightness, fine grain, row stripes on crops and ploughed soil), hedges along parcel edges, a
meandering river lined with trees and a few straight roads. Bands are blue, green, red, NIR,
then SWIR-like bands.
"""

from __future__ import annotations

import math
from typing import Final, TypeAlias

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

__all__ = ("F32", "band_names", "make_landscape", "spectra")

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

# --------------------------------------------------------------------------- landscape
def spectra(names: tuple[str, ...] | list[str], bands: int) -> F32:
    """(len(names), bands) reflectance; bands past NIR interpolate SWIR1 -> SWIR2."""
    base = np.array([_MATERIALS[name] for name in names], dtype=np.float64)
    if bands <= 4:
        return base[:, :bands].astype(np.float32)
    t = np.linspace(0.0, 1.0, bands - 4) if bands > 5 else np.zeros(1)
    swir = base[:, 4:5] * (1.0 - t) + base[:, 5:6] * t
    return np.concatenate([base[:, :4], swir], axis=1).astype(np.float32)


def band_names(bands: int) -> list[str]:
    """Band names of a scene: blue, green, red, nir, then swir1, swir2..."""
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


def make_landscape(rng: np.random.Generator, height: int, width: int, bands: int) -> F32:
    """(bands, H, W) float32 ground reflectance of fields, hedges, a river and roads."""
    labels, n_fields = _parcels(rng, height, width)
    cls = rng.choice(len(_FIELD_CLASSES), size=n_fields, p=_FIELD_PROBS)
    class_spec = spectra(_FIELD_CLASSES, bands)
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
    hedge = spectra(("forest",), bands)[0]
    img[:, edge] = 0.4 * img[:, edge] + 0.6 * hedge[:, None] * tex[edge][None, :]
    del labels, edge

    # Meandering river with riparian trees and anti-aliased banks.
    dist = _river_distance(rng, height, width)
    half_width = float(np.clip(min(height, width) / 120, 1.5, 9.0) * rng.uniform(0.8, 1.25))
    wobble = _smooth_noise(rng, height, width, 24)
    bank = dist - half_width - 1.2 * wobble
    trees = (bank < rng.uniform(2.0, 6.0)) & (wobble + 0.3 * grain > -0.4)
    img[:, trees] = spectra(("forest",), bands)[0][:, None] * (tex[trees] + 0.1 * grain[trees])
    water = spectra(("water",), bands)[0]
    cover = np.clip(0.5 - bank, 0.0, 1.0).astype(np.float32)
    sel = cover > 0
    turbid = 1.0 + 0.5 * (tex[sel] - 1.0)
    img[:, sel] = cover[sel] * water[:, None] * turbid + (1 - cover[sel]) * img[:, sel]
    del dist, wobble, bank, trees, cover, sel

    # A few straight roads (drawn last: bridges cross the river).
    asphalt = spectra(("asphalt",), bands)[0]
    for _ in range(int(rng.integers(2, 5))):
        theta = rng.uniform(0.0, np.pi)
        r0, c0 = rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width
        road_half = rng.uniform(0.6, 1.8)
        d = np.abs((cc - c0) * np.float32(np.sin(theta)) - (rr - r0) * np.float32(np.cos(theta)))
        _blend(img, np.clip(road_half + 0.5 - d, 0.0, 1.0), asphalt)
    return img


