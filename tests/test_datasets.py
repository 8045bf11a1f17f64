"""The benchmark adapters against the counts documented in each folder's PROVENANCE.md."""

from __future__ import annotations

import importlib
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning
from scipy.io import loadmat

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

# name: (family, dataset, (rows, cols), changed, unchanged, ignored) -- from PROVENANCE.md
# (LEVIR counts match its percentages; where only the changed count is given, unchanged =
# rows * cols - changed; beijing's changed is `gt > 128`, SZADA's is `gt > 128` as well).
EXPECTED = {
    "oscd_bercy": ("optical", "oscd", (395, 360), 1046, 141_154, 0),
    "oscd_paris": ("optical", "oscd", (408, 390), 458, 158_662, 0),
    "oscd_rennes": ("optical", "oscd", (339, 563), 4932, 185_925, 0),
    "taizhou": ("optical", "taizhou", (400, 400), 4227, 17_163, 138_610),
    "bern": ("sar", "bern", (301, 301), 1155, 89_446, 0),
    "san_francisco": ("sar", "san_francisco", (256, 256), 4685, 60_851, 0),
    "yellow_river_coastline": ("sar", "yellow_river_coastline", (280, 450), 1348, 124_652, 0),
    "yellow_river_inland_water": (
        "sar", "yellow_river_inland_water", (444, 291), 4255, 124_367, 582),
    "beijing_a": ("vhr", "beijing", (500, 500), 19_577, 230_423, 0),
    "levir_test_7": ("vhr", "levir", (1024, 1024), 113_845, 934_731, 0),
    "levir_test_12": ("vhr", "levir", (1024, 1024), 105_052, 943_524, 0),
    "levir_test_102": ("vhr", "levir", (1024, 1024), 105_490, 943_086, 0),
    "shuguang": ("heterogeneous", "shuguang", (593, 921), 25_099, 521_054, 0),
    "ottawa": ("sar", "ottawa", (350, 290), 16_049, 85_451, 0),
    "chao_lake": ("sar", "chao_lake", (384, 384), 12_846, 134_610, 0),
    "wenchuan": ("sar", "wenchuan", (301, 442), 22_940, 110_102, 0),
    "ombria_0113": ("sar", "ombria", (256, 256), 14_606, 50_930, 0),
    "ombria_0178": ("sar", "ombria", (256, 256), 14_177, 51_359, 0),
    "ombria_0212": ("sar", "ombria", (256, 256), 23_510, 42_026, 0),
    "ombria_0221": ("sar", "ombria", (256, 256), 34_770, 30_766, 0),
    "bastrop": ("optical", "bastrop", (1534, 808), 131_869, 1_107_603, 0),
    "alaska": ("optical", "alaska", (443, 642), 30_439, 253_967, 0),
    "dsifn_0_2": ("vhr", "dsifn", (256, 256), 6091, 59_445, 0),
    "dsifn_1_1": ("vhr", "dsifn", (256, 256), 7894, 57_642, 0),
    "dsifn_2_4": ("vhr", "dsifn", (256, 256), 14_692, 50_844, 0),
    "dsifn_3_4": ("vhr", "dsifn", (256, 256), 10_783, 54_753, 0),
    "dsifn_4_4": ("vhr", "dsifn", (256, 256), 42_741, 22_795, 0),
    "szada_1": ("vhr", "szada", (640, 952), 24_092, 585_188, 0),
    "szada_2": ("vhr", "szada", (640, 952), 35_200, 574_080, 0),
    "szada_3": ("vhr", "szada", (640, 952), 11_988, 597_292, 0),
    "szada_4": ("vhr", "szada", (640, 952), 55_091, 554_189, 0),
    "szada_5": ("vhr", "szada", (640, 952), 18_850, 590_430, 0),
    "szada_6": ("vhr", "szada", (640, 952), 11_918, 597_362, 0),  # one 213 pixel: changed
    "szada_7": ("vhr", "szada", (640, 952), 23_017, 586_263, 0),
}

