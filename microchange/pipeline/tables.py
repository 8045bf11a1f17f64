"""The two GeoParquet tables of a run: one row per tile, one row per changed region."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import shapely

from microchange.io.tables import write_geoparquet
from microchange.pipeline.records import Plan, TileStats
from microchange.scoring.regions import Regions
from microchange.tiling import Tile
from microchange.types import Grid

__all__ = ("write_changes_table", "write_tiles_table")


def _tile_footprint(grid: Grid, tile: Tile) -> Any:
    a = grid.affine
    r0, c0 = tile.row_off, tile.col_off
    r1, c1 = r0 + tile.height, c0 + tile.width
    return shapely.Polygon([a @ (c0, r0), a @ (c1, r0), a @ (c1, r1), a @ (c0, r1)])


def write_tiles_table(path: Path, plan: Plan, stats: list[TileStats]) -> None:
    """``tiles.parquet``: footprint and statistics of every planned tile, in tile order."""
    tiles, grid = plan.tile_list(), plan.output_grid
    cols = {
        "tile_id": pa.array([t.tile_id for t in tiles], pa.int32()),
        "row_off": pa.array([t.row_off for t in tiles], pa.int32()),
        "col_off": pa.array([t.col_off for t in tiles], pa.int32()),
        "height": pa.array([t.height for t in tiles], pa.int32()),
        "width": pa.array([t.width for t in tiles], pa.int32()),
        "n_valid": pa.array([s.n_valid for s in stats], pa.int64()),
        "n_changed": pa.array([s.n_changed for s in stats], pa.int64()),
        "changed_fraction": pa.array([s.changed_fraction for s in stats], pa.float64()),
        "score_mean": pa.array([s.score_mean for s in stats], pa.float64()),
        "score_p95": pa.array([s.score_p95 for s in stats], pa.float64()),
        "score_max": pa.array([s.score_max for s in stats], pa.float64()),
        "changed": pa.array([s.n_changed > 0 for s in stats], pa.bool_()),
        "run_id": pa.array([plan.run_id] * len(tiles), pa.string()),
    }
    write_geoparquet(path, cols, [_tile_footprint(grid, t) for t in tiles], grid.crs_wkt)


def write_changes_table(path: Path, plan: Plan, regions: Regions) -> None:
    """``changes.parquet``: one polygon per connected changed region, whole across tiles."""
    px_area = plan.grid.pixel_area_m2
    px_area = math.nan if px_area is None else float(px_area)
    cols = {
        "region_id": pa.array(np.arange(len(regions)), pa.int64()),
        "area_px": pa.array(regions.area_px, pa.int64()),
        "area_m2": pa.array(regions.area_px * px_area, pa.float64()),
        "score_mean": pa.array(regions.score_mean, pa.float64()),
        "score_max": pa.array(regions.score_max, pa.float64()),
        "tile_id": pa.array(regions.tile_id, pa.int32()),
        "tile_ids": pa.ListArray.from_arrays(pa.array(regions.tile_offsets, pa.int32()),
                                             pa.array(regions.tile_values, pa.int32())),
        "run_id": pa.array([plan.run_id] * len(regions), pa.string()),
    }
    write_geoparquet(path, cols, regions.wkb, plan.output_grid.crs_wkt)
