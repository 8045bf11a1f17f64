"""Threshold rules compared offline on the score maps of an accuracy run (no detection rerun).

Usage: ``.venv/bin/python benchmarks/threshold_rules.py --work out/bench --method default
[--families sar,vhr]`` after ``benchmarks/accuracy.py --work out/bench`` (which keeps each run's
``change_score.tif`` under ``WORK/runs/PAIR-METHOD``).

Each rule is fitted on (up to 10^6 of) the finite scores of the whole map, as the global sample
of a small raster is, and scored by F1 against the truth; the mask's post-processing (minimum
mapping unit) is not applied, so figures are close to, not equal to, a detection's. It prints
one row per pair, the family mean and the worst pair of every rule. For exploring decision rules
before implementing one; it writes nothing.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.datasets import list_pairs
from microchange.evaluation.metrics import decode_truth
from microchange.scoring import thresholds as T


def _clipped_otsu(v: np.ndarray, q: float) -> float:
    lo, hi = np.quantile(v, [1 - q, q])
    return T.otsu_threshold(np.clip(v, lo, hi))


RULES: dict[str, Callable[[np.ndarray], float]] = {
    "auto": lambda v: T.auto_threshold(v)[0],
    "otsu": T.otsu_threshold,
    "kittler-illingworth": T.kittler_illingworth_threshold,
    "kmeans": T.kmeans_threshold,
    "otsu-clip99": lambda v: _clipped_otsu(v, 0.99),
    "otsu-sqrt": lambda v: T.otsu_threshold(np.sqrt(np.maximum(v, 0))) ** 2,
    "fpr:0.001": lambda v: T.fpr_threshold(v, 1e-3),
}


def _f1(score: np.ndarray, threshold: float, changed: np.ndarray, labelled: np.ndarray) -> float:
    ok = labelled & np.isfinite(score)
    pred = (score > threshold) & ok
    tp = int(np.sum(pred & changed))
    fp = int(np.sum(pred & ~changed))
    fn = int(np.sum(~pred & changed & ok))
    return 2 * tp / max(2 * tp + fp + fn, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="out/bench", help="work folder of accuracy.py")
    parser.add_argument("--method", default="default", help="method label of the runs")
    parser.add_argument("--families", default="optical,vhr,sar,heterogeneous")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    work = Path(args.work)
    families = args.families.split(",")
    table: dict[str, dict[str, float]] = {}
    for pair in list_pairs(work / "inputs", oscd_folders=True):
        run = work / "runs" / f"{pair.name}-{args.method}" / "change_score.tif"
        if pair.family not in families or not run.is_file():
            continue
        with rasterio.open(run) as src:
            score = src.read(1)
        with rasterio.open(pair.truth) as src:
            changed, labelled = decode_truth(src.read(1), **pair.truth_kwargs())
        v = score[np.isfinite(score)]
        v = v[np.random.default_rng(0).permutation(v.size)[:1_000_000]]
        table[pair.name] = {name: _f1(score, rule(v), changed, labelled)
                            for name, rule in RULES.items()}
        print(f"{pair.name:26s} changed {changed[labelled].mean():5.3f} " + " ".join(
            f"{n} {f:.3f}" for n, f in table[pair.name].items()))
    if not table:
        print(f"no runs of {args.method!r} under {work / 'runs'}: run accuracy.py first")
        return 2
    for label, agg in (("mean", np.mean), ("worst", np.min)):
        print(f"{label:5s} " + " ".join(
            f"{n} {agg([row[n] for row in table.values()]):.3f}" for n in RULES))
    return 0 if all(math.isfinite(x) for row in table.values() for x in row.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
