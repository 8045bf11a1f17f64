"""Scorers (fitted on a global sample, applied tile by tile) and thresholds."""

from microchange.scoring.base import Scorer
from microchange.scoring.distance import CvaScorer
from microchange.scoring.thresholds import Threshold, fit_threshold, otsu_threshold

__all__ = ("CvaScorer", "Scorer", "Threshold", "fit_threshold", "otsu_threshold")
