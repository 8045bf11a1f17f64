"""The catalog of areas watched over time: files, pairing, completeness, summary and STAC."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import geopandas as gpd
import pyarrow.parquet as pq
import pystac
import pytest
from pyproj import CRS, Transformer

from microchange.catalog import (
    Acquisition,
    Area,
    PairSpec,
    catalog_pairs,
    load_catalog,
    pair_is_complete,
    pair_result,
)
from microchange.errors import InputError, InputNotFoundError
from microchange.io.catalog import (
    footprint_lonlat,
    write_catalog_summary,
    write_stac_catalog,
)
from microchange.types import OUTPUT_NAMES, RUN_MANIFEST

D1, D2, D3 = dt.date(2026, 5, 1), dt.date(2026, 5, 11), dt.date(2026, 5, 21)
UTM33N = CRS.from_epsg(32633).to_wkt()
# 200 x 100 px of 10 m: x 500000..502000, y 4499000..4500000 (central meridian 15E, ~40.6N)
GRID = {"height": 100, "width": 200, "transform": [10.0, 0.0, 500000.0, 0.0, -10.0, 4500000.0],
        "crs_wkt": UTM33N}
PARAMS = {"method": "cva", "tile_size": 512, "sensor": "optical"}


def _expected_bounds() -> tuple[float, float, float, float]:
    to_lonlat = Transformer.from_crs(32633, "OGC:CRS84", always_xy=True)
    return to_lonlat.transform_bounds(500000.0, 4499000.0, 502000.0, 4500000.0, densify_pts=50)


# --- catalog files -------------------------------------------------------------------------

def test_yaml_catalog_resolves_paths_and_keeps_uris(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    cat = tmp_path / "sub" / "areas.yaml"
    cat.write_text(
        "areas:\n"
        "  - name: river-reach\n"
        "    acquisitions:\n"
        "      - {date: 2026-05-11, path: /vsicurl/http://127.0.0.1:8000/b.tif}\n"
        "      - {date: 2026-05-01, path: before.tif}\n"
        "      - {date: 2026-05-21, path: ../data/c.tif}\n"
        "    pairs: [[2026-05-01, 2026-05-21]]\n"
        "    config: {sensor: sar}\n"
        "  - name: Farm_2.b\n"
        "    acquisitions:\n"
        f"      - {{date: 2026-05-01, path: {tmp_path / 'abs.tif'}}}\n"
        "      - {date: 2026-05-11, path: 'https://example.org/x.tif'}\n")
    load = load_catalog(cat)
    assert load.errors == []
    assert load.path == str(cat.resolve())
    river, farm = load.areas
    assert river.name == "river-reach"
    assert [a.date for a in river.acquisitions] == [D1, D2, D3]  # sorted by date
    assert [a.path for a in river.acquisitions] == [
        str((tmp_path / "sub" / "before.tif").resolve()),
        "/vsicurl/http://127.0.0.1:8000/b.tif",
        str((tmp_path / "data" / "c.tif").resolve())]
    assert river.pairs == ((D1, D3),)
    assert river.config == {"sensor": "sar"}
    assert farm.name == "Farm_2.b"
    assert [a.path for a in farm.acquisitions] == [str((tmp_path / "abs.tif").resolve()),
                                                   "https://example.org/x.tif"]
    assert farm.pairs is None and farm.config == {}


def test_json_catalog_with_iso_strings(tmp_path: Path) -> None:
    cat = tmp_path / "areas.json"
    cat.write_text(json.dumps({"areas": [{"name": "lake", "acquisitions": [
        {"date": "2026-05-01", "path": "a.tif"},
        {"date": "2026-05-11T10:30:00Z", "path": "b.tif"}],
        "pairs": [["2026-05-01", "2026-05-11"]]}]}))
    (lake,) = load_catalog(cat).areas
    assert [(a.date, a.path) for a in lake.acquisitions] == [
        (D1, str((tmp_path / "a.tif").resolve())), (D2, str((tmp_path / "b.tif").resolve()))]
    assert lake.pairs == ((D1, D2),)


def _item(item_id: str, when: str | None, assets: dict[str, Any], *, area: str | None = None,
          collection: str | None = None, start: str | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {"datetime": when}
    if start:
        props |= {"start_datetime": start, "end_datetime": start}
    if area:
        props["microchange:area"] = area
    doc = {"type": "Feature", "stac_version": "1.1.0", "id": item_id, "properties": props,
           "geometry": None, "links": [], "assets": assets}
    if collection:
        doc["collection"] = collection
    return doc


def _stac_collection(tmp_path: Path, features: list[dict[str, Any]]) -> Path:
    path = tmp_path / "items.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_stac_item_collection(tmp_path: Path) -> None:
    tif = "image/tiff; application=geotiff"
    features = [
        _item("f1", "2026-05-01T10:00:00Z", {"data": {"href": "rasters/f1.tif"},
                                              "thumb": {"href": "f1.png", "type": "image/png"}},
              area="field"),
        _item("f2", "2026-05-11T10:00:00Z",
              {"visual": {"href": "https://example.org/f2.tif", "roles": ["data"]},
               "meta": {"href": "f2.xml", "roles": ["metadata"]}}, area="field"),
        _item("c1", None, {"cog": {"href": "/vsis3/bucket/c1.tif", "type": tif}},
              collection="coast", start="2026-05-11T00:00:00Z"),
        _item("c2", "2026-05-21T00:00:00Z", {"cog": {"href": "c2.tif", "type": tif}},
              collection="coast"),
    ]
    load = load_catalog(_stac_collection(tmp_path, features))
    assert load.errors == []
    coast, field = load.areas
    assert field.name == "field" and coast.name == "coast"
    assert [(a.date, a.path) for a in field.acquisitions] == [
        (D1, str((tmp_path / "rasters" / "f1.tif").resolve())),
        (D2, "https://example.org/f2.tif")]
    assert [(a.date, a.path) for a in coast.acquisitions] == [
        (D2, "/vsis3/bucket/c1.tif"), (D3, str((tmp_path / "c2.tif").resolve()))]


def test_stac_item_without_usable_asset_skips_only_its_area(tmp_path: Path) -> None:
    features = [
        _item("ok1", "2026-05-01T00:00:00Z", {"data": {"href": "a.tif"}}, area="good"),
        _item("ok2", "2026-05-11T00:00:00Z", {"data": {"href": "b.tif"}}, area="good"),
        _item("bad1", "2026-05-01T00:00:00Z", {"data": {"href": "c.tif"}}, area="bad"),
        _item("bad2", "2026-05-11T00:00:00Z", {"png": {"href": "d.png", "type": "image/png"}},
              area="bad"),
        _item("lost", "2026-05-11T00:00:00Z", {"data": {"href": "e.tif"}}),
    ]
    load = load_catalog(_stac_collection(tmp_path, features))
    assert [a.name for a in load.areas] == ["good"]
    by_entry = {e.entry: e for e in load.errors}
    assert set(by_entry) == {"item 'bad2'", "item 'lost'"}
    assert by_entry["item 'bad2'"].area == "bad"
    assert "no usable raster" in by_entry["item 'bad2'"].message
    assert "'data'" in by_entry["item 'bad2'"].message
    assert "microchange:area" in by_entry["item 'lost'"].message


BROKEN = """\
areas:
  - name: good
    acquisitions: [{date: 2026-05-01, path: a.tif}, {date: 2026-05-11, path: b.tif}]
  - name: bad/name
    acquisitions: [{date: 2026-05-01, path: a.tif}, {date: 2026-05-11, path: b.tif}]
  - name: twice
    acquisitions: [{date: 2026-05-01, path: a.tif}, {date: 2026-05-11, path: b.tif}]
  - name: twice
    acquisitions: [{date: 2026-05-01, path: a.tif}, {date: 2026-05-11, path: b.tif}]
  - name: nopath
    acquisitions: [{date: 2026-05-01}, {date: 2026-05-11, path: b.tif}]
  - name: samedate
    acquisitions: [{date: 2026-05-01, path: a.tif}, {date: 2026-05-01, path: b.tif}]
  - name: badpair
    acquisitions: [{date: 2026-05-01, path: a.tif}, {date: 2026-05-11, path: b.tif}]
    pairs: [[2026-05-01, 2026-06-30]]
  - name: lonely
    acquisitions: [{date: 2026-05-01, path: a.tif}]
  - just a string
