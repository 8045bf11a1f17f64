"""Writers: GeoParquet metadata, empty tables, pixel-grid (non-georeferenced) outputs."""

import json
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio
import shapely

from microchange.config import DetectConfig
from microchange.io.tables import write_geoparquet
from microchange.pipeline import run_detection


def test_geoparquet_metadata_and_roundtrip(tmp_path) -> None:
    import geopandas as gpd

    path = tmp_path / "t.parquet"
    geoms = [shapely.box(0, 0, 10, 10), shapely.box(10, 0, 20, 5)]
    write_geoparquet(path, {"a": [1, 2]}, geoms, rasterio.crs.CRS.from_epsg(32631).to_wkt())
    geo = json.loads(pq.read_schema(path).metadata[b"geo"])
    col = geo["columns"]["geometry"]
    assert geo["primary_column"] == "geometry" and col["geometry_types"] == ["Polygon"]
    assert col["bbox"] == [0.0, 0.0, 20.0, 10.0]
    df = gpd.read_parquet(path)
    assert df.crs.to_epsg() == 32631 and list(df["a"]) == [1, 2]
    assert df.geometry.iloc[1].equals(geoms[1])


def test_empty_table_keeps_its_schema(tmp_path) -> None:
    path = tmp_path / "empty.parquet"
    write_geoparquet(path, {"area_px": pa.array([], pa.int64())}, [], None)
    table = pq.read_table(path)
    assert table.num_rows == 0 and table.schema.field("area_px").type == pa.int64()
    assert json.loads(table.schema.metadata[b"geo"])["columns"]["geometry"]["crs"] is None


def test_identical_images_give_no_change(make_geotiff, tmp_path) -> None:
    data = np.random.default_rng(3).integers(0, 4000, (3, 70, 90)).astype("uint16")
    path = make_geotiff(data, name="same.tif")
    summary = run_detection(path, path, tmp_path / "out", DetectConfig(tile_size=32))
    assert summary["counts"]["changed_px"] == 0 and summary["counts"]["regions"] == 0
    assert pq.read_table(tmp_path / "out" / "changes.parquet").num_rows == 0


def test_pixel_grid_outputs_have_no_crs(make_geotiff, tmp_path) -> None:
    import geopandas as gpd

    rng = np.random.default_rng(0)
    before = rng.normal(100, 3, (1, 50, 60)).astype("float32")
    after = before.copy()
    after[0, 20:25, 30:36] += 60
    b = make_geotiff(before, name="b.tif", crs=None)
    a = make_geotiff(after, name="a.tif", crs=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_detection(b, a, tmp_path / "out", DetectConfig(tile_size=32))
        with rasterio.open(tmp_path / "out" / "change_mask.tif") as m:
            assert m.crs is None and (m.read(1) == 1).sum() >= 30
    changes = gpd.read_parquet(tmp_path / "out" / "changes.parquet")
    assert changes.crs is None and changes["area_m2"].isna().all()
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["alignment"] == "pixel-grid" and run["warnings"]