# The datasets of each family, as the brief lists them.
FAMILIES = {
    "optical": {"oscd", "taizhou", "bastrop", "alaska"},
    "vhr": {"beijing", "levir", "dsifn", "szada"},
    "sar": {"bern", "san_francisco", "yellow_river_coastline", "yellow_river_inland_water",
            "ottawa", "chao_lake", "wenchuan", "ombria"},
    "heterogeneous": {"shuguang"},
}

MAT_PAIRS = {  # name: (.mat under the shared data, dtypes of before/after/truth as written)
    "wenchuan": ("wenchuan_sar/Wenchuan_dataset.mat", ("float32", "float32", "uint8")),
    "bastrop": ("bastrop_texas_fire/Bastrop_dataset.mat", ("uint8", "uint16", "uint8")),
    "alaska": ("alaska_landsat/alaska_dataset.mat", ("float32", "float32", "uint8")),
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
        family, dataset = EXPECTED[pair.name][:2]
        assert (pair.family, pair.dataset) == (family, dataset), pair.name
        for path in (pair.before, pair.after, pair.truth):
            assert path.is_file(), path


def test_families_and_datasets(pairs):
    found: dict[str, set[str]] = {}
    for pair in pairs.values():
        found.setdefault(pair.family, set()).add(pair.dataset)
    assert found == FAMILIES
    assert set(FAMILIES) == set(datasets.Family.__args__)


def test_oscd_folders(workdir, pairs):
    with_folders = datasets.list_pairs(workdir, oscd_folders=True)
    names = [p.name for p in with_folders]
    s2x10 = [f"oscd_{city}_s2x10" for city in datasets.OSCD_CITIES]
    assert names == [*list(EXPECTED)[:3], *s2x10, *list(EXPECTED)[3:]]
    for pair in with_folders[3:6]:
        assert (pair.family, pair.dataset) == ("optical", "oscd")
        assert pair.bands == datasets.OSCD_S2X10_BANDS
        assert pair.before.is_dir() and pair.after.is_dir()
        assert pair.truth == pairs[pair.name.removesuffix("_s2x10")].truth


@pytest.mark.parametrize("name", list(EXPECTED))
def test_pair_grids_agree(pairs, name):
    pair = pairs[name]
    with _open(pair.before) as b, _open(pair.after) as a, _open(pair.truth) as t:
        assert b.shape == a.shape == t.shape == EXPECTED[name][2]
        assert b.count == a.count
        if pair.bands is not None:
            assert all(1 <= i <= b.count for i in pair.bands)
        if t.crs is not None:
            assert t.crs == b.crs
            assert t.transform.almost_equals(b.transform)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_truth_counts(pairs, name, write_raster, tmp_path):
    """An all-changed mask scores tp = changed, fp = unchanged, and the rest is ignored."""
    pair = pairs[name]
    changed, unchanged, ignored = EXPECTED[name][3:]
    assert changed > 0 and unchanged > 0
    with _open(pair.truth) as t:
        height, width = t.shape
    mask_path = write_raster(tmp_path / "all_changed.tif", np.ones((height, width), np.uint8),
                             crs=None)
    m = evaluate_mask(mask_path, pair.truth, block_rows=256, **pair.truth_kwargs())
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


def test_chao_lake_grey_through_palette(pairs):
    """The derived rasters hold PIL's grey values, not the raw palette indices (20..77)."""
    folder = datasets.shared_data_root() / "chao_lake_sar"
    pair = pairs["chao_lake"]
    for derived, name in ((pair.before, "Chao1_1.bmp"), (pair.after, "Chao1_2.bmp")):
        grey = np.asarray(Image.open(folder / name).convert("L"))
        raw = np.asarray(Image.open(folder / name))
        assert not np.array_equal(grey, raw)
        with _open(derived) as ds:
            assert ds.dtypes == ("uint8",)
            np.testing.assert_array_equal(ds.read(1), grey)
    # The truth is used in place: its raw indices are its grey values.
    assert pair.truth == folder / "Chao1_1gt.bmp"
    with _open(pair.truth) as t:
        np.testing.assert_array_equal(t.read(1), np.asarray(Image.open(pair.truth).convert("L")))


@pytest.mark.parametrize("name", list(MAT_PAIRS))
def test_mat_rasters(pairs, name):
    path, dtypes = MAT_PAIRS[name]
    content = loadmat(datasets.shared_data_root() / path)
    pair = pairs[name]
    assert pair.changed_values == (1,)
    for raster, key, dtype in zip((pair.before, pair.after, pair.truth), ("before", "after", "gt"),
                                  dtypes, strict=True):
        with _open(raster) as ds:
            assert ds.count == 1 and ds.dtypes == (dtype,) and ds.crs is None
            np.testing.assert_array_equal(ds.read(1), content[key].astype(dtype))


def test_ottawa_band_1(pairs):
    pair = pairs["ottawa"]
    assert pair.bands == (1,)
    for path in (pair.before, pair.after, pair.truth):
        with _open(path) as ds:
            bands = ds.read()
        assert ds.count == 3 and (bands == bands[:1]).all()  # R=G=B: band 1 is the image


def test_szada_file_name_case(pairs):
    assert pairs["szada_5"].after.name == "im2.BMP"
    assert pairs["szada_6"].truth.name == "gt.BMP"
    assert pairs["szada_7"].before.name == "im1.BMP"
    assert pairs["szada_1"].truth_threshold == 128


def test_derived_files_are_cached(pairs, workdir):
    derived = sorted(p for p in workdir.rglob("*.tif"))
    # OSCD 3 x 3, Taizhou 1, Chao Lake 2, the three .mat datasets 3 x 3.
    assert len(derived) == 3 * 3 + 1 + 2 + 3 * 3
    before = {p: p.stat().st_mtime_ns for p in derived}
    again = {p.name: p for p in datasets.list_pairs(workdir)}
    assert again == pairs
    assert {p: p.stat().st_mtime_ns for p in derived} == before


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="MICROCHANGE_SHARED_DATA"):
        datasets.list_pairs(tmp_path / "work", root=tmp_path / "absent")


