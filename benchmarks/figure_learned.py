"""The README's picture of the 'learned' method: what cross-prediction removes that CVA keeps.

Usage: ``.venv/bin/python benchmarks/figure_learned.py [--out benchmarks/figures/learned.jpg]``

A synthetic 4-band scene (:func:`microchange.synthetic.make_scene`, 30 implanted changes) whose
AFTER date also differs everywhere by a *cross-band* nuisance, as a change of season or sensor
would: each band is mixed with its neighbour and bent by a per-band gamma. Per-band histogram
matching (CVA's radiometric normalisation) cannot undo a mixing of bands; the networks of
``learned`` can, because they predict each date from all bands of the other. Both methods run
with their defaults; the figure shows both dates, the implanted changes and both score maps, with
F1 and PR-AUC against the truth in the titles.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from microchange.config import DetectConfig
from microchange.evaluation import evaluate_run
from microchange.pipeline import run_detection
from microchange.synthetic import make_scene, write_scene


def _rgb(x: np.ndarray) -> np.ndarray:
    """Bands 3, 2, 1 (red, green, blue) stretched to their 2-98 % range."""
    rgb = np.stack([x[2], x[1], x[0]], axis=-1).astype(np.float64)
    lo, hi = np.percentile(rgb, [2, 98])
    return np.clip((rgb - lo) / (hi - lo), 0, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "figures" / "learned.jpg"))
    parser.add_argument("--size", type=int, default=384)
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scene = make_scene(height=args.size, width=args.size, n_changes=30, seed=5, shift_px=0.0)
    a = np.clip(scene.after, 1e-4, None)
    mixed = 0.55 * a + 0.45 * np.roll(a, 1, axis=0)  # each band mixed with its neighbour
    gamma = np.array([0.8, 1.2, 0.9, 1.15], np.float32)[:, None, None]
    after = (1.05 * np.power(mixed, gamma)).astype(np.float32)
    nuisance = replace(scene, after=after)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_scene(nuisance, Path(tmp) / "scene", dtype="uint16")
        maps, titles = [], []
        for method in ("cva", "learned"):
            out = Path(tmp) / method
            run_detection(paths["before"], paths["after"], out, DetectConfig(method=method))
            m = evaluate_run(out, paths["truth"], changed_values=(1,))
            import rasterio

            with rasterio.open(out / "change_score.tif") as ds:
                maps.append(ds.read(1))
            titles.append(f"{method} score: F1 {m['f1']:.2f}, PR-AUC {m['pr_auc']:.2f}")
            print(f"{method}: F1 {m['f1']:.3f}, PR-AUC {m['pr_auc']:.3f}, best F1 "
                  f"{m['best_f1']:.3f}")
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.8))
    panels = [(_rgb(scene.before), "BEFORE"), (_rgb(after), "AFTER (bands mixed, gamma)"),
              (scene.truth, "implanted changes"), *zip(maps, titles, strict=True)]
    for ax, (img, title) in zip(axes, panels, strict=True):
        if img.ndim == 2 and img.dtype != bool and title != "implanted changes":
            img = np.clip(img / np.nanpercentile(img, 99.5), 0, 1)
        ax.imshow(img, cmap="magma" if img.ndim == 2 else None, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=72, pil_kwargs={"quality": 85})
    print(f"figure: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
