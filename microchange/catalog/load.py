"""Catalog files: areas of interest, their dated acquisitions and their pairs, validated.

:func:`load_catalog` reads a small YAML/JSON catalog or a STAC ItemCollection; a broken entry is
reported in :attr:`CatalogLoad.errors` and the other areas still load.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Self

import pystac
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from microchange.errors import InputError
from microchange.io.catalog import read_catalog_document
from microchange.types import PathLike, is_remote

__all__ = ("AREA_NAME_PATTERN", "Acquisition", "Area", "CatalogLoad", "EntryError", "PairSpec",
           "is_remote", "load_catalog", "pair_folder")

AREA_NAME_PATTERN: Final = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
"""An area name becomes a folder name: letters, digits, ``_``, ``.``, ``-``."""
_AREA_KEYS: Final = ("name", "acquisitions", "pairs", "config")
_ACQ_KEYS: Final = ("date", "path")
_CONFIG: Final = ConfigDict(frozen=True, extra="forbid")


class Acquisition(BaseModel):
    """One raster of an area at one date."""

    model_config = _CONFIG

    date: dt.date = Field(description="Acquisition date.")
    path: str = Field(description="Raster path (absolute) or GDAL /vsi path or URL, as given.")


class Area(BaseModel):
    """An area of interest: its acquisitions by date and, optionally, the pairs to compare."""

    model_config = _CONFIG

    name: str = Field(pattern=f"^{AREA_NAME_PATTERN}$", description="Unique name; a folder name.")
    acquisitions: tuple[Acquisition, ...] = Field(
        min_length=2, description="Acquisitions sorted by date, one per date.")
    pairs: tuple[tuple[dt.date, dt.date], ...] | None = Field(
        default=None, description="(before, after) dates to compare; None: each acquisition "
                                  "with the previous one.")
    config: dict[str, Any] = Field(
        default_factory=dict, description="Detection parameters overridden for this area "
                                          "(validated by the caller).")

    @model_validator(mode="after")
    def _check_dates(self) -> Self:
        acqs = tuple(sorted(self.acquisitions, key=lambda a: a.date))
        dates = [a.date for a in acqs]
        if len(set(dates)) < len(dates):
            raise ValueError(f"area {self.name!r}: two acquisitions on one date; keep one per date")
        for before, after in self.pairs or ():
            if before not in dates or after not in dates or before >= after:
                raise ValueError(f"area {self.name!r}: pair ({before}, {after}) must name two "
                                 "listed dates, the earlier first")
        object.__setattr__(self, "acquisitions", acqs)
        return self


class EntryError(BaseModel):
    """A broken entry of a catalog file: skipped, the other areas still load."""

    model_config = _CONFIG

    area: str = Field(description="Area name, or the entry's position (``areas[2]``) without one.")
    entry: str = Field(description="Which part is wrong (``acquisitions[1]``, ``item 'x'``, ...).")
    message: str = Field(description="What is wrong and how to fix it.")

    def __str__(self) -> str:
        return f"{self.area}: {self.entry}: {self.message}"


class CatalogLoad(BaseModel):
    """The areas of a catalog file that are valid, and the entries that are not."""

    model_config = _CONFIG

    path: str = Field(description="The catalog file (absolute).")
    areas: list[Area] = Field(description="Valid areas, in the order of the file.")
    errors: list[EntryError] = Field(description="Broken entries, skipped.")


def pair_folder(area: str, before: dt.date, after: dt.date) -> str:
    """The output folder of a pair, relative to the catalog run's output: ``<area>/<b>_<a>``."""
    return f"{area}/{before.isoformat()}_{after.isoformat()}"


class PairSpec(BaseModel):
    """One pair of acquisitions of an area to compare, and where its outputs go."""

    model_config = _CONFIG

    area: str = Field(pattern=f"^{AREA_NAME_PATTERN}$", description="Area name.")
    before: Acquisition = Field(description="The earlier acquisition (defines the grid).")
    after: Acquisition = Field(description="The later acquisition.")
    folder: str = Field(default="", description="Output folder relative to the run's output: "
                                                "``<area>/<before>_<after>`` (set if empty).")
    config: dict[str, Any] = Field(
        default_factory=dict, description="The area's detection parameter overrides.")

    @model_validator(mode="after")
    def _check_folder(self) -> Self:
        if self.before.date >= self.after.date:
            raise ValueError(f"before ({self.before.date}) must be earlier than after "
                             f"({self.after.date})")
        expected = pair_folder(self.area, self.before.date, self.after.date)
        if not self.folder:
            object.__setattr__(self, "folder", expected)
        elif self.folder != expected:
            raise ValueError(f"folder {self.folder!r} must be {expected!r} (or left empty)")
        return self


