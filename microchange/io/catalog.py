"""Files of a catalog of areas watched over time: the catalog document, the summary, the STAC.

Reads a catalog file (YAML, JSON or a STAC ItemCollection) as a plain document; the entries are
checked by :mod:`microchange.catalog`. Writes what a catalog run produces: one GeoParquet row per
pair (``summary``) and a self-contained STAC catalog of the change maps, both atomically.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import pyarrow as pa
import pystac
import shapely
import yaml
from pydantic import BaseModel, ConfigDict, Field
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError, ProjError
from pystac.layout import CustomLayoutStrategy
from pystac.stac_io import DefaultStacIO

from microchange.errors import InputError, InputNotFoundError
from microchange.io.manifest import read_run_manifest, write_text_atomic
from microchange.io.tables import write_geoparquet
from microchange.types import (
    CHANGE_MASK,
    CHANGE_SCORE,
    CHANGES_TABLE,
    OUTPUT_NAMES,
    RUN_MANIFEST,
    TILES_TABLE,
    PathLike,
)

__all__ = ("CATALOG_NAME", "STATUSES", "PairResult", "PairStatus", "footprint_lonlat",
           "pair_result_from_run", "read_catalog_document", "write_catalog_summary",
           "write_stac_catalog")

log = logging.getLogger("microchange")

PairStatus = Literal["done", "skipped", "failed"]
STATUSES: Final = ("done", "skipped", "failed")
CATALOG_NAME: Final = "catalog.json"
"""The root of the STAC catalog of a catalog run, in its output folder."""
_LONLAT: Final = CRS.from_user_input("OGC:CRS84")
_EDGE_POINTS: Final = 16
_PARQUET: Final = "application/vnd.apache.parquet"
# key -> (file, media type, roles, title)
_ASSETS: Final = {
    "change_mask": (CHANGE_MASK, pystac.MediaType.COG, ["data"],
                    "Change mask: 1 changed, 0 unchanged, 255 nodata"),
    "change_score": (CHANGE_SCORE, pystac.MediaType.COG, ["data"],
                     "Change score: higher is more change, NaN nodata"),
    "tiles": (TILES_TABLE, _PARQUET, ["metadata"], "Per-tile statistics (GeoParquet)"),
    "changes": (CHANGES_TABLE, _PARQUET, ["data"], "Changed regions as polygons (GeoParquet)"),
    "run": (RUN_MANIFEST, pystac.MediaType.JSON, ["metadata"],
            "Run manifest: parameters, inputs, versions, timings"),
}


def read_catalog_document(path: PathLike) -> Any:
    """Parse a catalog file as JSON (``.json``, ``.geojson``) or YAML (any other name).

    Raises:
        InputNotFoundError: If the file does not exist.
        InputError: If it is not valid UTF-8 JSON/YAML (the message names the file and the fix).
    """
    p = Path(path)
    if not p.is_file():
        raise InputNotFoundError(
            f"catalog {str(p)!r} not found: give the path of a YAML/JSON catalog file (with an "
            "'areas' list) or of a STAC ItemCollection")
    try:
        text = p.read_text(encoding="utf-8")
        if p.suffix.lower() in (".json", ".geojson"):
            return json.loads(text)
        return yaml.safe_load(text)
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = "JSON" if p.suffix.lower() in (".json", ".geojson") else "YAML"
        raise InputError(f"catalog {str(p)!r} is not valid {kind} ({exc}): fix the syntax at the "
                         "place shown, or give a .json/.yaml file") from exc


def footprint_lonlat(grid: Mapping[str, Any]) -> dict[str, Any] | None:
    """The outline of a run's grid in OGC:CRS84 lon/lat, as a GeoJSON polygon.

    Args:
        grid: run.json's ``grid``: ``height``, ``width``, ``transform`` (the six affine
            coefficients a, b, c, d, e, f of pixel -> CRS coordinates) and ``crs_wkt``.

    Returns:
        The polygon (edges densified, so that curved edges in lon/lat are followed), or None
        when the grid has no CRS or cannot be read or transformed.
    """
    try:
        height, width = int(grid["height"]), int(grid["width"])
        a, b, c, d, e, f = (float(v) for v in grid["transform"])
        wkt = grid.get("crs_wkt")
        if not wkt or height <= 0 or width <= 0:
            return None
        to_lonlat = Transformer.from_crs(CRS.from_wkt(str(wkt)), _LONLAT, always_xy=True)
    except (KeyError, TypeError, ValueError, CRSError, ProjError):
        return None
    t = np.linspace(0.0, 1.0, _EDGE_POINTS + 1)[:-1]
    cols = np.concatenate([t * width, np.full_like(t, width), (1 - t) * width, np.zeros_like(t)])
    rows = np.concatenate([np.zeros_like(t), t * height, np.full_like(t, height), (1 - t) * height])
    try:
        lon, lat = to_lonlat.transform(a * cols + b * rows + c, d * cols + e * rows + f)
    except ProjError:
        return None
    if not (np.all(np.isfinite(lon)) and np.all(np.isfinite(lat))):
        return None
    ring = shapely.Polygon(np.column_stack([lon, lat]))
    polygon = shapely.geometry.polygon.orient(ring, sign=1.0)
    doc: dict[str, Any] = json.loads(shapely.to_geojson(polygon))
    return doc


class PairResult(BaseModel):
    """What a catalog run did with one pair: one row of the summary, one STAC item."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    area: str = Field(description="Name of the area of interest.")
    before_date: date = Field(description="Date of the earlier acquisition.")
    after_date: date = Field(description="Date of the later acquisition.")
    before: str = Field(description="Path or URI of the earlier raster.")
    after: str = Field(description="Path or URI of the later raster.")
    status: PairStatus = Field(
        description="done: detected in this run; skipped: complete outputs with the same inputs "
                    "and parameters were already there; failed: the detection raised.")
    changed_area_m2: float | None = Field(
        default=None, description="Changed area in square metres; None when unknown.")
    changed_fraction: float | None = Field(
        default=None, description="Changed share of the valid pixels; None when unknown.")
    regions: int | None = Field(default=None, description="Changed regions; None when unknown.")
    seconds: float = Field(default=0.0, ge=0, description="Time this run spent on the pair.")
    error: str | None = Field(default=None, description="Why the pair failed, else None.")
    out: str = Field(description="Absolute path of the pair's output folder.")
    flow_run: str | None = Field(
        default=None, description="Id of the (sub)flow run that processed the pair, if any.")
    footprint: dict[str, Any] | None = Field(
        default=None, description="Outline of the pair's grid as a GeoJSON polygon in OGC:CRS84 "
                                  "lon/lat; None without a run.json or a CRS.")


