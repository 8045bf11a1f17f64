"""Preprocessing ablation: each step switched off or changed, one column per sensor family.

Usage: ``.venv/bin/python benchmarks/ablation.py [--methods default] [--work out/ablation]
[--only NAMES]``

Runs :mod:`benchmarks.accuracy` once per variant (the defaults, every preprocessing step off,
co-registration off or global only, no radiometric normalisation, no speckle filter, no log
transform, no denoising, the median and bilateral denoisers, a 1 px minimum mapping unit) with
the given methods (default: each sensor family's default) and the product's own flags, and
prints the family mean F1 / kappa of every variant as a Markdown table, also written to
``WORK/ablation.md``. Reports, never asserts.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import accuracy

VARIANTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("defaults", ()),
    ("every preprocessing step off", ("--no-preprocess",)),
    ("co-registration off", ("--no-coregister",)),
    ("co-registration global only", ("--coregister-cell", "0")),
    ("radiometric normalisation none", ("--radiometric", "none")),
    ("speckle filter off", ("--speckle-window", "0")),
    ("log transform off", ("--no-log-transform",)),
    ("denoising off", ("--smoothing-sigma", "0")),
    ("median denoiser", ("--denoise", "median")),
    ("bilateral denoiser", ("--denoise", "bilateral")),
    ("minimum mapping unit 1 px", ("--min-region-px", "1")),
)
FAMILIES = ("optical", "sar", "heterogeneous")


def _means(csv_path: Path, method: str) -> dict[str, tuple[float, float]]:
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    with open(csv_path, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["method"] == method:
                s = sums[row["family"]]
                s[0] += float(row["f1"])
                s[1] += float(row["kappa"])
                s[2] += 1
    return {fam: (s[0] / s[2], s[1] / s[2]) for fam, s in sums.items() if s[2]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="default", help="methods, as for accuracy.py")
    parser.add_argument("--work", default="out/ablation", help="work/output folder")
    parser.add_argument("--only", default="", help="comma-separated dataset name filter")
    args = parser.parse_args(argv)
    work = Path(args.work)
    results = []
    for i, (label, flags) in enumerate(VARIANTS):
        run_dir = work / f"v{i:02d}"
        argv_i = ["--methods", args.methods, "--work", str(run_dir), "--no-results", *flags]
        if args.only:
            argv_i += ["--only", args.only]
        code = accuracy.main(argv_i)
        if code:
            return code
        results.append((label, " ".join(flags), run_dir / "accuracy.csv"))
    lines = [(f"`python benchmarks/ablation.py --methods {args.methods}`: family mean F1 / "
              "kappa\n")]
    for method in args.methods.split(","):
        lines += [f"| {method}: variant | flag | " + " | ".join(FAMILIES) + " |",
                  "|---|---|" + "---|" * len(FAMILIES)]
        for label, flags, path in results:
            m = _means(path, method)
            cells = [f"{m[f][0]:.3f} / {m[f][1]:.3f}" if f in m else "-" for f in FAMILIES]
            lines.append(f"| {label} | `{flags or '-'}` | " + " | ".join(cells) + " |")
        lines.append("")
    table = "\n".join(lines)
    print(table)
    work.mkdir(parents=True, exist_ok=True)
    (work / "ablation.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
