"""Feature extractors: a tile of both dates in, per-pixel feature stacks out."""

from microchange.features.bands import BandFeatures
from microchange.features.base import FeatureExtractor, FeatureSample

__all__ = ("BandFeatures", "FeatureExtractor", "FeatureSample")