def _resolve(path: str, folder: Path) -> str:
    """A local path made absolute against ``folder``; /vsi paths and URLs as given.

    Symbolic links are not followed: ``../x`` is relative to the folder the catalog is seen in.
    """
    if is_remote(path):
        return path
    p = Path(path).expanduser()
    return os.path.normpath(p if p.is_absolute() else folder / p)


def _as_date(value: Any) -> dt.date:
    """A date from YAML (date, datetime) or JSON (``YYYY-MM-DD`` or an ISO datetime)."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            return dt.datetime.fromisoformat(value).date()
    raise ValueError(f"{value!r} is not a date")


def _acquisition(value: Any, folder: Path) -> Acquisition | str:
    """An acquisition entry, or the message saying what is wrong with it."""
    if not isinstance(value, Mapping):
        return f"{value!r} is not a mapping: write {{date: YYYY-MM-DD, path: FILE}}"
    if unknown := sorted(set(map(str, value)) - set(_ACQ_KEYS)):
        return f"unknown key(s) {unknown}: an acquisition has only 'date' and 'path'"
    if value.get("date") is None or not value.get("path"):
        missing = [k for k in _ACQ_KEYS if value.get(k) in (None, "")]
        return f"missing {' and '.join(missing)}: write {{date: YYYY-MM-DD, path: FILE}}"
    try:
        day = _as_date(value["date"])
    except ValueError:
        return f"date {value['date']!r} is not a date: write it as YYYY-MM-DD"
    return Acquisition(date=day, path=_resolve(str(value["path"]), folder))


def _acquisitions(value: Any, folder: Path) -> tuple[list[Acquisition], list[tuple[str, str]]]:
    """The acquisitions of an area sorted by date, and (entry, message) for the broken ones."""
    if not isinstance(value, list):
        return [], [("acquisitions", ("missing or not a list: list at least two "
                                     "{date: YYYY-MM-DD, path: FILE} entries"))]
    acqs: list[Acquisition] = []
    errors: list[tuple[str, str]] = []
    for j, entry in enumerate(value):
        acq = _acquisition(entry, folder)
        if isinstance(acq, str):
            errors.append((f"acquisitions[{j}]", acq))
            continue
        if any(a.date == acq.date for a in acqs):
            errors.append((f"acquisitions[{j}]", (f"a second acquisition on {acq.date}: keep "
                                                 "one raster per date")))
        acqs.append(acq)
    if len(value) < 2:
        errors.append(("acquisitions", (f"{len(value)} acquisition(s): an area needs at least "
                                       "two dates to compare")))
    return sorted(acqs, key=lambda a: a.date), errors


def _pairs(value: Any, dates: set[dt.date]
           ) -> tuple[list[tuple[dt.date, dt.date]], list[tuple[str, str]]]:
    """Explicit (before, after) pairs, and (entry, message) for the broken ones."""
    if not isinstance(value, list):
        return [], [("pairs", ("not a list: write [[BEFORE, AFTER], ...] with listed dates, "
                              "or leave 'pairs' out to pair each date with the previous one"))]
    pairs: list[tuple[dt.date, dt.date]] = []
    errors = []
    for j, pair in enumerate(value):
        try:
            before, after = (_as_date(d) for d in pair)
        except (TypeError, ValueError):
            errors.append((f"pairs[{j}]", (f"{pair!r} is not [BEFORE, AFTER]: write two dates "
                                          "as YYYY-MM-DD")))
            continue
        if unlisted := [str(d) for d in (before, after) if d not in dates]:
            errors.append((f"pairs[{j}]", (f"date(s) {', '.join(unlisted)} not among the "
                                          "acquisitions: add them or fix the pair")))
        elif before >= after:
            errors.append((f"pairs[{j}]", (f"{before} is not before {after}: write the earlier "
                                          "date first")))
        elif (before, after) not in pairs:
            pairs.append((before, after))
    return pairs, errors


def _area(index: int, entry: Any, folder: Path) -> Area | list[EntryError]:
    """One entry of ``areas``: a valid area, or what is wrong with it."""
    label = f"areas[{index}]"
    if not isinstance(entry, Mapping):
        return [EntryError(area=label, entry="area", message=f"{entry!r} is not a mapping: "
                           "write {name: NAME, acquisitions: [...]}")]
    name = entry.get("name")
    if isinstance(name, str) and name:
        label = name
    errors: list[tuple[str, str]] = []
    if not isinstance(name, str) or not re.fullmatch(AREA_NAME_PATTERN, name):
        errors.append(("name", (f"{name!r} is not a valid area name: use letters, digits, '_', "
                               "'.' and '-', starting with a letter or digit")))
    if unknown := sorted(set(map(str, entry)) - set(_AREA_KEYS)):
        errors.append(("area", f"unknown key(s) {unknown}: an area has {list(_AREA_KEYS)}"))
    acqs, acq_errors = _acquisitions(entry.get("acquisitions"), folder)
    errors += acq_errors
    pairs = None
    if entry.get("pairs") is not None:
        pairs, pair_errors = _pairs(entry["pairs"], {a.date for a in acqs})
        errors += pair_errors
    config = entry.get("config") or {}
    if not isinstance(config, Mapping):
        errors.append(("config", (f"{config!r} is not a mapping of detection parameters: write "
                                 "e.g. {sensor: sar}")))
    if errors:
        return [EntryError(area=label, entry=e, message=m) for e, m in errors]
    return _build_area(label, name, acqs, pairs, dict(config))


def _build_area(label: str, name: Any, acqs: list[Acquisition],
                pairs: list[tuple[dt.date, dt.date]] | None,
                config: dict[str, Any]) -> Area | list[EntryError]:
    try:
        return Area(name=name, acquisitions=tuple(acqs),
                    pairs=None if pairs is None else tuple(pairs), config=config)
    except ValidationError as exc:  # pragma: no cover - the checks above come first
        return [EntryError(area=label, entry=".".join(map(str, err["loc"])) or "area",
                           message=err["msg"]) for err in exc.errors()]


def _unique(areas: list[Area], errors: list[EntryError]) -> list[Area]:
    """Drop every area whose name is used more than once (which one is meant is unknown)."""
    counts: dict[str, int] = {}
    for area in areas:
        counts[area.name] = counts.get(area.name, 0) + 1
    for name in sorted(n for n, c in counts.items() if c > 1):
        errors.append(EntryError(area=name, entry="name", message=f"{counts[name]} areas are "
                                 "named so: give each area a unique name (all are skipped)"))
    return [a for a in areas if counts[a.name] == 1]


def _is_data(asset: pystac.Asset) -> bool:
    return "data" in (asset.roles or [])


def _is_geotiff(asset: pystac.Asset) -> bool:
    return (asset.media_type or "").lower().startswith("image/tiff")


def _asset_href(item: pystac.Item) -> str:
    """The raster of an item: asset 'data', else the one asset with role data or GeoTIFF type."""
    if "data" in item.assets:
        return item.assets["data"].href
    for pick in (_is_data, _is_geotiff):
        found = [a for a in item.assets.values() if pick(a)]
        if len(found) == 1:
            return found[0].href
    raise ValueError(f"no usable raster among its assets {sorted(item.assets)}: name the "
                     "raster asset 'data' (or give exactly one asset the role 'data')")


def _item_entry(item: pystac.Item, folder: Path) -> tuple[str, Acquisition]:
    """The area and acquisition of a STAC item; ValueError says what is missing."""
    area = item.properties.get("microchange:area") or item.collection_id
    if not area:
        raise ValueError("no area: set the property 'microchange:area' or the 'collection'")
    when = item.datetime or item.common_metadata.start_datetime
    if when is None:
        raise ValueError("no datetime or start_datetime: give the acquisition time")
    return str(area), Acquisition(date=when.date(), path=_resolve(_asset_href(item), folder))


def _stac_items(doc: dict[str, Any]) -> tuple[list[pystac.Item], list[EntryError]]:
    """The items of an ItemCollection; those pystac cannot read are reported one by one."""
    with contextlib.suppress(Exception):  # else find the broken feature(s) below
        return list(pystac.ItemCollection.from_dict(doc)), []
    items: list[pystac.Item] = []
    errors: list[EntryError] = []
    for j, feature in enumerate(doc.get("features") or []):
        fid = feature.get("id", f"features[{j}]") if isinstance(feature, Mapping) else j
        try:
            items.append(pystac.Item.from_dict(feature))
        except Exception as exc:  # noqa: BLE001 - pystac raises many kinds
            errors.append(EntryError(area=f"features[{j}]", entry=f"item {fid!r}",
                                     message=f"not a readable STAC item ({exc}): fix it"))
    return items, errors


def _stac_area(name: str, entries: list[tuple[str, Acquisition]],
               n_broken: int) -> Area | list[EntryError]:
    """The area of a group of STAC items (item id, acquisition), or what is wrong with it."""
    errors: list[tuple[str, str]] = []
    if not re.fullmatch(AREA_NAME_PATTERN, name):
        errors.append(("area", (f"{name!r} is not a valid area name: set 'microchange:area' "
                                "to letters, digits, '_', '.' and '-', starting with a letter "
                                "or digit")))
    seen: dict[dt.date, str] = {}
    for item_id, acq in entries:
        if acq.date in seen:
            errors.append((f"item {item_id!r}", (f"same date {acq.date} as item "
                                                 f"{seen[acq.date]!r}: keep one item per date "
                                                 "and area")))
        seen.setdefault(acq.date, item_id)
    if (n := len(entries) + n_broken) < 2:
        errors.append(("area", f"{n} item(s): an area needs items at two dates at least"))
    if errors or n_broken:  # the broken items are reported by the caller
        return [EntryError(area=name, entry=e, message=m) for e, m in errors]
    acqs = sorted((a for _, a in entries), key=lambda a: a.date)
    return _build_area(name, name, acqs, None, {})


def _stac_areas(doc: dict[str, Any], folder: Path) -> tuple[list[Area], list[EntryError]]:
    """Areas of a STAC ItemCollection: items grouped by area, one acquisition per item.

    An area with a broken item is skipped whole: pairing the others would compare other dates.
    """
    items, errors = _stac_items(doc)
    groups: dict[str, list[tuple[str, Acquisition]]] = {}
    broken: dict[str, list[EntryError]] = {}
    for item in items:
        area = str(item.properties.get("microchange:area") or item.collection_id or "")
        try:
            area, acq = _item_entry(item, folder)
        except ValueError as exc:
            err = EntryError(area=area or f"item {item.id!r}", entry=f"item {item.id!r}",
                             message=str(exc))
            (broken.setdefault(area, []) if area else errors).append(err)
            continue
        groups.setdefault(area, []).append((item.id, acq))
    areas = []
    for name in sorted(set(groups) | set(broken)):
        built = _stac_area(name, groups.get(name, []), len(broken.get(name, [])))
        if name in broken or isinstance(built, list):
            errors += broken.get(name, []) + (built if isinstance(built, list) else [])
        else:
            areas.append(built)
    return areas, errors


def load_catalog(path: PathLike) -> CatalogLoad:
    """Read a catalog of areas: a YAML/JSON file with ``areas``, or a STAC ItemCollection.

    Relative raster paths are taken against the catalog file's folder; /vsi paths and URLs are
    kept as given. Whether rasters exist is not checked here (that fails at detection time,
    for that pair only).

    Returns:
        The valid areas and the broken entries (a broken entry does not stop the others).

    Raises:
        InputError: If the file is missing, not YAML/JSON, neither form, or lists no areas.
    """
    file = Path(os.path.abspath(Path(path).expanduser()))
    doc = read_catalog_document(file)
    folder = file.parent
    if isinstance(doc, Mapping) and doc.get("type") == "FeatureCollection":
        if not doc.get("features"):
            raise InputError(f"catalog {str(file)!r} has no features: add STAC items (one per "
                             "acquisition, with 'microchange:area' or a collection)")
        areas, errors = _stac_areas(dict(doc), folder)
        return CatalogLoad(path=str(file), areas=areas, errors=errors)
    if not isinstance(doc, Mapping) or "areas" not in doc:
        raise InputError(f"catalog {str(file)!r} is neither a catalog (a mapping with an 'areas' "
                         "list) nor a STAC ItemCollection: see the catalog format in the docs")
    if unknown := sorted(set(map(str, doc)) - {"areas"}):
        raise InputError(f"catalog {str(file)!r}: unknown top-level key(s) {unknown}: only "
                         "'areas' is allowed")
    if not isinstance(doc["areas"], list) or not doc["areas"]:
        raise InputError(f"catalog {str(file)!r} lists no areas: give 'areas' as a list of "
                         "{name, acquisitions} entries")
    areas, errors = [], []
    for i, entry in enumerate(doc["areas"]):
        built = _area(i, entry, folder)
        if isinstance(built, list):
            errors.extend(built)
        else:
            areas.append(built)
    return CatalogLoad(path=str(file), areas=_unique(areas, errors), errors=errors)
