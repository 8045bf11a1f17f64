"""Accuracy of each method on every shared benchmark pair (../shared/data).

Usage: ``.venv/bin/python benchmarks/accuracy.py [--methods cva] [--work out/bench]``

Prints a Markdown table (dataset, family, method, P, R, F1, kappa, IoU, PR-AUC, best F1, seconds)
and per-family means, and writes it to ``out/bench/accuracy.md`` and ``.csv``. One configuration
per sensor family: nothing is tuned per image. *best F1* is the F1 of the best single threshold
on the score map, chosen with the truth: it separates what the scores allow from what the
threshold rule makes of them (a method can rank pixels well and still threshold them badly).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.datasets import list_pairs, shared_data_root
from microchange.config import DetectConfig
from microchange.evaluation import evaluate_run
from microchange.pipeline import run_detection
from microchange.preprocess.denoise import DENOISERS
from microchange.preprocess.radiometry import RADIOMETRIC_METHODS

COLUMNS = ("dataset", "family", "method", "precision", "recall", "f1", "kappa", "iou", "pr_auc",
           "best_f1", "seconds")


def _stamp() -> str:
    """Today's date and the current git commit (when run from a clone)."""
    import datetime
    import subprocess

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return f"{datetime.date.today().isoformat()}, commit {commit}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="cva,pca-kmeans,learned,backbone",
                        help="comma-separated method names, optionally METHOD+SCORER "
                             "(e.g. cva,cva+mahalanobis,backbone+density); 'default' is each "
                             "sensor family's default")
    parser.add_argument("--threshold", default=None,
                        help="threshold spec for every run (default: each method's own)")
    parser.add_argument("--work", default="out/bench", help="work/output folder")
    parser.add_argument("--sigma", type=float, default=None,
                        help="override the smoothing sigma of every family (ablation)")
    parser.add_argument("--radiometric", default=None, choices=RADIOMETRIC_METHODS,
                        help="override the radiometric normalisation of every family (ablation)")
    parser.add_argument("--speckle-window", type=int, default=None,
                        help="override the Lee speckle filter window of every family (ablation)")
    parser.add_argument("--denoise", default=None, choices=DENOISERS,
                        help="override the denoising filter of every family (ablation)")
    parser.add_argument("--coregister", default=None, choices=("off", "global", "local"),
                        help="override the co-registration of every family (ablation)")
    parser.add_argument("--log-transform", default=None, choices=("on", "off"),
                        help="override the log transform of every family (ablation)")
    parser.add_argument("--min-region-px", type=int, default=None,
                        help="override the minimum mapping unit of every family (ablation)")
    parser.add_argument("--no-preprocess", action="store_true",
                        help="switch every preprocessing step off: co-registration, radiometric "
                             "normalisation, log transform, speckle filter, denoising (ablation "
                             "baseline)")
    parser.add_argument("--only", default="", help="comma-separated dataset name filter")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the global sample, training and clustering (robustness)")
    parser.add_argument("--objective", default=None,
                        help="objective of the 'learned' method (default: per sensor family)")
    args = parser.parse_args(argv)
    if not shared_data_root().exists():
        print(f"no benchmark data at {shared_data_root()}: set MICROCHANGE_SHARED_DATA")
        return 2
    work = Path(args.work)
    rows = []
    warnings.simplefilter("ignore")
    for pair in list_pairs(work / "inputs", oscd_folders=True):
        if args.only and not any(s in pair.name for s in args.only.split(",")):
            continue
        sensor = "sar" if pair.family == "sar" else "optical"
        for method in args.methods.split(","):
            out = work / "runs" / f"{pair.name}-{method}"
            t0 = time.perf_counter()
            name, _, scorer = method.partition("+")  # e.g. "backbone+density"
            cfg = DetectConfig(method=None if name == "default" else name, sensor=sensor,
                               scorer=scorer or None,
                               threshold=args.threshold, bands=pair.bands, seed=args.seed)
            if args.objective is not None:
                cfg = cfg.model_copy(update={"deep": cfg.deep.model_copy(
                    update={"objective": args.objective})})
            overrides = {k: v for k, v in (("smoothing_sigma", args.sigma),
                                           ("radiometric", args.radiometric),
                                           ("speckle_window", args.speckle_window),
                                           ("denoise", args.denoise))
                         if v is not None}
            if args.log_transform is not None:
                overrides["log_transform"] = args.log_transform == "on"
            if args.coregister is not None:
                overrides.update({"coregister": args.coregister != "off"}
                                 | ({"coregister_cell": 0} if args.coregister == "global" else {}))
            if args.no_preprocess:
                overrides = {"coregister": False, "radiometric": "none", "log_transform": False,
                             "speckle_window": 0, "smoothing_sigma": 0.0, **overrides}
            if overrides:
                pre = cfg.resolved_preprocess().model_copy(update=overrides)
                cfg = cfg.model_copy(update={"preprocess": pre})
            if args.min_region_px is not None:
                post = cfg.resolved_postprocess().model_copy(
                    update={"min_region_px": args.min_region_px})
                cfg = cfg.model_copy(update={"postprocess": post})
            run_detection(pair.before, pair.after, out, cfg)
            seconds = time.perf_counter() - t0
            m = evaluate_run(out, pair.truth, **pair.truth_kwargs())
            rows.append({"dataset": pair.name, "family": pair.family, "method": method,
                         **{k: m[k] for k in ("precision", "recall", "f1", "kappa", "iou", "pr_auc",
                                              "best_f1")},
                         "seconds": seconds})
            r = rows[-1]
            print(f"{r['dataset']:28s} {method:10s} F1 {r['f1']:.3f} kappa {r['kappa']:.3f} "
                  f"({seconds:.1f} s)", file=sys.stderr)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(
            f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in COLUMNS) + " |")
    lines += ["", "| family | method | mean F1 | mean kappa | mean best F1 |", "|---|---|---|---|---|"]
    for fam in sorted({r["family"] for r in rows}):
        for method in args.methods.split(","):
            sel = [r for r in rows if r["family"] == fam and r["method"] == method]
            if sel:
                f1 = sum(r["f1"] for r in sel) / len(sel)
                ka = sum(r["kappa"] for r in sel) / len(sel)
                best = sum(r["best_f1"] or 0.0 for r in sel) / len(sel)
                lines.append(f"| {fam} | {method} | {f1:.3f} | {ka:.3f} | {best:.3f} |")
    flags = "".join(f" --{k} {v}" for k, v in (("threshold", args.threshold),
                                              ("sigma", args.sigma),
                                              ("radiometric", args.radiometric),
                                              ("speckle-window", args.speckle_window),
                                              ("denoise", args.denoise),
                                              ("coregister", args.coregister),
                                              ("log-transform", args.log_transform),
                                              ("min-region-px", args.min_region_px),
                                              ("only", args.only or None)) if v is not None)
    flags += " --no-preprocess" if args.no_preprocess else ""
    lines.insert(0, f"Generated {_stamp()} on {os.cpu_count()} CPU cores by "
                    f"`python benchmarks/accuracy.py --methods {args.methods}{flags}`\n")
    table = "\n".join(lines)
    print(table)
    work.mkdir(parents=True, exist_ok=True)
    (work / "accuracy.md").write_text(table + "\n")
    with open(work / "accuracy.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
