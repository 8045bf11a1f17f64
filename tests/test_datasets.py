"""The benchmark adapters against the counts documented in each folder's PROVENANCE.md."""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from microchange.evaluation import evaluate_mask

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # plain `pytest` does not put the repo root on sys.path
    sys.path.insert(0, str(_REPO))
datasets = importlib.import_module("benchmarks.datasets")

if not datasets.shared_data_root().is_dir():
    pytest.skip(
        f"../shared/data not found: {datasets.shared_data_root()} (set MICROCHANGE_SHARED_DATA)",
        allow_module_level=True,
    )

pytestmark = pytest.mark.realdata

# name: (family, changed, unchanged, ignored) -- from PROVENANCE.md (LEVIR counts match its
# percentages; beijing's unchanged = 500*500 - 19,577).
EXPECTED = {
    "oscd_bercy": ("optical", 1046, 141_154, 0),
    "oscd_paris": ("optical", 458, 158_662, 0),
    "oscd_rennes": ("optical", 4932, 185_925, 0),
    "taizhou": ("optical", 4227, 17_163, 138_610),
    "bern": ("sar", 1155, 89_446, 0),
    "san_francisco": ("sar", 4685, 60_851, 0),
    "yellow_river_coastline": ("sar", 1348, 124_652, 0),
    "yellow_river_inland_water": ("sar", 4255, 124_367, 582),
    "beijing_a": ("optical", 19_577, 230_423, 0),
    "levir_test_7": ("optical", 113_845, 934_731, 0),
    "levir_test_12": ("optical", 105_052, 943_524, 0),
    "levir_test_102": ("optical", 105_490, 943_086, 0),
    "shuguang": ("heterogeneous", 25_099, 521_054, 0),
}


def _open(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("bench_work")


@pytest.fixture(scope="session")
def pairs(workdir):
    return {p.name: p for p in datasets.list_pairs(workdir)}


def test_all_pairs_listed(pairs):
    assert list(pairs) == list(EXPECTED)
    for pair in pairs.values():
        assert pair.family == EXPECTED[pair.name][0]
        for path in (pair.before, pair.after, pair.truth):
            assert path.is_file(), path


@pytest.mark.parametrize("name", list(EXPECTED))
def test_pair_grids_agree(pairs, name):
    pair = pairs[name]
    with _open(pair.before) as b, _open(pair.after) as a, _open(pair.truth) as t:
        assert b.shape == a.shape == t.shape
        assert b.count == a.count
        if t.crs is not None:
            assert t.crs == b.crs
            assert t.transform.almost_equals(b.transform)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_truth_counts(pairs, name, tmp_path):
    """An all-changed mask scores tp = changed, fp = unchanged, and the rest is ignored."""
    pair = pairs[name]
    _, changed, unchanged, ignored = EXPECTED[name]
    with _open(pair.truth) as t:
        height, width = t.shape
    mask_path = tmp_path / "all_changed.tif"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(
            mask_path, "w", driver="GTiff", width=width, height=height, count=1, dtype="uint8"
        ) as dst:
            dst.write(np.ones((1, height, width), np.uint8))
    m = evaluate_mask(mask_path, pair.truth, block_rows=128, **pair.truth_kwargs())
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (changed, unchanged, 0, 0)
    assert m["n_ignored"] == ignored
    assert m["n_labelled"] + m["n_ignored"] == height * width


def test_oscd_stacks(pairs):
    root = datasets.shared_data_root() / "oscd_s2_shared" / "bercy"
    pair = pairs["oscd_bercy"]
    for path, folder in ((pair.before, "imgs_1"), (pair.after, "imgs_2")):
        with _open(path) as ds:
            assert ds.count == 4
            assert ds.dtypes == ("uint16",) * 4
            assert ds.descriptions == datasets.OSCD_BANDS
            assert ds.crs.to_epsg() == 4326
            for i, band in enumerate(datasets.OSCD_BANDS, start=1):
                (src_path,) = (root / folder).glob(f"*_{band}.tif")
                with _open(src_path) as src:
                    np.testing.assert_array_equal(ds.read(i), src.read(1))
                    assert ds.transform == src.transform


def test_taizhou_truth(pairs):
    pair = pairs["taizhou"]
    with _open(pair.truth) as t, _open(pair.before) as b:
        assert t.crs.to_epsg() == 32651 and b.crs == t.crs
        assert t.transform == b.transform
        values, counts = np.unique(t.read(1), return_counts=True)
    assert dict(zip(values.tolist(), counts.tolist(), strict=True)) == {
        0: 138_610,
        1: 17_163,
        2: 4227,
    }


def test_derived_files_are_cached(pairs, workdir):
    derived = sorted(p for p in workdir.rglob("*.tif"))
    assert len(derived) == 3 * 3 + 1
    before = {p: p.stat().st_mtime_ns for p in derived}
    again = {p.name: p for p in datasets.list_pairs(workdir)}
    assert again == pairs
    assert {p: p.stat().st_mtime_ns for p in derived} == before


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="MICROCHANGE_SHARED_DATA"):
        datasets.list_pairs(tmp_path / "work", root=tmp_path / "absent")


def test_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("MICROCHANGE_SHARED_DATA", str(tmp_path))
    assert datasets.shared_data_root() == tmp_path.resolve()
