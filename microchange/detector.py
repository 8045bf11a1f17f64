"""A detector = preprocessing + feature extractor + scorer, built from a method name.

The pipeline only talks to :class:`Detector`: ``fit`` on blocks sampled over the whole raster,
``score`` tile by tile, ``save``/``load`` to move the fitted state between stages as one file.
New methods register a factory in :data:`METHODS`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from microchange.blocks import DaskBlocks, LocalBlocks, SampleBlocks
from microchange.config import DetectConfig, PreprocessConfig
from microchange.denoise import NoiseLevel, denoise
from microchange.errors import UnknownMethodError
from microchange.features.bands import BandFeatures
from microchange.features.base import FeatureExtractor, FeatureSample
from microchange.io.rasters import TileArrays
from microchange.preprocess import LogTransform, log_transform, preprocess_halo
from microchange.radiometry import RadiometricNormaliser
from microchange.scoring.base import Scorer
from microchange.scoring.distance import CvaScorer
from microchange.scoring.pca_kmeans import PcaKMeansScorer
from microchange.speckle import SpeckleFilter
from microchange.tiling import crop_core

__all__ = ("METHODS", "SCORERS", "Detector", "build_detector", "method_names")


class Detector:
    """Scores change per pixel for tiles of a pair.

    Args:
        method: Registered method name (recorded in the saved state).
        preprocess: Per-pixel preparation of both dates.
        extractor: Feature extractor.
        scorer: Scorer fitted on the global sample.
        default_threshold: Threshold spec used when the config gives none (e.g. 'otsu';
            'value:0' for scorers whose score is a signed margin between clusters).
    """

    def __init__(
        self,
        method: str,
        preprocess: PreprocessConfig,
        extractor: FeatureExtractor,
        scorer: Scorer,
        *,
        default_threshold: str = "auto",
    ) -> None:
        self.method = method
        self.default_threshold = default_threshold
        self.preprocess = preprocess
        self.extractor = extractor
        self.scorer = scorer
        self.radiometry = RadiometricNormaliser(preprocess.radiometric)
        self.speckle = SpeckleFilter(preprocess.speckle_window)
        self.log = LogTransform(preprocess.log_transform)
        self.noise = NoiseLevel(preprocess.denoise == "bilateral" and preprocess.smoothing_sigma > 0)

    @property
    def halo(self) -> int:
        """Context pixels a tile needs on each side: the sum over all stages."""
        return preprocess_halo(self.preprocess) + self.extractor.halo + self.scorer.halo

    def _prepare(self, tile: TileArrays) -> FeatureSample:
        return _prepare_block(self.speckle, self.log.offset, self.noise.level, self.preprocess,
                              _map_after(self.radiometry, tile))

    def _extract(self, prepared: Sequence[FeatureSample]) -> list[FeatureSample]:
        """Features of prepared blocks, in one batched call where the extractor offers one."""
        batch_fn = getattr(self.extractor, "extract_batch", None)
        if batch_fn is not None:
            return list(batch_fn(prepared))
        return [self.extractor.extract(p) for p in prepared]

    def prepare_sample(self, samples: Sequence[TileArrays] | SampleBlocks[TileArrays]
                       ) -> list[FeatureSample]:
        """Fit the preprocessing statistics on sample blocks and return the blocks prepared.

        The statistics (radiometric mapping, speckle level, log offset, noise level) are each a
        reduction over the blocks, wherever they are held (:mod:`microchange.blocks`).

        Args:
            samples: Blocks (core + halo of at least :attr:`halo`) spread over the raster: a
                sequence, or :class:`~microchange.blocks.LocalBlocks` /
                :class:`~microchange.blocks.DaskBlocks`.

        Returns:
            The blocks after radiometric mapping, speckle filter, log transform and denoising:
            what the extractor sees.
        """
        blocks = samples if isinstance(samples, LocalBlocks | DaskBlocks) else LocalBlocks(samples)
        self.radiometry.fit_on(blocks)
        mapped = blocks.map(partial(_map_after, self.radiometry))
        del blocks, samples
        self.speckle.fit_on(mapped)
        self.log.fit_on(mapped)
        logged = mapped.map(partial(_speckle_log, self.speckle, self.log.offset, self.preprocess))
        del mapped
        self.noise.fit_on(logged)  # on the values as they enter the denoiser
        return logged.map(partial(_denoise_block, self.noise.level, self.preprocess)).collect()

    def fit(self, samples: Sequence[TileArrays] | SampleBlocks[TileArrays]
            ) -> NDArray[np.float32]:
        """Fit the preprocessing statistics, the extractor and the scorer on sample blocks.

        Args:
            samples: As for :meth:`prepare_sample`.

        Returns:
            1-D float32 scores of the valid core pixels of all samples (to fit a threshold).
        """
        prepared = self.prepare_sample(samples)
        del samples
        self.extractor.fit(prepared)
        features = self._extract(prepared)
        del prepared
        self.scorer.fit(features)
        scores = []
        for f in features:
            s = crop_core(self.scorer.score(f), f.halo)
            v = crop_core(f.valid, f.halo)
            scores.append(s[v])
        if not scores:
            return np.zeros(0, np.float32)
        return np.concatenate(scores).astype(np.float32, copy=False)

    def score(self, tile: TileArrays) -> NDArray[np.float32]:
        """(H, W) float32 scores of a tile's core; NaN where the pixel is invalid."""
        features = self.extractor.extract(self._prepare(tile))
        score = crop_core(self.scorer.score(features), tile.halo).astype(np.float32)
        valid = np.asarray(crop_core(tile.valid, tile.halo), dtype=bool)
        score[~valid] = np.nan
        return score

    def score_batch(
        self, tiles: Sequence[TileArrays], *, keep: int = 0
    ) -> list[NDArray[np.float32]]:
        """Scores of several tiles at once (CNN extractors batch them through the network).

        Extractors that define ``extract_batch(blocks) -> list[FeatureSample]`` get all tiles in
        one call; others are called tile by tile.

        Args:
            tiles: Tiles read with a halo of at least :attr:`halo` + ``keep``.
            keep: Halo pixels to keep around each core (for post-processing).

        Returns:
            (h + 2 keep, w + 2 keep) float32 scores per tile; NaN where invalid.
        """
        features = self._extract([self._prepare(t) for t in tiles])
        out = []
        for tile, feats in zip(tiles, features, strict=True):
            score = crop_core(self.scorer.score(feats), tile.halo - keep).astype(np.float32)
            valid = np.asarray(crop_core(tile.valid, tile.halo - keep), dtype=bool)
            score[~valid] = np.nan
            out.append(score)
        return out

    def fitted_preprocess(self) -> dict[str, Any]:
        """What the fit stage learned of the preprocessing, for run.json."""
        speckle, log = self.speckle.cu2, self.log.offset
        return {"radiometry": self.radiometry.summary(),
                "speckle_cu2": None if speckle is None else [float(v) for v in speckle],
                "log_offset": None if log is None else [float(v) for v in log],
                "noise_level": (None if self.noise.level is None
                                else [float(v) for v in self.noise.level])}

    def fitted_features(self) -> dict[str, Any]:
        """Where the features were computed and, for trained networks, how training went."""
        device = getattr(self.extractor, "device", None)
        out: dict[str, Any] = {"device": "cpu" if device is None else str(device)}
        precision = getattr(self.extractor, "precision", None)
        if precision is not None:
            out["precision"] = precision
        objective = getattr(self.extractor, "objective", None)
        if objective is not None:
            out["objective"] = objective
        training = getattr(self.extractor, "training", None)
        if training:
            out["training"] = training
        return out

    def _parts(self) -> tuple[tuple[str, Any], ...]:
        return (("radiometry", self.radiometry), ("speckle", self.speckle), ("log", self.log),
                ("noise", self.noise), ("extractor", self.extractor), ("scorer", self.scorer))

    def save(self, path: str | Path) -> None:
        """Write the fitted state to ``path`` (.npz, no pickle)."""
        arrays: dict[str, NDArray[np.generic]] = {}
        for prefix, part in self._parts():
            for key, value in part.state().items():
                arrays[f"{prefix}/{key}"] = np.asarray(value)
        meta = {"method": self.method, "preprocess": self.preprocess.model_dump()}
        arrays["meta"] = np.array(json.dumps(meta))
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]

    def load_state(self, path: str | Path) -> None:
        """Restore the fitted state written by :meth:`save` into this detector."""
        with np.load(path, allow_pickle=False) as data:
            for prefix, part in self._parts():
                part.load_state(
                    {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith(prefix + "/")}
                )


