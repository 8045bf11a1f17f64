"""Real benchmark pairs from ../shared/data through the whole pipeline (skipped without the data).

OSCD Sentinel-2 (4 bands at 10 m stacked by the adapter, EPSG:4326), the Landsat ENVI pair
(UTM, sparse truth) and an ERS-2 SAR BMP pair (no georeference): every contracted output exists
and holds what the contract says, opened with plain rasterio / pyarrow / geopandas.
"""

import json
import warnings

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio

from benchmarks.datasets import list_pairs, shared_data_root
from microchange.config import DetectConfig
from microchange.evaluation import evaluate_mask
from microchange.pipeline import run_detection
from microchange.types import OUTPUT_NAMES

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not shared_data_root().exists(),
                       reason=f"shared benchmark data not found at {shared_data_root()}"),
]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return {p.name: p for p in list_pairs(tmp_path_factory.mktemp("bench-inputs"))}


@pytest.mark.parametrize(("name", "sensor", "min_f1"), [
    ("oscd_rennes", "optical", 0.3),
    ("taizhou", "optical", 0.8),
    ("bern", "sar", 0.7),
])
def test_real_pair_writes_the_contracted_outputs(pairs, tmp_path, name, sensor, min_f1) -> None:
    import geopandas as gpd

    pair = pairs[name]
    out = tmp_path / name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_detection(pair.before, pair.after, out, DetectConfig(sensor=sensor, tile_size=128))
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(pair.before) as ref, rasterio.open(out / "change_mask.tif") as m, \
                rasterio.open(out / "change_score.tif") as s:
            assert (m.height, m.width) == (s.height, s.width) == (ref.height, ref.width)
            assert m.crs == s.crs == ref.crs
            assert m.transform.almost_equals(ref.transform)
            assert m.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
            mask = m.read(1)
    assert set(np.unique(mask)) <= {0, 1, 255} and (mask == 1).any()
    tiles = pq.read_table(out / "tiles.parquet")
    assert tiles.num_rows == json.loads((out / "run.json").read_text())["counts"]["tiles"]
    changes = gpd.read_parquet(out / "changes.parquet")
    assert changes["area_px"].sum() == (mask == 1).sum()
    if ref.crs is not None:
        assert changes.crs is not None and (changes["area_m2"] > 0).all()
    metrics = evaluate_mask(out / "change_mask.tif", pair.truth, **pair.truth_kwargs())
    assert metrics["f1"] >= min_f1  # floors set from measurement (see README accuracy table)
