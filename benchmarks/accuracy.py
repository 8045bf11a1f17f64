"""Accuracy of each method on every shared benchmark pair (../shared/data).

Usage: ``.venv/bin/python benchmarks/accuracy.py [--methods cva,pca-kmeans,learned]
[--only NAMES] [any option of microchange detect, e.g. --smoothing-sigma 0 --no-coregister]``

One configuration per sensor family: nothing is tuned per image. A method is written
``METHOD[+SCORER][@THRESHOLD]`` (``default`` is each family's default; ``cva@otsu`` is CVA with
Otsu's threshold). Options of ``microchange detect`` (the same flags) override the family
defaults of every run; ``--no-preprocess`` switches every preprocessing step off. Per pair it
reports P, R, F1, kappa, IoU, PR-AUC and *best F1* (the F1 of the best single threshold, chosen
with the truth); per family and method the mean and the worst pair; the rule "best family mean"
in-sample and leave-one-dataset-out; and the pairs where ``--check`` collapses against the
baselines (:mod:`benchmarks.selection`). Writes ``benchmarks/results/accuracy.json`` (rendered in
the docs) and ``WORK/accuracy.csv``.
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
from benchmarks.selection import (
    collapse_check,
    family_summary,
    leave_one_dataset_out,
    object_recall_by_dataset,
)
from microchange.cli.options import add_config_options, config_from_args
from microchange.evaluation import evaluate_run
from microchange.evaluation.metrics import SIZE_CLASSES
from microchange.pipeline import run_detection

COLUMNS = ("pair", "dataset", "family", "method", "precision", "recall", "f1", "kappa", "iou",
           "pr_auc", "best_f1", "changed_share", "seconds")
METRICS = ("precision", "recall", "f1", "kappa", "iou", "pr_auc", "best_f1")
PER_PAIR = ("sensor", "bands", "method", "scorer")
NO_PREPROCESS = {"coregister": False, "radiometric": "none", "log_transform": False,
                 "speckle_window": 0, "smoothing_sigma": 0.0}


def build_parser() -> argparse.ArgumentParser:
    """The benchmark's options: its own, then those of ``microchange detect``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="default,cva@otsu,pca-kmeans",
                        help="comma-separated METHOD[+SCORER][@THRESHOLD] (e.g. "
                             "cva+mahalanobis, cva@otsu); 'default' is each family's default")
    parser.add_argument("--check", default="default",
                        help="method whose collapse against the baselines (cva@otsu, "
                             "pca-kmeans) is checked per pair")
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
    spec, _, threshold = method.partition("@")
    name, _, scorer = spec.partition("+")
    base: dict[str, Any] = {"sensor": "sar" if pair.family == "sar" else "optical",
                            "bands": pair.bands, "method": None if name == "default" else name,
                            "scorer": scorer or None}
    if threshold:
        base["threshold"] = threshold
    if args.no_preprocess:
        base["preprocess"] = dict(NO_PREPROCESS)
    cfg = config_from_args(args, base=base)
    out = work / "runs" / f"{pair.name}-{method}"
    t0 = time.perf_counter()
    run_detection(pair.before, pair.after, out, cfg)
    seconds = time.perf_counter() - t0
    m = evaluate_run(out, pair.truth, **pair.truth_kwargs())
    changed = m["tp"] + m["fn"]
    objects = {f"{name}_{k}": m["object_recall"]["by_size"][name][f"n_{k}"]
               for name, _, _ in SIZE_CLASSES for k in ("objects", "detected")}
    return {"pair": pair.name, "dataset": pair.dataset,
            "family": pair.family, "method": method, **{k: m[k] for k in METRICS}, **objects,
            "changed_share": changed / m["n_labelled"] if m["n_labelled"] else 0.0,
            "seconds": seconds}


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
            print(f"{r['pair']:28s} {method:10s} F1 {r['f1']:.3f} kappa {r['kappa']:.3f} "
                  f"({r['seconds']:.1f} s)", file=sys.stderr)
    summary = family_summary(rows)
    for s in summary:
        print(f"{s['family']:14s} {s['method']:12s} mean F1 {s['mean_f1']:.3f} kappa "
              f"{s['mean_kappa']:.3f}; worst F1 {s['worst_f1']:.3f} ({s['worst_pair']})")
    lodo = leave_one_dataset_out(rows, args.methods.split(","))
    for s in lodo:
        print(f"{s['family']:14s} {s['metric']}: in-sample {s['in_sample_choice']} "
              f"{s['in_sample_mean']:.3f}, leave-one-dataset-out {s['lodo_mean']:.3f} "
              f"(worst {s['lodo_worst']:.3f}, {s['lodo_worst_pair']})")
    objects = object_recall_by_dataset(rows)
    for o in objects:
        print(f"objects {o['dataset']:26s} {o['method']:12s} " + " ".join(
            f"{name} {o[name]}" for name, _, _ in SIZE_CLASSES))
    collapse = collapse_check(rows, args.check)
    for c in (c for c in collapse if not c["passes"]):
        print(f"collapse: {args.check} on {c['pair']}: F1 {c['f1']:.3f} < 0.7 x "
              f"{c['baseline']} {c['baseline_f1']:.3f}")
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "accuracy.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    if not args.no_results:
        path = write_result(
            "accuracy", "Accuracy on the shared datasets",
            [{"caption": "Per sensor family and method: mean over the pairs, and the worst pair",
              "columns": ["family", "method", "pairs", "mean_f1", "mean_kappa", "mean_best_f1",
                          "worst_f1", "worst_pair"], "rows": summary},
             {"caption": "The rule 'best family mean' among the methods run, in-sample and "
                         "leave-one-dataset-out (chosen without the dataset it is scored on)",
              "columns": ["family", "metric", "datasets", "in_sample_choice", "in_sample_mean",
                          "lodo_mean", "lodo_worst", "lodo_worst_pair", "lodo_choices"],
              "rows": lodo},
             {"caption": f"Collapse check of '{args.check}': F1 against 0.7 x the better of "
                         "cva@otsu and pca-kmeans, on pairs with >= 1 % change and a baseline "
                         "F1 >= 0.15",
              "columns": ["pair", "family", "changed_share", "baseline", "baseline_f1", "f1",
                          "ratio", "passes"], "rows": collapse},
             {"caption": "Objects found (any pixel detected) by size class and dataset: "
                         "changes under 25 px, 25-100 px and over 100 px of the truth",
              "columns": ["dataset", "method", "lt25", "25to100", "gt100"], "rows": objects},
             {"caption": "Per pair (best F1: the best single threshold, chosen with the truth)",
              "columns": list(COLUMNS), "rows": rows}],
            notes="One configuration per sensor family; nothing tuned per image.",
            argv=[sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
        print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
