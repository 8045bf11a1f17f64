"""The deep methods on CPU and on CUDA, side by side, on one synthetic pair.

Usage: ``.venv/bin/python benchmarks/devices.py [--size 2048] [--methods learned,backbone]
[--devices cpu,cuda] [--work DIR]``

For each method and device, runs :func:`microchange.pipeline.run_detection` end to end (default
configuration, 512-px tiles) on a synthetic 4-band uint16 pair of ``size`` x ``size`` px with
planted changes, and prints seconds, megapixels per second, F1 against the planted truth, the
peak GPU memory and, for CUDA, how well mask and score agree with the CPU's (share of equal mask
pixels; correlation of the scores). On CUDA the networks run under bf16 autocast, so the scores
are close to, not equal with, the CPU's. Reports, never asserts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np
import rasterio
import torch

from microchange.config import DeepConfig, DetectConfig
from microchange.evaluation import confusion_from_arrays, metrics_from_confusion
from microchange.pipeline import run_detection
from microchange.synthetic import make_scene, write_scene


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def _f1(mask: np.ndarray, truth: np.ndarray) -> float:
    c = confusion_from_arrays(mask, truth, np.ones_like(truth))
    return float(metrics_from_confusion(c)["f1"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--methods", default="learned,backbone")
    parser.add_argument("--devices", default="cpu,cuda")
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    devices = [d for d in args.devices.split(",") if d != "cuda" or torch.cuda.is_available()]
    work = Path(args.work or tempfile.mkdtemp(prefix="microchange-devices-"))
    scene = make_scene(height=args.size, width=args.size, seed=0)
    files = write_scene(scene, work / "pair")
    truth = scene.truth.astype(bool)
    mpx = args.size * args.size / 1e6
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"# {args.size}^2 px, torch {torch.__version__}, GPU: {gpu}, "
          f"CPU threads: {torch.get_num_threads()}")
    print("| method | device | seconds | MPx/s | F1 | peak GPU MiB | mask = CPU | score corr |")
    print("|---|---|---|---|---|---|---|---|")
    for method in args.methods.split(","):
        ref: tuple[np.ndarray, np.ndarray] | None = None
        for device in devices:
            out = work / f"{method}_{device}"
            cfg = DetectConfig(method=method, deep=DeepConfig(device=device))  # type: ignore[arg-type]
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            run_detection(files["before"], files["after"], out, cfg)
            dt = time.perf_counter() - t0
            mask, score = _read(out / "change_mask.tif"), _read(out / "change_score.tif")
            peak = (f"{torch.cuda.max_memory_allocated() / 2**20:.0f}"
                    if device == "cuda" else "-")
            agree = corr = "-"
            if device == "cpu":
                ref = (mask, score)
            elif ref is not None:
                agree = f"{(mask == ref[0]).mean():.5f}"
                ok = np.isfinite(score) & np.isfinite(ref[1])
                corr = f"{np.corrcoef(score[ok], ref[1][ok])[0, 1]:.5f}"
            print(f"| {method} | {device} | {dt:.2f} | {mpx / dt:.2f} | {_f1(mask, truth):.3f} "
                  f"| {peak} | {agree} | {corr} |", flush=True)


if __name__ == "__main__":
    main()
