"""GeoParquet 1.1 tables (WKB geometry + ``geo`` metadata with a PROJJSON CRS).

Written with pyarrow and shapely only; readable by geopandas, DuckDB, GDAL >= 3.8 and QGIS.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from pyproj import CRS as ProjCRS

__all__ = ("write_geoparquet",)


_META_CHUNK = 8192
"""Geometries given as WKB are decoded this many at a time for the metadata."""


def _types_and_bbox(geoms: Sequence[Any]) -> tuple[set[str], list[float]]:
    """Geometry types and [xmin, ymin, xmax, ymax] of the non-empty geometries ([] if none)."""
    present = [g for g in geoms if g is not None and not g.is_empty]
    if not present:  # null geometries (e.g. a failed pair of a catalog) have no bounds
        return set(), []
    arr = np.asarray(shapely.bounds(np.asarray(present, dtype=object)))
    return {g.geom_type for g in present}, [
        float(np.nanmin(arr[:, 0])), float(np.nanmin(arr[:, 1])),
        float(np.nanmax(arr[:, 2])), float(np.nanmax(arr[:, 3]))]


def _geo_metadata(geoms: Sequence[Any], crs_wkt: str | None, *, wkb: bool) -> dict[str, Any]:
    if wkb:  # decoded a chunk at a time: a large table is never held as shapely objects
        types: set[str] = set()
        boxes = []
        for a in range(0, len(geoms), _META_CHUNK):
            chunk = shapely.from_wkb(np.asarray(geoms[a:a + _META_CHUNK], dtype=object))
            t, b = _types_and_bbox(list(chunk))
            types |= t
            boxes += [b] if b else []
        box = np.asarray(boxes, dtype=float).reshape(-1, 4)
        bbox = ([float(box[:, 0].min()), float(box[:, 1].min()), float(box[:, 2].max()),
                 float(box[:, 3].max())] if len(box) else [])
    else:
        types, bbox = _types_and_bbox(geoms)
    column: dict[str, Any] = {"encoding": "WKB", "geometry_types": sorted(types)}
    if bbox:
        column["bbox"] = bbox
    # GeoParquet: a missing "crs" means OGC:CRS84; an explicit null means "unknown".
    column["crs"] = ProjCRS.from_wkt(crs_wkt).to_json_dict() if crs_wkt else None
    return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}


def write_geoparquet(
    path: Path,
    columns: Mapping[str, pa.Array | Sequence[Any] | np.ndarray],
    geometries: Sequence[Any],
    crs_wkt: str | None,
    *,
    schema: pa.Schema | None = None,
) -> None:
    """Write a GeoParquet file (the caller chooses the final name; this writes ``path`` only).

    Args:
        path: File to write.
        columns: Attribute columns, all of the same length as ``geometries``.
        geometries: shapely geometries (one per row) in the CRS given by ``crs_wkt``, or
            their 2-D WKB (``bytes``, as ``shapely.to_wkb(g, output_dimension=2)`` writes it),
            written as given.
        crs_wkt: CRS as WKT, or None when the coordinates are plain pixel positions.
        schema: Optional Arrow schema of the attribute columns (for empty tables).
    """
    is_wkb = bool(geometries) and isinstance(geometries[0], bytes)
    wkb: Sequence[Any] = geometries if is_wkb or not geometries else shapely.to_wkb(
        np.asarray(geometries, dtype=object), output_dimension=2)
    data: dict[str, Any] = {}
    for name, values in columns.items():
        typ = schema.field(name).type if schema is not None else None
        data[name] = values if isinstance(values, pa.Array) else pa.array(values, type=typ)
    data["geometry"] = pa.array(list(wkb), type=pa.binary())
    table = pa.table(data)
    meta = dict(table.schema.metadata or {})
    meta[b"geo"] = json.dumps(_geo_metadata(geometries, crs_wkt, wkb=is_wkb)).encode()
    table = table.replace_schema_metadata(meta)
    pq.write_table(table, path, compression="zstd")
