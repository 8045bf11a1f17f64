"""microchange: find small changes between two rasters of the same place.

The core library: reading and aligning rasters, tiling with a halo, features, globally fitted
scorers and thresholds, and writers for COG/GeoParquet outputs. It never imports Prefect; the
``microchange.tasks`` and ``microchange.flows`` packages wrap these functions for orchestration
and ``microchange.cli`` is the command line.
"""

from microchange.config import DetectConfig, PreprocessConfig
from microchange.detector import METHODS, Detector, build_detector
from microchange.errors import InputError, MicrochangeError
from microchange.pipeline import (
    finalise_detection,
    fit_detection,
    plan_detection,
    run_detection,
    score_tiles,
    tile_batches,
)

__version__ = "0.1.0"

__all__ = (
    "METHODS",
    "DetectConfig",
    "Detector",
    "InputError",
    "MicrochangeError",
    "PreprocessConfig",
    "__version__",
    "build_detector",
    "finalise_detection",
    "fit_detection",
    "plan_detection",
    "run_detection",
    "score_tiles",
    "tile_batches",
)