"""


def test_broken_entries_are_reported_and_the_others_load(tmp_path: Path) -> None:
    cat = tmp_path / "cat.yml"
    cat.write_text(BROKEN)
    load = load_catalog(cat)
    assert [a.name for a in load.areas] == ["good"]
    errs = {(e.area, e.entry): e.message for e in load.errors}
    assert "not a valid area name" in errs["bad/name", "name"]
    assert "unique name" in errs["twice", "name"]
    assert "missing path" in errs["nopath", "acquisitions[0]"]
    assert "2026-05-01" in errs["samedate", "acquisitions[1]"]
    assert "2026-06-30" in errs["badpair", "pairs[0]"]
    assert "at least two" in errs["lonely", "acquisitions"]
    assert "not a mapping" in errs["areas[8]", "area"]
    assert len(load.errors) == 7
    assert str(load.errors[0]).startswith("bad/name: name: ")


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("syntax.yaml", "areas: [\n  - {name: x\n", "not valid YAML"),
    ("syntax.json", "{\"areas\": [", "not valid JSON"),
    ("list.yaml", "- a\n- b\n", "neither a catalog"),
    ("empty.yaml", "areas: []\n", "lists no areas"),
    ("extra.yaml", "areas: [{name: a}]\nareaz: []\n", "unknown top-level"),
    ("nofeatures.json", "{\"type\": \"FeatureCollection\", \"features\": []}", "no features"),
])
def test_whole_file_errors_name_the_file(tmp_path: Path, name: str, text: str,
                                          expected: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError, match=expected) as info:
        load_catalog(path)
    assert name in str(info.value)


def test_missing_catalog_file(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match=r"nowhere\.yaml"):
        load_catalog(tmp_path / "nowhere.yaml")


# --- pairing -------------------------------------------------------------------------------

def _area(pairs: tuple[tuple[dt.date, dt.date], ...] | None = None) -> Area:
    acqs = (Acquisition(date=D1, path="/d/a.tif"), Acquisition(date=D2, path="/d/b.tif"),
            Acquisition(date=D3, path="/d/c.tif"))
    return Area(name="reach", acquisitions=acqs, pairs=pairs, config={"sensor": "sar"})


def test_default_pairing_is_each_date_with_the_previous_one() -> None:
    pairs = catalog_pairs(_area())
    assert [(p.before.path, p.after.path) for p in pairs] == [("/d/a.tif", "/d/b.tif"),
                                                              ("/d/b.tif", "/d/c.tif")]
    assert [p.folder for p in pairs] == ["reach/2026-05-01_2026-05-11",
                                        "reach/2026-05-11_2026-05-21"]
    assert all(p.config == {"sensor": "sar"} and p.area == "reach" for p in pairs)


def test_explicit_pairing_and_round_trip() -> None:
    (pair,) = catalog_pairs(_area(((D1, D3),)))
    assert (pair.before.date, pair.after.date) == (D1, D3)
    assert pair.folder == "reach/2026-05-01_2026-05-21"
    again = PairSpec.model_validate(pair.model_dump(mode="json"))
    assert again == pair
    with pytest.raises(ValueError, match="folder"):
        PairSpec(area="reach", before=pair.before, after=pair.after, folder="elsewhere")
    with pytest.raises(ValueError, match="earlier"):
        PairSpec(area="reach", before=pair.after, after=pair.before)
    with pytest.raises(ValueError, match="pattern"):
        PairSpec(area="../up", before=pair.before, after=pair.after)
    with pytest.raises(ValueError, match="listed dates"):
        _area(((D1, dt.date(2027, 1, 1)),))


def test_area_sorts_its_acquisitions() -> None:
    area = Area(name="a", acquisitions=(Acquisition(date=D2, path="/b"),
                                        Acquisition(date=D1, path="/a")))
    assert [a.path for a in area.acquisitions] == ["/a", "/b"]
    with pytest.raises(ValueError, match="one date"):
        Area(name="a", acquisitions=(Acquisition(date=D1, path="/b"),
                                     Acquisition(date=D1, path="/a")))


# --- completeness --------------------------------------------------------------------------

def _fingerprint(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "bytes": st.st_size, "mtime": int(st.st_mtime),
            "sha256": "0" * 64}


def _run_folder(folder: Path, before: Path | str, after: Path | str,
                params: dict[str, Any] | None = None, **extra: Any) -> Path:
    """A fake finished run: the five outputs (dummy bytes) and a hand-made run.json."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_NAMES[:-1]:
        (folder / name).write_bytes(b"x")

    def info(p: Path | str) -> dict[str, Any]:
        if isinstance(p, str):
            return {"path": p, "files": [{"path": p, "bytes": 0}]}
        return {"path": str(p.resolve()), "files": [_fingerprint(p)]}

    run = {"parameters": params or PARAMS, "inputs": {"before": info(before),
                                                     "after": info(after)}, **extra}
    (folder / RUN_MANIFEST).write_text(json.dumps(run))
    return folder


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    before, after = tmp_path / "before.tif", tmp_path / "after.tif"
    before.write_bytes(b"b" * 100)
    after.write_bytes(b"a" * 120)
    return before, after


