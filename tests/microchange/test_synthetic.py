from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from scipy import ndimage

from microchange.errors import ConfigError, InputError
from microchange.synthetic import SyntheticScene, make_scene, write_scene

SIZE = 128


@pytest.fixture(scope="module")
def scene() -> SyntheticScene:
    return make_scene(height=SIZE, width=SIZE + 32, bands=4, seed=7, n_changes=20)


def test_shapes_dtypes_and_grid(scene: SyntheticScene) -> None:
    assert scene.before.shape == (4, SIZE, SIZE + 32)
    assert scene.after.shape == scene.before.shape
    assert scene.truth.shape == (SIZE, SIZE + 32)
    assert scene.before.dtype == np.float32
    assert scene.after.dtype == np.float32
    assert scene.truth.dtype == np.uint8
    assert set(np.unique(scene.truth)) == {0, 1}
    assert scene.transform == Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 5_000_000.0)
    assert scene.crs == "EPSG:32631"
    assert len(scene.gain) == 4 and all(0.85 <= g <= 1.15 for g in scene.gain)
    assert len(scene.offset) == 4 and all(abs(o) <= 0.02 for o in scene.offset)
    assert np.hypot(*scene.shift) == pytest.approx(0.3)
    # Reflectance-like values: noise may dip a little below 0.
    for arr in (scene.before, scene.after):
        assert np.all(np.isfinite(arr))
        assert -0.1 < float(arr.min()) and float(arr.max()) < 0.8
        assert 0.05 < float(arr.mean()) < 0.3


def test_water_is_dark_in_nir() -> None:
    s = make_scene(height=256, width=256, n_changes=0, noise=0.0, shift_px=0.0, seed=1)
    nir = s.before[3]
    # The darkest 1% of NIR pixels are water: far below the vegetated land.
    assert np.quantile(nir, 0.01) < 0.05
    assert np.median(nir) > 0.2


@pytest.mark.parametrize("bands", [1, 3, 6, 8])
def test_band_counts(bands: int) -> None:
    s = make_scene(height=48, width=40, bands=bands, n_changes=3, seed=2)
    assert s.before.shape == (bands, 48, 40)
    assert s.truth.sum() == sum(c["area_px"] for c in s.changes)


def test_deterministic(scene: SyntheticScene) -> None:
    again = make_scene(height=SIZE, width=SIZE + 32, bands=4, seed=7, n_changes=20)
    assert again.before.tobytes() == scene.before.tobytes()
    assert again.after.tobytes() == scene.after.tobytes()
    assert again.truth.tobytes() == scene.truth.tobytes()
    assert again.changes == scene.changes
    other = make_scene(height=SIZE, width=SIZE + 32, bands=4, seed=8, n_changes=20)
    assert not np.array_equal(other.before, scene.before)


def test_landscape_does_not_depend_on_changes() -> None:
    a = make_scene(height=64, width=64, n_changes=0, noise=0.0, seed=4)
    b = make_scene(height=64, width=64, n_changes=5, noise=0.0, seed=4)
    np.testing.assert_array_equal(a.before, b.before)


def test_truth_matches_changes(scene: SyntheticScene) -> None:
    assert len(scene.changes) == 20
    areas = [c["area_px"] for c in scene.changes]
    assert int(scene.truth.sum()) == sum(areas) > 0
    labels, n = ndimage.label(scene.truth, structure=np.ones((3, 3)))
    assert n == 20  # changes keep a gap: one connected component each
    kinds = {c["kind"] for c in scene.changes}
    assert kinds <= {"micro", "building", "clearing", "flooding", "crop_damage"}
    for c in scene.changes:
        r0, c0, r1, c1 = c["bbox"]
        assert scene.truth[c["row"], c["col"]] == 1
        assert r0 <= c["row"] < r1 and c0 <= c["col"] < c1
        assert int(scene.truth[r0:r1, c0:c1].sum()) == c["area_px"]
        assert (labels[r0:r1, c0:c1] > 0).any()
        assert 1 <= c["area_px"] <= 400
        assert c["contrast"] > 1.0
        assert c["delta_rms"] == pytest.approx(c["contrast"] * 0.01)
        x, y = scene.transform @ (c["col"] + 0.5, c["row"] + 0.5)
        assert (c["x"], c["y"]) == pytest.approx((x, y))
    assert [c["id"] for c in scene.changes] == list(range(1, 21))


def test_changes_stay_away_from_border(scene: SyntheticScene) -> None:
    h, w = scene.truth.shape
    assert scene.truth[:3].sum() == 0 and scene.truth[h - 3 :].sum() == 0
    assert scene.truth[:, :3].sum() == 0 and scene.truth[:, w - 3 :].sum() == 0
    for c in scene.changes:
        r0, c0, r1, c1 = c["bbox"]
        assert r0 >= 3 and c0 >= 3 and r1 <= h - 3 and c1 <= w - 3


def test_many_small_changes_fit_or_fail_cleanly() -> None:
    s = make_scene(height=32, width=32, n_changes=15, seed=0)
    assert int(s.truth.sum()) == sum(c["area_px"] for c in s.changes)
    with pytest.raises(ConfigError, match="n_changes"):
        make_scene(height=32, width=32, n_changes=10_000)


