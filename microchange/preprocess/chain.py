"""The preprocessing chain: fitted once on the global sample, then applied to every tile.

Order: radiometric mapping of AFTER onto BEFORE, Lee speckle filter, log transform, denoising.
Each fitted statistic is a reduction over the sample blocks wherever they are held
(:mod:`microchange.parallel`). Array in, array out: a tile read with a halo of at least
:func:`preprocess_halo` pixels gives the same core whatever the tile size.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
from numpy.typing import NDArray

from microchange.config import PreprocessConfig
from microchange.parallel import DaskBlocks, LocalBlocks, SampleBlocks
from microchange.preprocess.denoise import NoiseLevel, denoise, denoise_halo
from microchange.preprocess.logtransform import LogTransform, log_transform
from microchange.preprocess.radiometry import RadiometricNormaliser
from microchange.preprocess.speckle import SpeckleFilter
from microchange.types import PairArrays

__all__ = ("Preprocessor", "preprocess_halo", "preprocess_image")


def preprocess_halo(cfg: PreprocessConfig) -> int:
    """Context pixels the preprocessing needs on each side of a tile."""
    return cfg.speckle_window // 2 + denoise_halo(cfg.denoise, cfg.smoothing_sigma)


def preprocess_image(
    image: NDArray[np.float32], valid: NDArray[np.bool_], cfg: PreprocessConfig, *,
    log_offset: NDArray[np.float32] | None = None,
    noise: NDArray[np.float32] | None = None,
) -> NDArray[np.float32]:
    """Log transform and denoising of one date of a block (no fitted speckle or radiometry).

    Args:
        image: (C, H, W) float32 band values.
        valid: (H, W) bool validity mask.
        cfg: Preprocessing options.
        log_offset: (C,) offsets ``c`` of ``log(x + c)`` (:class:`LogTransform`); None or all
            ones: ``log1p``.
        noise: (C,) noise levels of the log-transformed bands, for the bilateral denoiser.

    Returns:
        (C, H, W) float32 prepared values (a new array; invalid pixels hold 0).
    """
    out = log_transform(image, valid, cfg, log_offset=log_offset)
    if cfg.smoothing_sigma > 0:
        return denoise(out, valid, cfg.denoise, cfg.smoothing_sigma, noise=noise)
    return out if out is not image else image.copy()


class Preprocessor:
    """The preprocessing of one run, with the statistics it fits on the global sample.

    Args:
        cfg: Preprocessing options.
    """

    def __init__(self, cfg: PreprocessConfig) -> None:
        self.cfg = cfg
        self.radiometry = RadiometricNormaliser(cfg.radiometric)
        self.speckle = SpeckleFilter(cfg.speckle_window)
        self.log = LogTransform(cfg.log_transform)
        self.noise = NoiseLevel(cfg.denoise == "bilateral" and cfg.smoothing_sigma > 0)

    @property
    def halo(self) -> int:
        """Context pixels a tile needs on each side."""
        return preprocess_halo(self.cfg)

    def fit(self, samples: Sequence[PairArrays] | SampleBlocks[PairArrays]) -> list[PairArrays]:
        """Fit every statistic on sample blocks and return the blocks prepared.

        Args:
            samples: Blocks (core + halo) spread over the raster: a sequence, or
                :class:`~microchange.parallel.LocalBlocks` / ``DaskBlocks``.

        Returns:
            The blocks after radiometric mapping, speckle filter, log transform and denoising.
        """
        blocks = samples if isinstance(samples, LocalBlocks | DaskBlocks) else LocalBlocks(samples)
        self.radiometry.fit_on(blocks)
        mapped = blocks.map(partial(_map_after, self.radiometry))
        del blocks, samples
        self.speckle.fit_on(mapped)
        self.log.fit_on(mapped)
        logged = mapped.map(partial(_speckle_log, self.speckle, self.log.offset, self.cfg))
        del mapped
        self.noise.fit_on(logged)  # on the values as they enter the denoiser
        return logged.map(partial(_denoise_block, self.noise.level, self.cfg)).collect()

    def apply(self, tile: PairArrays) -> PairArrays:
        """One block prepared with the fitted statistics (new arrays)."""
        return _denoise_block(self.noise.level, self.cfg, _speckle_log(
            self.speckle, self.log.offset, self.cfg, _map_after(self.radiometry, tile)))

    def parts(self) -> tuple[tuple[str, Any], ...]:
        """(name, fitted part) pairs, each with ``state()`` and ``load_state()``."""
        return (("radiometry", self.radiometry), ("speckle", self.speckle), ("log", self.log),
                ("noise", self.noise))

    def summary(self) -> dict[str, Any]:
        """What the fit learned, for run.json."""
        speckle, log, noise = self.speckle.cu2, self.log.offset, self.noise.level
        return {"radiometry": self.radiometry.summary(),
                "speckle_cu2": None if speckle is None else [float(v) for v in speckle],
                "log_offset": None if log is None else [float(v) for v in log],
                "noise_level": None if noise is None else [float(v) for v in noise]}


def _map_after(radiometry: RadiometricNormaliser, tile: PairArrays) -> PairArrays:
    """The block with AFTER mapped onto BEFORE's radiometry."""
    return PairArrays(tile.before, radiometry.apply(tile.after, tile.valid), tile.valid,
                      tile.halo)


def _speckle_log(speckle: SpeckleFilter, log_offset: NDArray[np.float32] | None,
                 cfg: PreprocessConfig, tile: PairArrays) -> PairArrays:
    """Speckle filter and log transform of both dates (AFTER already mapped)."""
    v = tile.valid
    return PairArrays(log_transform(speckle.apply(tile.before, v), v, cfg, log_offset=log_offset),
                      log_transform(speckle.apply(tile.after, v), v, cfg, log_offset=log_offset),
                      v, tile.halo)


def _denoise_block(noise: NDArray[np.float32] | None, cfg: PreprocessConfig,
                   tile: PairArrays) -> PairArrays:
    """Denoising of both dates (new arrays), after :func:`_speckle_log`."""
    v = tile.valid
    return PairArrays(denoise(tile.before, v, cfg.denoise, cfg.smoothing_sigma, noise=noise),
                      denoise(tile.after, v, cfg.denoise, cfg.smoothing_sigma, noise=noise),
                      v, tile.halo)