@pytest.mark.parametrize(
    "missing", sorted(p.name for p in datasets.shared_data_root().iterdir() if p.is_dir())
)
def test_missing_dataset_folder(pairs, workdir, tmp_path, missing):
    """One dataset folder absent: a clear FileNotFoundError naming it, whichever it is."""
    root = tmp_path / "data"
    root.mkdir()
    for folder in datasets.shared_data_root().iterdir():
        if folder.is_dir() and folder.name != missing:
            (root / folder.name).symlink_to(folder, target_is_directory=True)
    with pytest.raises(FileNotFoundError, match=missing):
        datasets.list_pairs(workdir, root=root)  # workdir: reuses the derived files


def test_missing_file(pairs, workdir, tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    for folder in datasets.shared_data_root().iterdir():
        if folder.is_dir() and folder.name != "sztaki_szada":
            (root / folder.name).symlink_to(folder, target_is_directory=True)
    szada = datasets.shared_data_root() / "sztaki_szada"
    for n in range(1, 8):
        (root / "sztaki_szada" / str(n)).mkdir(parents=True)
        for path in (szada / str(n)).iterdir():
            if not (n == 6 and path.name == "gt.BMP"):
                (root / "sztaki_szada" / str(n) / path.name).symlink_to(path)
    with pytest.raises(FileNotFoundError, match=re.escape("'gt.bmp' (any case)")):
        datasets.list_pairs(workdir, root=root)


def test_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("MICROCHANGE_SHARED_DATA", str(tmp_path))
    assert datasets.shared_data_root() == tmp_path.resolve()
