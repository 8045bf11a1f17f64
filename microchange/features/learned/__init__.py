"""The 'learned' method's CNN: networks, unsupervised training, calibration, the extractor."""

from microchange.features.learned.extractor import LearnedFeatures, learned_extractor
from microchange.features.learned.networks import ARCHITECTURES, DEFAULT_OBJECTIVE, Architecture

__all__ = ("ARCHITECTURES", "DEFAULT_OBJECTIVE", "Architecture", "LearnedFeatures",
           "learned_extractor")