def _residual(scene: SyntheticScene) -> np.ndarray:
    """|AFTER - linear fit of BEFORE|, per pixel, RMS over bands; fit outside the truth."""
    outside = scene.truth == 0
    res = np.zeros(scene.truth.shape)
    for b in range(scene.before.shape[0]):
        x, y = scene.before[b].astype(np.float64), scene.after[b].astype(np.float64)
        gain, offset = np.polyfit(x[outside], y[outside], 1)
        res += (y - (gain * x + offset)) ** 2
    return np.sqrt(res / scene.before.shape[0])


def test_change_dominates_nuisance(scene: SyntheticScene) -> None:
    res = _residual(scene)
    inside, outside = res[scene.truth == 1].mean(), res[scene.truth == 0].mean()
    assert inside > 3 * outside


def test_truth_is_exact_without_noise_and_shift() -> None:
    s = make_scene(height=96, width=96, n_changes=12, noise=0.0, shift_px=0.0, seed=5)
    gain = np.asarray(s.gain, np.float32)[:, None, None]
    offset = np.asarray(s.offset, np.float32)[:, None, None]
    diff = np.abs(s.after - (gain * s.before + offset)).max(axis=0)
    assert diff[s.truth == 0].max() < 1e-6
    assert diff[s.truth == 1].min() > 1e-4
    # With no noise the contrast unit is 0.005 reflectance.
    assert all(c["delta_rms"] == pytest.approx(c["contrast"] * 0.005) for c in s.changes)


def test_no_changes() -> None:
    s = make_scene(height=32, width=32, n_changes=0)
    assert s.changes == [] and s.truth.sum() == 0


@pytest.mark.parametrize(("dtype", "nodata"), [("uint16", None), ("int16", -1), ("float32", None)])
def test_write_scene_round_trip(scene: SyntheticScene, tmp_path, dtype: str, nodata) -> None:
    paths = write_scene(scene, tmp_path / "out", dtype=dtype, nodata=nodata, tile=64)
    assert set(paths) == {"before", "after", "truth"}
    for name in ("before", "after"):
        with rasterio.open(paths[name]) as src:
            assert src.crs.to_epsg() == 32631
            assert src.transform == scene.transform
            assert src.count == 4 and src.shape == scene.truth.shape
            assert src.dtypes[0] == dtype
            assert src.nodata == nodata
            assert src.block_shapes[0] == (64, 64)
            assert src.descriptions == ("blue", "green", "red", "nir")
            data = src.read()
        expected = getattr(scene, name)
        if dtype == "float32":
            np.testing.assert_array_equal(data, expected)
        elif dtype == "uint16":  # rounded; negative noise clipped to 0
            assert np.abs(data / 10000.0 - np.clip(expected, 0, None)).max() <= 0.5e-4 + 1e-7
        else:  # int16 keeps negatives; the nodata value -1 is moved to 0
            assert data.min() < 0 and not (data == -1).any()
            assert np.abs(data / 10000.0 - expected).max() <= 1.5e-4 + 1e-7
    with rasterio.open(paths["truth"]) as src:
        assert src.dtypes[0] == "uint8"
        assert src.transform == scene.transform and src.crs.to_epsg() == 32631
        np.testing.assert_array_equal(src.read(1), scene.truth)


def test_write_scene_keeps_valid_pixels_off_nodata(tmp_path) -> None:
    s = make_scene(height=64, width=64, n_changes=2, seed=3)
    paths = write_scene(s, tmp_path, nodata=0, compress="none", tile=16)
    with rasterio.open(paths["before"]) as src:
        assert src.nodata == 0
        assert src.compression is None
        assert src.read().min() >= 1  # negative noise clipped to 0, then moved off nodata


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"height": 16}, r"height: 16\. Must be an integer in \[32, 16384\]"),
        ({"width": 31}, "width"),
        ({"bands": 0}, r"bands: 0\. Must be an integer in \[1, 32\]"),
        ({"n_changes": -1}, "n_changes: -1"),
        ({"seed": -3}, "seed"),
        ({"shift_px": -0.5}, r"shift_px: -0.5\. Must be a number in \[0.0, 3.0\]"),
        ({"noise": float("nan")}, "noise"),
        ({"res": 0}, r"res: 0\. Must be a number in \(0.0"),
        ({"crs": "EPSG:not-a-code"}, "Invalid crs"),
        ({"origin": (1.0,)}, "origin"),
        ({"height": 64.0}, "height"),
    ],
)
def test_make_scene_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        make_scene(**kwargs)
    assert isinstance(info.value, InputError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dtype": "int8"}, "dtype: 'int8'. Must be one of"),
        ({"tile": 100}, "multiple of 16"),
        ({"scale": -1.0}, "scale"),
        ({"compress": "jpeg"}, "compress"),
        ({"nodata": 70000}, r"nodata: 70000\. Must be an integer in \[0, 65535\]"),
    ],
)
def test_write_scene_rejects_bad_arguments(tmp_path, kwargs: dict, match: str) -> None:
    s = make_scene(height=32, width=32, n_changes=0)
    with pytest.raises(ConfigError, match=match):
        write_scene(s, tmp_path, **kwargs)
    assert not (tmp_path / "before.tif").exists()