def _number(counts: Mapping[str, Any], key: str) -> float | None:
    value = counts.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def pair_result_from_run(out: PathLike, *, area: str, before_date: date, after_date: date,
                         before: str, after: str, status: PairStatus, seconds: float = 0.0,
                         error: str | None = None, flow_run: str | None = None) -> PairResult:
    """Build the :class:`PairResult` of a pair from its folder's ``run.json`` (if any).

    Counts come from run.json's ``counts`` unless the pair failed (outputs still there are those
    of an earlier run); the footprint comes from its ``grid`` whenever run.json is readable.
    """
    folder = Path(out).resolve()
    run = read_run_manifest(folder)
    found = run.get("counts") if status != "failed" else None
    counts: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    grid = run.get("grid")
    regions = _number(counts, "regions")
    return PairResult(
        area=area, before_date=before_date, after_date=after_date, before=before, after=after,
        status=status, changed_area_m2=_number(counts, "changed_area_m2"),
        changed_fraction=_number(counts, "changed_fraction"),
        regions=None if regions is None else int(regions), seconds=max(0.0, float(seconds)),
        error=error, out=str(folder), flow_run=flow_run,
        footprint=footprint_lonlat(grid) if isinstance(grid, Mapping) else None)


_SUMMARY_SCHEMA: Final = pa.schema([
    ("area", pa.string()), ("before_date", pa.date32()), ("after_date", pa.date32()),
    ("status", pa.string()), ("changed_area_m2", pa.float64()),
    ("changed_fraction", pa.float64()), ("regions", pa.int64()), ("seconds", pa.float64()),
    ("error", pa.string()), ("out", pa.string()), ("flow_run", pa.string()),
    ("before", pa.string()), ("after", pa.string()),
])


