"""A detector = preprocessing + feature extractor + scorer, built from a method name.

The pipeline only talks to :class:`Detector`: ``fit`` on blocks sampled over the whole raster,
``score`` tile by tile, ``save``/``load`` to move the fitted state between stages as one file.
New methods register a factory in :data:`METHODS`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from microchange.config import DetectConfig, Method, ScorerName, choices
from microchange.errors import ConfigError, UnknownMethodError
from microchange.features.bands import BandFeatures
from microchange.features.base import FeatureExtractor
from microchange.parallel import SampleBlocks
from microchange.preprocess.chain import Preprocessor
from microchange.scoring.base import Scorer
from microchange.scoring.distance import CvaScorer
from microchange.scoring.pca_kmeans import PcaKMeansScorer
from microchange.tiling import crop_core
from microchange.types import PairArrays

__all__ = ("METHODS", "SCORERS", "Detector", "build_detector")


class Detector:
    """Scores change per pixel for tiles of a pair.

    Args:
        method: Registered method name (recorded in the saved state).
        preprocess: Preparation of both dates (fitted with the detector).
        extractor: Feature extractor.
        scorer: Scorer fitted on the global sample.
        default_threshold: Threshold spec used when the config gives none (e.g. 'otsu';
            'value:0' for scorers whose score is a signed margin between clusters).
    """

    def __init__(
        self,
        method: str,
        preprocess: Preprocessor,
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

    @property
    def halo(self) -> int:
        """Context pixels a tile needs on each side: the sum over all stages."""
        return self.preprocess.halo + self.extractor.halo + self.scorer.halo

    def _extract(self, prepared: Sequence[PairArrays]) -> list[PairArrays]:
        """Features of prepared blocks, in one batched call where the extractor offers one."""
        batch_fn = getattr(self.extractor, "extract_batch", None)
        if batch_fn is not None:
            return list(batch_fn(prepared))
        return [self.extractor.extract(p) for p in prepared]

    def fit(self, samples: Sequence[PairArrays] | SampleBlocks[PairArrays]
            ) -> NDArray[np.float32]:
        """Fit the preprocessing statistics, the extractor and the scorer on sample blocks.

        Args:
            samples: Blocks (core + halo of at least :attr:`halo`) spread over the raster
                (:meth:`microchange.preprocess.chain.Preprocessor.fit`).

        Returns:
            1-D float32 scores of the valid core pixels of all samples (to fit a threshold).
        """
        prepared = self.preprocess.fit(samples)
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

    def score(self, tile: PairArrays) -> NDArray[np.float32]:
        """(H, W) float32 scores of a tile's core; NaN where the pixel is invalid."""
        features = self.extractor.extract(self.preprocess.apply(tile))
        score = crop_core(self.scorer.score(features), tile.halo).astype(np.float32)
        valid = np.asarray(crop_core(tile.valid, tile.halo), dtype=bool)
        score[~valid] = np.nan
        return score

    def score_batch(
        self, tiles: Sequence[PairArrays], *, keep: int = 0
    ) -> list[NDArray[np.float32]]:
        """Scores of several tiles at once (CNN extractors batch them through the network).

        Extractors that define ``extract_batch(blocks) -> list[PairArrays]`` get all tiles in
        one call; others are called tile by tile.

        Args:
            tiles: Tiles read with a halo of at least :attr:`halo` + ``keep``.
            keep: Halo pixels to keep around each core (for post-processing).

        Returns:
            (h + 2 keep, w + 2 keep) float32 scores per tile; NaN where invalid.
        """
        features = self._extract([self.preprocess.apply(t) for t in tiles])
        out = []
        for tile, feats in zip(tiles, features, strict=True):
            score = crop_core(self.scorer.score(feats), tile.halo - keep).astype(np.float32)
            valid = np.asarray(crop_core(tile.valid, tile.halo - keep), dtype=bool)
            score[~valid] = np.nan
            out.append(score)
        return out

    def fitted_preprocess(self) -> dict[str, Any]:
        """What the fit stage learned of the preprocessing, for run.json."""
        return self.preprocess.summary()

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
        return (*self.preprocess.parts(), ("extractor", self.extractor), ("scorer", self.scorer))

    def save(self, path: str | Path) -> None:
        """Write the fitted state to ``path`` (.npz, no pickle)."""
        arrays: dict[str, NDArray[np.generic]] = {}
        for prefix, part in self._parts():
            for key, value in part.state().items():
                arrays[f"{prefix}/{key}"] = np.asarray(value)
        meta = {"method": self.method, "preprocess": self.preprocess.cfg.model_dump()}
        arrays["meta"] = np.array(json.dumps(meta))
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)  # type: ignore[arg-type]
            tmp.replace(path)  # a run killed while saving leaves no half-written state
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def load_state(self, path: str | Path) -> None:
        """Restore the fitted state written by :meth:`save` into this detector."""
        with np.load(path, allow_pickle=False) as data:
            for prefix, part in self._parts():
                part.load_state(
                    {k.split("/", 1)[1]: data[k] for k in data.files if k.startswith(prefix + "/")}
                )


