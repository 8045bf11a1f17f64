"""The docs' picture of the deep default: a Sentinel-1 flood where classical thresholds fail.

Usage: ``.venv/bin/python benchmarks/figure_default.py [--pair ombria_0178]
[--out benchmarks/figures/default.jpg]`` (needs ``../shared/data``).

One shared pair, run three ways with its sensor family's options: the deep default
(``learned``: a CNN trained on the pair, PCA-KMeans clustering of its residuals), CVA with Otsu,
and PCA-KMeans on the bands. The figure shows both dates, the truth, the deep default's score
(> 0: nearer the changed centroid) and the three change masks with their F1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.datasets import list_pairs, shared_data_root
from microchange.config import DetectConfig
from microchange.evaluation import evaluate_run
from microchange.evaluation.metrics import decode_truth
from microchange.pipeline import run_detection

RUNS = (("learned (default)", {}), ("CVA + Otsu", {"method": "cva", "threshold": "otsu"}),
        ("PCA-KMeans", {"method": "pca-kmeans"}))


def _grey(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as ds:
        x = ds.read(1).astype(np.float64)
    x = np.log10(np.clip(x, 1e-6, None)) if x.min() >= 0 and x.max() < 10 else x
    lo, hi = np.nanpercentile(x, [2, 98])
    return np.clip((x - lo) / max(hi - lo, 1e-12), 0, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pair", default="ombria_0178")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "figures" / "default.jpg"))
    args = parser.parse_args(argv)
    if not shared_data_root().exists():
        print(f"no benchmark data at {shared_data_root()}: set MICROCHANGE_SHARED_DATA")
        return 2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import rasterio

    with tempfile.TemporaryDirectory() as tmp:
        pair = next(p for p in list_pairs(Path(tmp) / "inputs") if p.name == args.pair)
        sensor = "sar" if pair.family == "sar" else "optical"
        panels = [(_grey(pair.before), "BEFORE"), (_grey(pair.after), "AFTER")]
        with rasterio.open(pair.truth) as ds:
            changed, _ = decode_truth(ds.read(1), **pair.truth_kwargs())
        panels.append((changed, f"truth ({changed.mean():.0%} changed)"))
        for label, extra in RUNS:
            out = Path(tmp) / label.replace(" ", "_")
            cfg = DetectConfig(sensor=sensor, bands=pair.bands, **extra)
            run_detection(pair.before, pair.after, out, cfg)
            m = evaluate_run(out, pair.truth, **pair.truth_kwargs())
            print(f"{label}: F1 {m['f1']:.3f}, kappa {m['kappa']:.3f}")
            with rasterio.open(out / "change_mask.tif") as ds:
                mask = ds.read(1) == 1
            if not panels[3:]:
                with rasterio.open(out / "change_score.tif") as ds:
                    panels.append((ds.read(1), "learned: cluster margin"))
            panels.append((mask, f"{label}: F1 {m['f1']:.2f}"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for ax, (img, title) in zip(axes, panels, strict=True):
        if img.dtype != bool and "margin" in title:
            ax.imshow(np.clip(img, -4, 4), cmap="RdBu_r", vmin=-4, vmax=4,
                      interpolation="nearest")
        else:
            ax.imshow(img, cmap="gray", interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=72, pil_kwargs={"quality": 85})
    print(f"figure: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
