"""The default method gives byte-identical outputs across runs, tile sizes and thread counts (CPU).

For each sensor family's default (``DetectConfig(sensor=...)`` with nothing else: today the
'learned' CNN trained on the pair), on a small scene whose size is no multiple of the tiles.
The rasters are identical byte for byte whatever the tile size and the scoring threads; the
tables too at one tile size, and across tile sizes up to the columns that name tiles or the run
(whose id covers the tile size).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from microchange.config import DetectConfig
from microchange.pipeline import run_detection
from microchange.synthetic import make_scene, write_scene
from microchange.types import CHANGE_MASK, CHANGE_SCORE, CHANGES_TABLE, RUN_MANIFEST, TILES_TABLE

# (name, tile size, scoring threads): one tile; 32 px tiles on 1 and on 2 threads; 48 px tiles
RUNS = (("whole", 512, 1), ("t32", 32, 1), ("t32x2", 32, 2), ("t48x2", 48, 2))
TILE_COLUMNS = ("tile_id", "tile_ids", "run_id")


def _optical(root: Path) -> dict[str, Path]:
    return write_scene(make_scene(height=80, width=72, bands=3, seed=3, n_changes=6), root)


def _sar(root: Path) -> dict[str, Path]:
    """Backscatter-like float32 (linear power) with independent 4-look speckle on each date."""
    scene = make_scene(height=80, width=72, bands=1, seed=21, n_changes=6, noise=0.0)
    rng = np.random.default_rng(0)

    def speckle(x: np.ndarray) -> np.ndarray:
        return (np.clip(x, 0.005, None) ** 2 * 4 * rng.gamma(4.0, 0.25, x.shape)).astype("f4")

    pair = replace(scene, before=speckle(scene.before), after=speckle(scene.after))
    return write_scene(pair, root, dtype="float32")


def _regions(path: Path):
    table = pq.read_table(path)
    return table.drop_columns([c for c in TILE_COLUMNS if c in table.column_names])


@pytest.mark.parametrize("sensor", ["optical", "sar"])
def test_default_method_is_byte_identical_across_tile_sizes_and_threads(tmp_path,
                                                                        sensor) -> None:
    paths = (_optical if sensor == "optical" else _sar)(tmp_path / "in")
    out = {}
    for name, tile, threads in RUNS:
        out[name] = tmp_path / name
        run_detection(paths["before"], paths["after"], out[name],
                      DetectConfig(sensor=sensor, tile_size=tile), threads=threads)
    run = json.loads((out["whole"] / RUN_MANIFEST).read_text())
    assert run["method"] == DetectConfig(sensor=sensor).resolved_method()[0]
    assert run["features"]["device"] == "cpu"
    for name, _, _ in RUNS[1:]:
        for raster in (CHANGE_MASK, CHANGE_SCORE):
            assert (out[name] / raster).read_bytes() == (out["whole"] / raster).read_bytes(), (
                name, raster)
        assert _regions(out[name] / CHANGES_TABLE).equals(_regions(out["whole"] / CHANGES_TABLE))
    for table in (TILES_TABLE, CHANGES_TABLE):  # one tile size, 1 or 2 threads: every byte
        assert (out["t32"] / table).read_bytes() == (out["t32x2"] / table).read_bytes(), table
    assert run["counts"]["regions"] > 0  # something to compare


def test_regions_are_the_same_rows_and_vertices_whatever_the_tiles() -> None:
    """Row order and polygon WKB of changes.parquet do not depend on the tiling."""
    from microchange.scoring.regions import extract_regions
    from microchange.tiling import plan_tiles
    from microchange.types import Grid

    rng = np.random.default_rng(7)
    mask = (rng.random((90, 100)) < 0.35).astype(np.uint8)  # many regions cut by tile edges
    score = rng.random(mask.shape).astype(np.float32)
    grid = Grid(90, 100, (10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0), None)

    def regions(tile_size: int):
        tiles = plan_tiles(90, 100, tile_size=tile_size, halo=0)
        found = extract_regions(tiles, lambda t: (
            mask[t.row_off:t.row_off + t.height, t.col_off:t.col_off + t.width],
            score[t.row_off:t.row_off + t.height, t.col_off:t.col_off + t.width]), grid)
        return found, found.wkb

    whole, wkb = regions(512)
    assert len(whole) > 100
    for tile_size in (32, 48, 17):
        tiled, tiled_wkb = regions(tile_size)
        assert tiled_wkb == wkb, tile_size
        np.testing.assert_array_equal(tiled.area_px, whole.area_px)
        np.testing.assert_array_equal(tiled.score_max, whole.score_max)
        np.testing.assert_allclose(tiled.score_mean, whole.score_mean, rtol=1e-12)
