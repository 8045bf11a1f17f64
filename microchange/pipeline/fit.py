"""Stage 2: fit the detector and the threshold on a sample spread over the whole raster."""

from __future__ import annotations

import json
import logging
import math
import time
from functools import partial
from typing import Any

import numpy as np

from microchange.detector import build_detector
from microchange.errors import InputError, NoOverlapError
from microchange.io.outdir import writing_outputs
from microchange.parallel import DaskBlocks, LocalBlocks, SampleBlocks, available_cpus
from microchange.pipeline.records import FitRecord, Plan, ThresholdRecord
from microchange.sampling import sample_blocks
from microchange.scoring.thresholds import fit_threshold
from microchange.tiling import Tile
from microchange.types import PairArrays, PathLike

__all__ = ("fit_detection", "prepared_sample")

log = logging.getLogger("microchange")


def _jsonable(doc: Any) -> Any:
    """``doc`` as JSON would give it back (NumPy scalars become numbers or strings)."""
    return json.loads(json.dumps(doc, default=str))


def _read_blocks(plan_path: str, blocks: list[Tile]) -> list[PairArrays]:
    """Read a run of sample blocks (one reader for all), dropping those without a valid pixel."""
    out = []
    with Plan.load(plan_path).reader() as pair:
        for block in blocks:
            arrays = pair.read_tile(block)
            if arrays.valid.any():
                out.append(arrays)
    return out


def _load_sample(plan: Plan, halo: int, client: Any = None
                 ) -> tuple[list[Tile], SampleBlocks[PairArrays], str]:
    """The plan's global sample blocks (read here or on ``client``'s cluster) and where."""
    cfg = plan.config
    blocks = sample_blocks(plan.grid.height, plan.grid.width, halo=halo,
                           n_pixels=cfg.sample_pixels, seed=cfg.seed)
    samples: SampleBlocks[PairArrays]
    read = partial(_read_blocks, str(plan.path))
    if client is None:
        samples = LocalBlocks.load(blocks, read, threads=available_cpus())
        where = "local"
    else:
        samples = DaskBlocks.load(blocks, read, client)
        n = len(client.nthreads())
        where = f"dask ({n} worker{'' if n == 1 else 's'})"
    if not len(samples):
        with plan.reader() as pair:
            why = pair.beyond_float32()
        if why is not None:
            raise InputError(why)
        raise NoOverlapError(f"no valid pixel in {plan.before!r} and {plan.after!r} where both "
                             "overlap: check nodata values and footprints")
    return blocks, samples, where


def fit_detection(plan_path: PathLike, *, client: Any = None) -> str:
    """Stage 2: fit the detector and the threshold on a sample spread over the whole raster.

    Args:
        plan_path: Path returned by :func:`~microchange.pipeline.plan_detection`.
        client: A ``distributed.Client``: the sample blocks are read, reduced to the
            preprocessing statistics and prepared on its cluster (:mod:`microchange.parallel`);
            None does it all in this process. The result is the same.

    Returns:
        Path of the fitted detector state (``model.npz``); the threshold is in ``fit.json``.
        A run that resumes an interrupted one whose fit was finished reuses it.

    Raises:
        NoOverlapError: If the sample holds no valid pixel (the inputs are all nodata).
    """
    t0 = time.perf_counter()
    plan = Plan.load(plan_path)
    model = plan.staging / "model.npz"
    if plan.fit_path.exists():  # written after model.npz: the fit of this run id is complete
        return str(model)
    detector = build_detector(plan.config)
    blocks, samples, where = _load_sample(plan, detector.halo, client)
    scores = detector.fit(samples)
    del samples
    threshold = fit_threshold(plan.config.threshold or detector.default_threshold, scores)
    q = np.quantile(scores, [0.5, 0.9, 0.99, 0.999]) if scores.size else [math.nan] * 4
    record = FitRecord(
        threshold=ThresholdRecord(method=threshold.method, value=threshold.value,
                                  n_sample=threshold.n_sample,
                                  detail=_jsonable(threshold.detail)),
        sample={"blocks": len(blocks), "pixels": int(scores.size), "fitted_on": where,
                "score_quantiles": dict(zip(["p50", "p90", "p99", "p99.9"],
                                            [float(v) for v in q], strict=True))},
        fitted_preprocess=_jsonable(detector.fitted_preprocess()),
        features=_jsonable(detector.fitted_features()),
        fit_s=round(time.perf_counter() - t0, 3),
    )
    with writing_outputs(plan.out, plan.staging):
        detector.save(model)
        record.save(plan.fit_path)  # last: its presence marks a complete fit
    log.info("fitted %s on %d sample pixels; threshold %s = %.4g", detector.method, scores.size,
             threshold.method, threshold.value)
    return str(model)


def prepared_sample(plan_path: PathLike) -> list[PairArrays]:
    """The planned pair's global sample, preprocessed as a detection would before its features.

    Used to train the 'learned' extractor on several pairs: each pair is read, and its
    preprocessing fitted, exactly as in :func:`fit_detection`.

    Args:
        plan_path: Path returned by :func:`~microchange.pipeline.plan_detection`.

    Returns:
        The sample blocks after the preprocessing fitted on them.

    Raises:
        NoOverlapError: If the sample holds no valid pixel.
    """
    plan = Plan.load(plan_path)
    detector = build_detector(plan.config)
    _, samples, _ = _load_sample(plan, detector.halo)
    return detector.preprocess.fit(samples)