def _cva(config: DetectConfig) -> Detector:
    return Detector("cva", Preprocessor(config.preprocess), BandFeatures(), CvaScorer())


def _pca_kmeans(config: DetectConfig) -> Detector:
    return Detector("pca-kmeans", Preprocessor(config.preprocess), BandFeatures(),
                    PcaKMeansScorer(seed=config.seed), default_threshold="value:0")


def _backbone(config: DetectConfig) -> Detector:
    from microchange.features.backbone import BackboneFeatures  # torch only for this method

    deep = config.deep
    extractor = BackboneFeatures(deep.backbone, deep.layers, deep.weights, deep.device,
                                 precision=deep.precision, seed=config.seed)
    if config.tile_size % extractor.stride:
        raise ConfigError(f"tile_size {config.tile_size} is not a multiple of the backbone's "
                          f"stride {extractor.stride}: use e.g. 512")
    return Detector("backbone", Preprocessor(config.preprocess), extractor, CvaScorer(),
                    default_threshold="otsu")  # measured: 'auto' misses most change here


def _learned(config: DetectConfig) -> Detector:
    from microchange.features.learned import learned_extractor  # torch only for this method

    pixel_fpr, spill_ratio = LEARNED_PIXEL_RULES[config.sensor]
    scorer = PcaKMeansScorer(seed=config.seed, pixel_threshold="centroid", pixel_fpr=pixel_fpr,
                             spill_ratio=spill_ratio)
    return Detector("learned", Preprocessor(config.preprocess), learned_extractor(config),
                    scorer, default_threshold="value:0")


LEARNED_PIXEL_RULES: dict[str, tuple[float | None, float | None]] = {
    "optical": (1e-6, 0.5),
    "sar": (None, None),
}
"""Sensor family -> (pixel_fpr, spill_ratio) of the 'learned' scorer (docs: *The deep default*).
Chosen on the synthetic optical demo; on SAR they lowered Bern and the Yellow River coastline
and lost the leave-one-dataset-out choice to PCA-KMeans, so SAR keeps the centroid rules alone."""


METHODS: dict[Method, Callable[[DetectConfig], Detector]] = {
    "cva": _cva,
    "pca-kmeans": _pca_kmeans,
    "backbone": _backbone,
    "learned": _learned,
}
"""Method -> factory building an unfitted :class:`Detector` (every :data:`~microchange.config.Method`)."""


def _density(config: DetectConfig) -> tuple[Scorer, str]:
    from microchange.scoring.density import DENSITY_THRESHOLD, DensityScorer

    return DensityScorer(seed=config.seed), DENSITY_THRESHOLD


def _mahalanobis(config: DetectConfig) -> tuple[Scorer, str]:
    from microchange.scoring.distance import MahalanobisScorer

    return MahalanobisScorer(seed=config.seed), "auto"


SCORERS: dict[ScorerName, Callable[[DetectConfig], tuple[Scorer, str]]] = {
    "distance": lambda c: (CvaScorer(), "auto"),
    "mahalanobis": _mahalanobis,
    "density": _density,
    "cluster": lambda c: (PcaKMeansScorer(seed=c.seed), "value:0"),
    "hybrid": lambda c: (PcaKMeansScorer(seed=c.seed, pixel_threshold="auto"), "value:0"),
}
"""Scorer -> factory of (scorer, default threshold) replacing a method's own scorer."""


def build_detector(config: DetectConfig) -> Detector:
    """Build the unfitted detector of the config's method and scorer.

    Raises:
        UnknownMethodError: If the method or scorer is not registered (a config built without
            validation); the message lists the names.
    """
    method, scorer_name = config.resolved_method()
    factory = METHODS.get(method)
    if factory is None:
        raise UnknownMethodError(f"unknown method {method!r}: choose one of "
                                 f"{', '.join(choices(Method))}")
    detector = factory(config)
    if scorer_name is not None:
        scorer = SCORERS.get(scorer_name)
        if scorer is None:
            raise UnknownMethodError(f"unknown scorer {scorer_name!r}: choose one of "
                                     f"{', '.join(choices(ScorerName))}")
        detector.scorer, detector.default_threshold = scorer(config)
        detector.method = f"{method}+{scorer_name}"
    return detector
