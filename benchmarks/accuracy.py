"""Accuracy of each method on every shared benchmark pair (../shared/data).

Usage: ``.venv/bin/python benchmarks/accuracy.py [--methods cva,pca-kmeans,learned]
[--only NAMES] [any option of microchange detect, e.g. --smoothing-sigma 0 --no-coregister]``

One configuration per sensor family: nothing is tuned per image. Options of ``microchange
detect`` (the same flags, from :mod:`microchange.cli.options`) override the family defaults of
every run; ``--no-preprocess`` switches every preprocessing step off. Per pair it reports P, R,
F1, kappa, IoU, PR-AUC and *best F1* (the F1 of the best single threshold, chosen with the
truth: what the scores allow whatever the threshold rule), then per family and method the mean
and the worst pair. Writes ``benchmarks/results/accuracy.json`` (rendered in the docs) and
``WORK/accuracy.csv``.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.datasets import list_pairs, shared_data_root
from benchmarks.results import write_result
from microchange.cli.options import add_config_options, config_from_args
from microchange.evaluation import evaluate_run
from microchange.pipeline import run_detection

COLUMNS = ("dataset", "family", "method", "precision", "recall", "f1", "kappa", "iou", "pr_auc",
           "best_f1", "seconds")
PER_PAIR = ("sensor", "bands", "method", "scorer")
NO_PREPROCESS = {"coregister": False, "radiometric": "none", "log_transform": False,
                 "speckle_window": 0, "smoothing_sigma": 0.0}


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options: its own, then those of ``microchange detect``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="cva,pca-kmeans,learned",
                        help="comma-separated method names, optionally METHOD+SCORER (e.g. "
                             "cva+mahalanobis); 'default' is each sensor family's default")
    parser.add_argument("--work", default="out/bench", help="work/output folder")
    parser.add_argument("--only", default="", help="comma-separated dataset name filter")
    parser.add_argument("--no-preprocess", action="store_true",
                        help="every preprocessing step off (co-registration, radiometric "
                             "normalisation, log transform, speckle filter, denoising)")
    parser.add_argument("--no-results", action="store_true",
                        help="do not write benchmarks/results/accuracy.json (exploratory runs)")
    add_config_options(parser, exclude=PER_PAIR)
    return parser


def _run_pair(args: argparse.Namespace, pair: Any, method: str, work: Path) -> dict[str, Any]:
    name, _, scorer = method.partition("+")
    base: dict[str, Any] = {"sensor": "sar" if pair.family == "sar" else "optical",
                            "bands": pair.bands, "method": None if name == "default" else name,
                            "scorer": scorer or None}
    if args.no_preprocess:
        base["preprocess"] = dict(NO_PREPROCESS)
    cfg = config_from_args(args, base=base)
    out = work / "runs" / f"{pair.name}-{method}"
    t0 = time.perf_counter()
    run_detection(pair.before, pair.after, out, cfg)
    seconds = time.perf_counter() - t0
    m = evaluate_run(out, pair.truth, **pair.truth_kwargs())
    return {"dataset": pair.name, "family": pair.family, "method": method,
            **{k: m[k] for k in COLUMNS[3:-1]}, "seconds": seconds}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per family and method: pairs, mean F1 / kappa / best F1, and the worst pair's F1."""
    out = []
    for fam in sorted({r["family"] for r in rows}):
        for method in dict.fromkeys(r["method"] for r in rows):
            sel = [r for r in rows if r["family"] == fam and r["method"] == method]
            if not sel:
                continue
            worst = min(sel, key=lambda r: r["f1"])
            out.append({"family": fam, "method": method, "pairs": len(sel),
                        "mean_f1": sum(r["f1"] for r in sel) / len(sel),
                        "mean_kappa": sum(r["kappa"] for r in sel) / len(sel),
                        "mean_best_f1": sum(r["best_f1"] or 0.0 for r in sel) / len(sel),
                        "worst_f1": worst["f1"], "worst_pair": worst["dataset"]})
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not shared_data_root().exists():
        print(f"no benchmark data at {shared_data_root()}: set MICROCHANGE_SHARED_DATA")
        return 2
    work = Path(args.work)
    rows = []
    warnings.simplefilter("ignore")
    for pair in list_pairs(work / "inputs", oscd_folders=True):
        if args.only and not any(s in pair.name for s in args.only.split(",")):
            continue
        for method in args.methods.split(","):
            rows.append(_run_pair(args, pair, method, work))
            r = rows[-1]
            print(f"{r['dataset']:28s} {method:10s} F1 {r['f1']:.3f} kappa {r['kappa']:.3f} "
                  f"({r['seconds']:.1f} s)", file=sys.stderr)
    summary = summarise(rows)
    for s in summary:
        print(f"{s['family']:14s} {s['method']:12s} mean F1 {s['mean_f1']:.3f} kappa "
              f"{s['mean_kappa']:.3f}; worst F1 {s['worst_f1']:.3f} ({s['worst_pair']})")
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "accuracy.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    if not args.no_results:
        path = write_result(
            "accuracy", "Accuracy on the shared datasets",
            [{"caption": "Per sensor family and method: mean over the pairs, and the worst pair",
              "columns": ["family", "method", "pairs", "mean_f1", "mean_kappa", "mean_best_f1",
                          "worst_f1", "worst_pair"], "rows": summary},
             {"caption": "Per pair (best F1: the best single threshold, chosen with the truth)",
              "columns": list(COLUMNS), "rows": rows}],
            notes="One configuration per sensor family; nothing tuned per image.",
            argv=[sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
        print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
