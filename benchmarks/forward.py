"""The bare network forward pass of a CNN method: the floor of the deep path (DESIGN.md).

Usage: ``.venv/bin/python benchmarks/forward.py [--method backbone] [--sizes 1024,2048]
[--tile-size 512] [--device auto]``

:func:`bare_forward_mpx_per_s` runs only the method's network (``extractor.network_forward``),
on random float32 batches shaped like the pipeline's: ``batch_tiles`` tiles x 2 dates, each
``tile + 2 * halo`` pixels a side (padded to the network's stride as extraction pads them). No
reading, preprocessing, head, upsampling, scoring or writing is timed, so the ratio of the
pipeline's throughput to this number shows what the rest costs.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from microchange.config import DetectConfig
from microchange.detector import build_detector


def bare_forward_mpx_per_s(method: str, size: int, tile: int = 512, *, bands: int = 4,
                           max_tiles: int = 8, config: DetectConfig | None = None) -> float:
    """Raster megapixels per second of the bare forward pass of ``method``'s network.

    Args:
        method: A method whose extractor has ``network_forward`` (e.g. 'backbone').
        size: Side of the square raster in pixels (sets the number of tiles).
        tile: Tile size of the pipeline run to compare with.
        bands: Input bands (the first convolution is adapted to them).
        max_tiles: Tiles actually run (after one warm-up batch); every full tile has the same
            shape and cost, so the time is scaled to the ceil(size / tile)^2 tiles of the raster.
            Full tiles are used throughout: the pipeline's smaller edge tiles make this a
            slightly conservative floor.
        config: Base configuration (device, backbone, batch_tiles...); ``method`` and
            ``tile_size`` are set from the arguments.

    Returns:
        size * size / seconds / 1e6.

    Raises:
        ValueError: If the method has no network to time.
    """
    import torch

    base = config or DetectConfig()
    cfg = base.model_copy(update={"method": method, "tile_size": tile})
    detector = build_detector(cfg)
    extractor = detector.extractor
    forward = getattr(extractor, "network_forward", None)
    if forward is None:
        raise ValueError(f"method {method!r} has no network (no extractor.network_forward)")
    halo = detector.halo
    stride = int(getattr(extractor, "stride", 1))
    t = min(tile, size)
    lead = (-halo) % stride
    side = math.ceil((lead + t + 2 * halo) / stride) * stride
    per_batch = max(1, cfg.batch_tiles)
    n_tiles = math.ceil(size / tile) ** 2
    device = getattr(extractor, "device", torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2 * per_batch, bands, side, side, generator=gen).to(device)

    def _sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    forward(x[:2])  # warm-up: builds the network for `bands`, first-call allocations
    _sync()
    run = min(n_tiles, max_tiles)
    done = 0
    t0 = time.perf_counter()
    while done < run:
        n = min(per_batch, run - done)
        forward(x[:2 * n])
        done += n
    _sync()
    seconds = (time.perf_counter() - t0) / run * n_tiles
    return size * size / seconds / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="backbone")
    parser.add_argument("--sizes", default="2048")
    parser.add_argument("--tile-size", type=int, default=512, dest="tile")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args(argv)
    cfg = DetectConfig(method=args.method, deep={"device": args.device})
    for size in (int(s) for s in args.sizes.split(",")):
        mpx = bare_forward_mpx_per_s(args.method, size, args.tile, config=cfg)
        print(f"{args.method} {size}x{size} tile {args.tile}: bare forward {mpx:.2f} MPx/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