def write_catalog_summary(path: PathLike, rows: Sequence[PairResult]) -> Path:
    """Write the summary of a catalog run: a GeoParquet file, one row per pair.

    Columns: area, before_date, after_date (date32), status, changed_area_m2,
    changed_fraction, regions, seconds, error, out, flow_run, before, after, and the pair's
    footprint as geometry in OGC:CRS84 (null when the pair never produced a run.json or its
    grid has no CRS). The file is written under a temporary name and renamed: readers never
    see half of it.

    Args:
        path: The GeoParquet file to write (its folder is created if missing).
        rows: One result per pair, in the order of the rows.

    Returns:
        The path written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    columns = {name: [getattr(r, name) for r in rows] for name in _SUMMARY_SCHEMA.names}
    geometries = [shapely.geometry.shape(r.footprint) if r.footprint else None for r in rows]
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write_geoparquet(tmp, columns, geometries, _LONLAT.to_wkt(), schema=_SUMMARY_SCHEMA)
        tmp.replace(target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


class _AtomicStacIO(DefaultStacIO):
    """Writes each STAC document under a temporary name, then renames it."""

    def write_text_to_href(self, href: str, txt: str) -> None:
        """Write ``txt`` to the local file ``href`` (its folder created if missing)."""
        path = Path(href)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, txt)


def _item_id(r: PairResult) -> str:
    return f"{r.area}-{r.before_date.isoformat()}_{r.after_date.isoformat()}"


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def _stac_item(r: PairResult) -> pystac.Item | None:
    """The STAC item of a pair whose five outputs are in its folder, else None."""
    folder = Path(r.out)
    if not all((folder / name).is_file() for name in OUTPUT_NAMES):
        return None
    run = read_run_manifest(folder)
    found = run.get("counts")
    counts: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    grid = run.get("grid")
    geometry = footprint_lonlat(grid) if isinstance(grid, Mapping) else None
    bbox = [float(v) for v in shapely.bounds(shapely.geometry.shape(geometry))] if geometry \
        else None
    regions = _number(counts, "regions")
    properties = {
        "changed_fraction": _number(counts, "changed_fraction"),
        "changed_area_m2": _number(counts, "changed_area_m2"),
        "regions": None if regions is None else int(regions),
        "microchange:area": r.area, "microchange:method": run.get("method"),
        "microchange:scorer": run.get("scorer"), "microchange:run_id": run.get("run_id"),
        "microchange:finished": run.get("finished"),
        "microchange:before": r.before, "microchange:after": r.after,
    }
    item = pystac.Item(id=_item_id(r), geometry=geometry, bbox=bbox,
                       datetime=_midnight(r.after_date), properties=properties,
                       start_datetime=_midnight(r.before_date),
                       end_datetime=_midnight(r.after_date))
    for key, (name, media, roles, title) in _ASSETS.items():
        item.add_asset(key, pystac.Asset(href=str(folder / name), media_type=str(media),
                                         roles=list(roles), title=title))
    return item


def _collection(area: str, items: list[pystac.Item]) -> pystac.Collection:
    """One collection per area; its extent covers its items' footprints and dates."""
    boxes = [i.bbox for i in items if i.bbox]
    bbox = ([min(b[0] for b in boxes), min(b[1] for b in boxes),
             max(b[2] for b in boxes), max(b[3] for b in boxes)] if boxes
            else [-180.0, -90.0, 180.0, 90.0])
    starts = [i.common_metadata.start_datetime for i in items]
    ends = [i.common_metadata.end_datetime for i in items]
    extent = pystac.Extent(
        pystac.SpatialExtent([bbox]),
        pystac.TemporalExtent([[min(s for s in starts if s), max(e for e in ends if e)]]))
    collection = pystac.Collection(
        id=area, title=f"Changes in {area}", extent=extent, license="other",
        description=f"microchange change maps of the area {area!r}, one item per date pair.")
    for item in sorted(items, key=lambda i: i.id):
        collection.add_item(item)
    return collection


def _linked_files(root: Path) -> set[Path]:
    """The STAC documents reachable from an earlier ``catalog.json`` (child and item links)."""
    seen: set[Path] = set()
    todo = [root]
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file():
            continue
        seen.add(path)
        try:
            links = json.loads(path.read_text()).get("links", [])
            todo += [(path.parent / str(link["href"])).resolve() for link in links
                     if link.get("rel") in ("child", "item") and "://" not in str(link["href"])]
        except (OSError, ValueError, AttributeError, KeyError, TypeError):
            continue  # a damaged document: it is replaced or removed below
    return seen


def write_stac_catalog(out_dir: PathLike, results: Sequence[PairResult]) -> Path:
    """Write ``OUT/catalog.json``: a self-contained STAC catalog of the pairs' change maps.

    One collection per area (``OUT/<area>/collection.json``), one item per pair whose outputs
    are all in its folder (``OUT/<area>/<before>_<after>/<area>-<before>_<after>.json``), with
    relative asset hrefs. Built from ``results`` alone (pass every pair, the skipped ones
    too); documents of an earlier catalog that are no longer part of it are removed after the
    new one is written, every document atomically and ``catalog.json`` last.

    Args:
        out_dir: The catalog run's output folder.
        results: Every pair of the run (done, skipped and failed); pairs without all five
            outputs in their folder get no item.

    Returns:
        The path of ``catalog.json``.
    """
    out = Path(out_dir).resolve()
    root_path = out / CATALOG_NAME
    previous = _linked_files(root_path)
    by_area: dict[str, list[pystac.Item]] = defaultdict(list)
    for r in results:
        if (item := _stac_item(r)) is not None:
            by_area[r.area].append(item)
    catalog = pystac.Catalog(
        id="microchange", title="microchange change maps",
        description="microchange change maps: one collection per area of interest, one item "
                    "per pair of acquisition dates.")
    for area in sorted(by_area):
        catalog.add_child(_collection(area, by_area[area]))
    layout = CustomLayoutStrategy(
        collection_func=lambda col, parent_dir, is_root: str(out / col.id / "collection.json"),
        item_func=lambda item, parent_dir: str(
            out / item.properties["microchange:area"]
            / item.id[len(item.properties["microchange:area"]) + 1:] / f"{item.id}.json"))
    catalog.normalize_hrefs(str(out), strategy=layout)
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED, stac_io=_AtomicStacIO())
    objects = [*catalog.get_children(), *catalog.get_items(recursive=True)]
    written = {root_path} | {Path(o.get_self_href() or "").resolve() for o in objects}
    for stale in previous - written:
        if stale.is_relative_to(out):
            stale.unlink(missing_ok=True)
            log.info("removed %s: no longer part of the catalog", stale)
    return root_path
