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


def _geo_metadata(geoms: Sequence[Any], crs_wkt: str | None) -> dict[str, Any]:
    present = [g for g in geoms if g is not None and not g.is_empty]
    types = sorted({g.geom_type for g in present})
    if present:  # null geometries (e.g. a failed pair of a catalog) have no bounds
        arr = np.asarray(shapely.bounds(np.asarray(present, dtype=object)))
        bbox = [
            float(np.nanmin(arr[:, 0])),
            float(np.nanmin(arr[:, 1])),
            float(np.nanmax(arr[:, 2])),
            float(np.nanmax(arr[:, 3])),
        ]
    else:
        bbox = []
    column: dict[str, Any] = {"encoding": "WKB", "geometry_types": types}
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
        geometries: shapely geometries (one per row) in the CRS given by ``crs_wkt``.
        crs_wkt: CRS as WKT, or None when the coordinates are plain pixel positions.
        schema: Optional Arrow schema of the attribute columns (for empty tables).
    """
    wkb = shapely.to_wkb(np.asarray(geometries, dtype=object), output_dimension=2) if geometries \
        else np.asarray([], dtype=object)
    data: dict[str, Any] = {}
    for name, values in columns.items():
        typ = schema.field(name).type if schema is not None else None
        data[name] = values if isinstance(values, pa.Array) else pa.array(values, type=typ)
    data["geometry"] = pa.array(list(wkb), type=pa.binary())
    table = pa.table(data)
    meta = dict(table.schema.metadata or {})
    meta[b"geo"] = json.dumps(_geo_metadata(list(geometries), crs_wkt)).encode()
    table = table.replace_schema_metadata(meta)
    pq.write_table(table, path, compression="zstd")