def test_pair_is_complete_for_the_same_inputs_and_parameters(tmp_path: Path,
                                                            inputs: tuple[Path, Path]) -> None:
    before, after = inputs
    out = _run_folder(tmp_path / "out", before, after)
    assert pair_is_complete(out, str(before), str(after), dict(PARAMS))
    assert not pair_is_complete(out, str(after), str(before), PARAMS)  # other order
    assert not pair_is_complete(out, str(before), str(after), {**PARAMS, "tile_size": 256})


def test_pair_is_incomplete_when_an_input_changed(tmp_path: Path,
                                                  inputs: tuple[Path, Path]) -> None:
    before, after = inputs
    out = _run_folder(tmp_path / "out", before, after)
    after.write_bytes(b"a" * 121)
    assert not pair_is_complete(out, str(before), str(after), PARAMS)
    after.write_bytes(b"a" * 120)  # same size, but touched long after the run
    os.utime(after, (1e9, 1e9))
    assert not pair_is_complete(out, str(before), str(after), PARAMS)
    after.unlink()
    assert not pair_is_complete(out, str(before), str(after), PARAMS)


def test_pair_is_incomplete_without_all_outputs_or_a_readable_run(
        tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    before, after = inputs
    out = _run_folder(tmp_path / "out", before, after)
    (out / "changes.parquet").unlink()
    assert not pair_is_complete(out, str(before), str(after), PARAMS)
    out = _run_folder(tmp_path / "out2", before, after)
    (out / RUN_MANIFEST).write_text("{not json")
    assert not pair_is_complete(out, str(before), str(after), PARAMS)
    (out / RUN_MANIFEST).write_text(json.dumps({"parameters": PARAMS}))  # no inputs
    assert not pair_is_complete(out, str(before), str(after), PARAMS)
    assert not pair_is_complete(tmp_path / "never", str(before), str(after), PARAMS)


def test_pair_is_complete_compares_remote_inputs_by_path(tmp_path: Path,
                                                         inputs: tuple[Path, Path]) -> None:
    before, _ = inputs
    url = "/vsicurl/http://127.0.0.1:8000/b.tif"
    out = _run_folder(tmp_path / "out", before, url)
    assert pair_is_complete(out, str(before), url, PARAMS)
    assert not pair_is_complete(out, str(before), url.replace("b.tif", "c.tif"), PARAMS)


# --- footprint, summary, STAC ----------------------------------------------------------------

def test_footprint_in_lonlat() -> None:
    fp = footprint_lonlat(GRID)
    assert fp is not None and fp["type"] == "Polygon"
    lons = [c[0] for c in fp["coordinates"][0]]
    lats = [c[1] for c in fp["coordinates"][0]]
    assert (min(lons), min(lats), max(lons), max(lats)) == pytest.approx(_expected_bounds(),
                                                                         abs=1e-7)
    assert 14.99 < min(lons) < max(lons) < 15.03 and 40.64 < min(lats) < max(lats) < 40.66
    assert footprint_lonlat({**GRID, "crs_wkt": None}) is None
    assert footprint_lonlat({"height": 3}) is None


def _catalog_run(tmp_path: Path) -> tuple[Path, list[Any]]:
    """A catalog run's output: pair 1 done, pair 2 skipped (earlier outputs), pair 3 failed."""
    out = tmp_path / "OUT"
    a, b, c = (tmp_path / f"{n}.tif" for n in "abc")
    for f in (a, b, c):
        f.write_bytes(b"r")
    area = Area(name="reach", acquisitions=(Acquisition(date=D1, path=str(a)),
                                            Acquisition(date=D2, path=str(b)),
                                            Acquisition(date=D3, path=str(c))))
    p1, p2 = catalog_pairs(area)
    p3 = PairSpec(area="lake", before=p1.before, after=p1.after)
    counts = {"changed_fraction": 0.25, "changed_area_m2": 5000.0, "regions": 3}
    _run_folder(out / p1.folder, a, b, counts=counts, grid=GRID, method="pca-kmeans",
                scorer="cluster", run_id="r1")
    _run_folder(out / p2.folder, b, c, counts={**counts, "regions": 0}, grid=GRID,
                method="cva", run_id="r2")
    results = [pair_result(p1, out, "done", seconds=12.5, flow_run="fr-1"),
               pair_result(p2, out, "skipped"),
               pair_result(p3, out, "failed", seconds=0.5, error="InputError: no overlap")]
    return out, results


def test_pair_result_from_run_json(tmp_path: Path) -> None:
    out, (done, skipped, failed) = _catalog_run(tmp_path)
    assert (done.changed_fraction, done.changed_area_m2, done.regions) == (0.25, 5000.0, 3)
    assert done.out == str((out / "reach" / "2026-05-01_2026-05-11").resolve())
    assert done.footprint is not None and skipped.regions == 0
    assert failed.footprint is None and failed.changed_fraction is None
    assert failed.error == "InputError: no overlap"


def test_summary_geoparquet(tmp_path: Path) -> None:
    out, results = _catalog_run(tmp_path)
    path = write_catalog_summary(out / "summary.parquet", results)
    assert sorted(p.name for p in out.iterdir()) == ["reach", "summary.parquet"]
    gdf = gpd.read_parquet(path)
    assert gdf.crs is not None and gdf.crs.to_string() == "OGC:CRS84"
    schema = pq.read_schema(path)
    assert str(schema.field("before_date").type) == "date32[day]"
    assert str(schema.field("regions").type) == "int64"
    assert list(gdf["status"]) == ["done", "skipped", "failed"]
    assert list(gdf["area"]) == ["reach", "reach", "lake"]
    assert list(gdf["before_date"]) == [D1, D2, D1]
    assert list(gdf["after_date"]) == [D2, D3, D2]
    assert gdf["changed_fraction"].iloc[0] == 0.25 and gdf["regions"].iloc[1] == 0
    assert gdf["seconds"].tolist() == [12.5, 0.0, 0.5]
    assert gdf["flow_run"].iloc[0] == "fr-1" and gdf["flow_run"].isna().iloc[1]
    assert gdf["error"].iloc[2] == "InputError: no overlap" and gdf["error"].isna().iloc[0]
    assert gdf["changed_area_m2"].isna().iloc[2]
    assert gdf.geometry.iloc[2] is None
    assert tuple(gdf.geometry.iloc[0].bounds) == pytest.approx(_expected_bounds(), abs=1e-7)
    assert not list(out.glob(".*.tmp"))


def test_stac_catalog(tmp_path: Path) -> None:
    out, results = _catalog_run(tmp_path)
    root = write_stac_catalog(out, results)
    assert root == out.resolve() / "catalog.json"
    cat = pystac.Catalog.from_file(str(root))
    assert cat.title == "microchange change maps"
    (coll,) = cat.get_children()
    assert isinstance(coll, pystac.Collection) and coll.id == "reach"
    items = sorted(coll.get_items(), key=lambda i: i.id)
    assert [i.id for i in items] == ["reach-2026-05-01_2026-05-11", "reach-2026-05-11_2026-05-21"]
    first = items[0]
    assert first.datetime == dt.datetime(2026, 5, 11, tzinfo=dt.UTC)
    assert first.common_metadata.start_datetime == dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
    assert first.properties["changed_fraction"] == 0.25 and first.properties["regions"] == 3
    assert first.properties["microchange:method"] == "pca-kmeans"
    assert first.bbox == pytest.approx(list(_expected_bounds()), abs=1e-7)
    assert set(first.assets) == {"change_mask", "change_score", "tiles", "changes", "run"}
    mask = first.assets["change_mask"]
    assert mask.media_type == "image/tiff; application=geotiff; profile=cloud-optimized"
    assert mask.roles == ["data"]
    assert first.assets["tiles"].media_type == "application/vnd.apache.parquet"
    raw = json.loads(Path(first.get_self_href() or "").read_text())
    assert raw["assets"]["change_mask"]["href"] == "./change_mask.tif"  # relative
    for item in items:
        for asset in item.assets.values():
            assert Path(asset.get_absolute_href() or "").is_file()
    assert coll.extent.temporal.intervals[0] == [dt.datetime(2026, 5, 1, tzinfo=dt.UTC),
                                                dt.datetime(2026, 5, 21, tzinfo=dt.UTC)]
    assert coll.extent.spatial.bboxes[0] == pytest.approx(list(_expected_bounds()), abs=1e-7)
    assert not any(link["rel"] == "self" for link in json.loads(root.read_text())["links"])


def test_stac_catalog_is_rewritten_cleanly(tmp_path: Path) -> None:
    out, results = _catalog_run(tmp_path)
    write_stac_catalog(out, results)
    old_item = out / "reach" / "2026-05-11_2026-05-21" / "reach-2026-05-11_2026-05-21.json"
    assert old_item.is_file()
    (out / "reach" / "2026-05-11_2026-05-21" / "run.json").unlink()  # outputs gone
    write_stac_catalog(out, results)
    assert not old_item.exists()
    cat = pystac.Catalog.from_file(str(out / "catalog.json"))
    assert [i.id for i in cat.get_items(recursive=True)] == ["reach-2026-05-01_2026-05-11"]
    write_stac_catalog(out, [])
    cat = pystac.Catalog.from_file(str(out / "catalog.json"))
    assert list(cat.get_children()) == []
    assert not (out / "reach" / "collection.json").exists()


def test_summary_of_a_run_where_every_pair_failed(tmp_path: Path) -> None:
    _, results = _catalog_run(tmp_path)
    path = write_catalog_summary(tmp_path / "failed.parquet", results[2:])
    geo = json.loads(pq.read_schema(path).metadata[b"geo"])
    assert "bbox" not in geo["columns"]["geometry"]  # no NaN bbox in the metadata
    gdf = gpd.read_parquet(path)
    assert len(gdf) == 1 and gdf.geometry.iloc[0] is None and gdf["status"].iloc[0] == "failed"
    empty = gpd.read_parquet(write_catalog_summary(tmp_path / "empty.parquet", []))
    assert len(empty) == 0 and "before_date" in empty.columns