def _map_after(radiometry: RadiometricNormaliser, tile: TileArrays) -> TileArrays:
    """The block with AFTER mapped onto BEFORE's radiometry."""
    return TileArrays(tile.before, radiometry.apply(tile.after, tile.valid), tile.valid,
                      tile.halo)


def _speckle_log(speckle: SpeckleFilter, log_offset: NDArray[np.float32] | None,
                 pre: PreprocessConfig, tile: TileArrays) -> TileArrays:
    """Speckle filter and log transform of both dates (AFTER already mapped)."""
    v = tile.valid
    return TileArrays(log_transform(speckle.apply(tile.before, v), v, pre, log_offset=log_offset),
                      log_transform(speckle.apply(tile.after, v), v, pre, log_offset=log_offset),
                      v, tile.halo)


def _denoise_block(noise: NDArray[np.float32] | None, pre: PreprocessConfig,
                   tile: TileArrays) -> FeatureSample:
    """Denoising of both dates (new arrays), after :func:`_speckle_log`."""
    v = tile.valid
    return FeatureSample(
        denoise(tile.before, v, pre.denoise, pre.smoothing_sigma, noise=noise),
        denoise(tile.after, v, pre.denoise, pre.smoothing_sigma, noise=noise),
        v,
        tile.halo,
    )


