"""Folders and globs of single-band files stacked by band name (microchange.io.stacks)."""

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from pydantic import ValidationError

from microchange.cli import main
from microchange.cli.options import parse_bands
from microchange.config import DetectConfig
from microchange.errors import BandMismatchError, ConfigError, RasterReadError
from microchange.io.pair import PairReader
from microchange.io.stacks import band_pattern, resolve_input, split_bands
from microchange.tiling import Tile

X0, Y0 = 500_000.0, 4_000_000.0
H, W = 40, 36  # fine (10 m) grid; the 20 m bands are 20 x 18


def _date(write_raster, folder: Path, prefix: str, seed: int) -> dict[str, np.ndarray]:
    """Sentinel-2-like folder: B02, B03 at 10 m, B05, B8A at 20 m, plus a B8 decoy at 60 m."""
    rng = np.random.default_rng(seed)
    bands = {
        "B02": rng.uniform(100, 1000, (H, W)).astype("float32"),
        "B03": rng.uniform(100, 1000, (H, W)).astype("float32"),
        "B05": rng.uniform(100, 1000, (H // 2, W // 2)).astype("float32"),
        "B8A": rng.uniform(100, 1000, (H // 2, W // 2)).astype("float32"),
    }
    for name, data in bands.items():
        write_raster(folder / f"{prefix}_{name}.tif", data,
                     res=10.0 if data.shape[0] == H else 20.0)
    (folder / f"{prefix}_B02.tif.aux.xml").write_text("<PAMDataset/>")  # a sidecar, ignored
    (folder / "README.txt").write_text("not a raster")
    return bands


@pytest.fixture
def folders(tmp_path, write_raster):
    t1 = _date(write_raster, tmp_path / "imgs_1", "S2A_OPER_20200101T105019_T31UDQ", seed=1)
    t2 = _date(write_raster, tmp_path / "imgs_2", "T31UDQ_20200611T105031", seed=2)
    return tmp_path / "imgs_1", tmp_path / "imgs_2", t1, t2


def test_band_token_rule():
    assert band_pattern("B02").search("T31UDQ_20170829T105019_B02")
    assert band_pattern("B02").search("x_b02_10m")
    assert band_pattern("B02").search("B02")
    assert not band_pattern("B8").search("T31UDQ_B8A")
    assert not band_pattern("B1").search("LC08_B10")
    assert not band_pattern("B02").search("XB02")
    assert parse_bands("B02, B8A") == ("B02", "B8A")
    assert parse_bands("1,2,3") == (1, 2, 3)


def test_stack_on_the_finest_grid_in_band_order(folders):
    t1_dir, _, t1, _ = folders
    stack = resolve_input(t1_dir, ("B05", "B02", "B8A"), role="BEFORE")
    with stack.dataset as ds:
        assert ds.count == 3 and (ds.height, ds.width) == (H, W)
        assert ds.transform.almost_equals(Affine(10, 0, X0, 0, -10, Y0))
        assert ds.descriptions == ("B05", "B02", "B8A")
        full = ds.read()
    assert stack.bands == (1, 2, 3)
    assert [s.name for s in stack.sources] == ["B05", "B02", "B8A"]
    assert [Path(s.path).name for s in stack.sources] == [
        "S2A_OPER_20200101T105019_T31UDQ_B05.tif", "S2A_OPER_20200101T105019_T31UDQ_B02.tif",
        "S2A_OPER_20200101T105019_T31UDQ_B8A.tif"]
    assert [s.resampled for s in stack.sources] == [True, False, True]
    np.testing.assert_array_equal(full[1], t1["B02"])  # on the grid: exact values
    c = t1["B05"]
    # Fine pixel (1, 1) centre sits at coarse (0.75, 0.75): bilinear weights 9/16, 3/16, 3/16, 1/16.
    expected = (9 * c[0, 0] + 3 * c[0, 1] + 3 * c[1, 0] + c[1, 1]) / 16
    assert full[0, 1, 1] == pytest.approx(expected, rel=1e-5)
    # Fine (2, 3) -> coarse (1.25, 1.75): between rows 0/1 (1/4, 3/4) and columns 1/2 (3/4, 1/4).
    expected = (0.25 * (0.75 * c[0, 1] + 0.25 * c[0, 2]) + 0.75 * (0.75 * c[1, 1] + 0.25 * c[1, 2]))
    assert full[0, 2, 3] == pytest.approx(expected, rel=1e-5)


def test_windows_read_the_same_values_as_the_whole(folders):
    t1_dir, t2_dir, _, _ = folders
    with PairReader(t1_dir, t2_dir, bands=("B02", "B05")) as pair:
        whole = pair.read(0, H, 0, W)
        assert pair.count == 2 and (pair.grid.height, pair.grid.width) == (H, W)
        for r0 in range(0, H, 7):
            for c0 in range(0, W, 13):
                part = pair.read(r0, min(r0 + 7, H), c0, min(c0 + 13, W))
                np.testing.assert_array_equal(
                    part.before, whole.before[:, r0:r0 + 7, c0:c0 + 13])
                np.testing.assert_array_equal(part.after, whole.after[:, r0:r0 + 7, c0:c0 + 13])
        assert whole.valid.all()
        tile = pair.read_tile(Tile(0, 8, 8, 16, 16, halo=4))
        np.testing.assert_array_equal(tile.before, whole.before[:, 4:28, 4:28])


def test_glob_input_and_other_resolution(folders):
    t1_dir, t2_dir, t1, _ = folders
    with PairReader(str(t1_dir / "*_B0*.tif"), str(t2_dir / "*.tif"), bands=("B03",)) as pair:
        np.testing.assert_array_equal(pair.read(0, H, 0, W).before[0], t1["B03"])
    coarse = resolve_input(t1_dir, ("B02", "B05"), resolution=20.0)
    with coarse.dataset as ds:
        assert (ds.height, ds.width) == (H // 2, W // 2) and ds.res == (20.0, 20.0)
        np.testing.assert_allclose(ds.read(2), t1["B05"], rtol=1e-6)
    with pytest.raises(RasterReadError, match="matches no raster file"):
        resolve_input(str(t1_dir / "*_B99.tif"), ("B02",), role="BEFORE")


def test_missing_and_ambiguous_bands_name_the_folder_and_files(folders, write_raster):
    t1_dir, t2_dir, _, _ = folders
    with pytest.raises(BandMismatchError, match=r"no file for band 'B04' in BEFORE .*imgs_1") as e:
        PairReader(t1_dir, t2_dir, bands=("B02", "B04"))
    msg = str(e.value)
    assert "S2A_OPER_20200101T105019_T31UDQ_B02.tif" in msg and "--bands" in msg
    assert "B02, B03, B05, B8A" in msg and "README" not in msg
    write_raster(t2_dir / "T31UDQ_20200611T105031_B02_copy.tif", np.zeros((H, W), "float32"),
                 res=10)
    with pytest.raises(BandMismatchError, match=r"band 'B02' matches 2 files in AFTER .*imgs_2"):
        PairReader(t1_dir, t2_dir, bands=("B02",))
    with pytest.raises(BandMismatchError, match=r"name the bands to stack.*--bands"):
        PairReader(t1_dir, t2_dir)
    with pytest.raises(BandMismatchError, match="select bands of a multi-band file, not files"):
        PairReader(t1_dir, t2_dir, bands=(1, 2))
    empty = t1_dir.parent / "empty"
    empty.mkdir()
    with pytest.raises(RasterReadError, match="holds no raster file"):
        PairReader(empty, t2_dir, bands=("B02",))


def test_mixing_indexes_and_names_is_an_error(folders):
    t1_dir, t2_dir, _, _ = folders
    with pytest.raises(ConfigError, match="mix indexes and names"):
        split_bands((1, "B02"))
    with pytest.raises(ConfigError, match="mix indexes and names"):
        PairReader(t1_dir, t2_dir, bands=(1, "B02"))
    with pytest.raises(ValidationError, match="mix indexes and names"):
        DetectConfig(bands=(1, "B02"))
    assert DetectConfig(bands=["B02", "B8A"]).bands == ("B02", "B8A")
    assert DetectConfig.model_validate({"bands": ["1", "3"]}).bands == (1, 3)
    with pytest.raises(SystemExit) as exc:
        main(["detect", str(t1_dir), str(t2_dir), "--out", "o", "--bands", "B02,3"])
    assert exc.value.code == 2


def test_nodata_of_each_band_is_honoured(tmp_path, write_raster):
    fine = np.full((H, W), 500, "uint16")
    fine[5, 7] = 0  # nodata in one fine band only -> that pixel is invalid
    coarse = np.full((H // 2, W // 2), 300, "uint16")
    coarse[8:13, 8:13] = 0  # a 5x5 nodata hole at 20 m -> fine pixels whose kernel is all nodata
    for d in ("a", "b"):
        write_raster(tmp_path / d / f"{d}_B02.tif", fine, res=10, nodata=0)
        write_raster(tmp_path / d / f"{d}_B05.tif", coarse, res=20, nodata=0)
    with PairReader(tmp_path / "a", tmp_path / "b", bands=("B02", "B05")) as pair:
        valid = pair.read(0, H, 0, W).valid
    assert not valid[5, 7]
    assert not valid[18:24, 18:24].any()  # the hole's interior
    assert valid[:15].sum() == 15 * W - 1 and valid[:, :15].sum() == 15 * H - 1
    assert (~valid).sum() < 1 + 10 * 10  # the 5x5 coarse hole covers at most 10x10 fine px


def test_names_select_bands_of_a_file_by_description(tmp_path, write_raster):
    data = np.stack([np.full((H, W), v, "uint16") for v in (1, 2, 3, 4)])
    f = write_raster(tmp_path / "stack.tif", data, res=10,
                     descriptions=("B02", "B03", "B04", "B08"))
    with PairReader(f, f, bands=("B08", "B02")) as pair:
        arr = pair.read(0, 2, 0, 2)
        assert pair.sources["before"][0].band == 4
    assert arr.before[:, 0, 0].tolist() == [4.0, 1.0]
    with pytest.raises(BandMismatchError, match=r"no band of BEFORE .* described as 'B05'"):
        PairReader(f, f, bands=("B05",))


def test_detect_from_folders_records_the_band_files(folders, tmp_path):
    t1_dir, t2_dir, _, _ = folders
    out = tmp_path / "out"
    rc = main(["detect", str(t1_dir), str(t2_dir), "--out", str(out), "--bands", "B02,B05,B8A",
               "--tile-size", "32", "-q"])
    assert rc == 0
    with rasterio.open(out / "change_mask.tif") as m:
        assert (m.height, m.width) == (H, W)
        assert m.transform.almost_equals(Affine(10, 0, X0, 0, -10, Y0))
    run = json.loads((out / "run.json").read_text())
    assert run["parameters"]["bands"] == ["B02", "B05", "B8A"]
    before = run["inputs"]["before"]
    assert [b["name"] for b in before["bands"]] == ["B02", "B05", "B8A"]
    assert before["bands"][1]["file"].endswith("S2A_OPER_20200101T105019_T31UDQ_B05.tif")
    assert before["bands"][1]["resampled"] is True
    assert run["inputs"]["after"]["bands"][0]["file"].endswith("T31UDQ_20200611T105031_B02.tif")
    assert len(before["files"]) == 3 and all(f["sha256"] for f in before["files"])


@pytest.mark.realdata
def test_oscd_folders_with_ten_bands(tmp_path):
    from benchmarks.datasets import OSCD_S2X10_BANDS, shared_data_root
    from microchange.pipeline import run_detection

    city = shared_data_root() / "oscd_s2_shared" / "bercy"
    if not city.is_dir():
        pytest.skip(f"OSCD data not found at {city}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run_detection(city / "imgs_1", city / "imgs_2", tmp_path,
                      DetectConfig(bands=OSCD_S2X10_BANDS, tile_size=128))
        with rasterio.open(tmp_path / "change_mask.tif") as m, \
                rasterio.open(city / "cm" / "bercy-cm.tif") as truth, \
                rasterio.open(next((city / "imgs_1").glob("*_B02.tif"))) as b02:
            assert (m.height, m.width) == (truth.height, truth.width) == (395, 360)
            assert m.transform.almost_equals(b02.transform) and m.crs == b02.crs
    run = json.loads((tmp_path / "run.json").read_text())
    assert [b["name"] for b in run["inputs"]["before"]["bands"]] == list(OSCD_S2X10_BANDS)
    assert sum(b["resampled"] for b in run["inputs"]["after"]["bands"]) == 6