def _prepare_block(speckle: SpeckleFilter, log_offset: NDArray[np.float32] | None,
                   noise: NDArray[np.float32] | None, pre: PreprocessConfig,
                   tile: TileArrays) -> FeatureSample:
    """Speckle filter, log transform and denoising of both dates (AFTER already mapped)."""
    return _denoise_block(noise, pre, _speckle_log(speckle, log_offset, pre, tile))


def _cva(config: DetectConfig) -> Detector:
    return Detector("cva", config.resolved_preprocess(), BandFeatures(), CvaScorer())


def _pca_kmeans(config: DetectConfig) -> Detector:
    return Detector("pca-kmeans", config.resolved_preprocess(), BandFeatures(),
                    PcaKMeansScorer(seed=config.seed), default_threshold="value:0")


def _backbone(config: DetectConfig) -> Detector:
    from microchange.errors import ConfigError
    from microchange.features.backbone import BackboneFeatures  # torch only for this method

    deep = config.deep
    extractor = BackboneFeatures(deep.backbone, deep.layers, deep.weights, deep.device,
                                 precision=deep.precision, seed=config.seed)
    if config.tile_size % extractor.stride:
        raise ConfigError(f"tile size {config.tile_size} is not a multiple of the backbone's "
                          f"stride {extractor.stride}: use e.g. 512")
    return Detector("backbone", config.resolved_preprocess(), extractor, CvaScorer(),
                    default_threshold="otsu")  # measured: 'auto' misses most change here


def _learned(config: DetectConfig) -> Detector:
    from microchange.features.learned import learned_extractor  # torch only for this method

    # distance + 'auto' when asked for; by default 'hybrid' on optical and 'cluster' on SAR
    # (config.METHOD_SCORERS)
    return Detector("learned", config.resolved_preprocess(), learned_extractor(config),
                    CvaScorer(), default_threshold="auto")


METHODS: dict[str, Callable[[DetectConfig], Detector]] = {
    "cva": _cva,
    "pca-kmeans": _pca_kmeans,
    "backbone": _backbone,
    "learned": _learned,
}
"""Method name -> factory building an unfitted :class:`Detector` from a config."""


def _scorer_factories() -> dict[str, Callable[[DetectConfig], tuple[Scorer, str]]]:
    from microchange.scoring.density import DENSITY_THRESHOLD, DensityScorer
    from microchange.scoring.distance import MahalanobisScorer

    return {
        "distance": lambda c: (CvaScorer(), "auto"),
        "mahalanobis": lambda c: (MahalanobisScorer(seed=c.seed), "auto"),
        "density": lambda c: (DensityScorer(seed=c.seed), DENSITY_THRESHOLD),
        "cluster": lambda c: (PcaKMeansScorer(seed=c.seed), "value:0"),
        "hybrid": lambda c: (PcaKMeansScorer(seed=c.seed, pixel_threshold="auto"), "value:0"),
    }


SCORERS = ("distance", "mahalanobis", "density", "cluster", "hybrid")
"""Names accepted by ``--scorer``: they replace the method's own scorer."""


def method_names() -> tuple[str, ...]:
    """Names accepted by ``--method``."""
    return tuple(sorted(METHODS))


def build_detector(config: DetectConfig) -> Detector:
    """Build the unfitted detector of the config's method and scorer (or its sensor's).

    Raises:
        UnknownMethodError: If the method is not registered; the message lists the names.
    """
    method, scorer = config.resolved_method()
    try:
        factory = METHODS[method]
    except KeyError:
        raise UnknownMethodError(
            f"unknown method {method!r}: choose one of {', '.join(method_names())}"
        ) from None
    detector = factory(config)
    if scorer is not None:
        scorers = _scorer_factories()
        if scorer not in scorers:
            raise UnknownMethodError(
                f"unknown scorer {scorer!r}: choose one of {', '.join(SCORERS)}"
            )
        detector.scorer, detector.default_threshold = scorers[scorer](config)
        detector.method = f"{method}+{scorer}"
    return detector
