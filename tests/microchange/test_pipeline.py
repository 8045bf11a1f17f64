"""End-to-end stages on tiny rasters: the output contract, invariance, atomic publication."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import rasterio
from pydantic import ValidationError

from microchange.config import DetectConfig, PreprocessConfig
from microchange.errors import UnknownMethodError
from microchange.pipeline import finalise, run_detection, score
from microchange.types import OUTPUT_NAMES, STAGING_DIR

RAW = PreprocessConfig(radiometric="none", smoothing_sigma=0.0)  # no smoothing: planted changes are recovered exactly


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_output_contract(planted_pair, tmp_path) -> None:
    before, after, truth = planted_pair
    out = tmp_path / "out"
    summary = run_detection(before, after, out, DetectConfig(tile_size=64, preprocess=RAW))
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)
    with rasterio.open(before) as ref, rasterio.open(out / "change_mask.tif") as m, \
            rasterio.open(out / "change_score.tif") as s:
        for ds in (m, s):
            assert ds.crs == ref.crs and ds.transform == ref.transform
            assert (ds.height, ds.width) == (ref.height, ref.width)
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
            assert ds.profile["compress"].lower() == "zstd"
        assert m.dtypes[0] == "uint8" and m.nodata == 255
        assert s.dtypes[0] == "float32" and np.isnan(s.nodata)
        mask = m.read(1)
    # the planted changes are found exactly (strong contrast) and nothing else
    np.testing.assert_array_equal(mask == 1, truth)
    assert summary["counts"]["changed_px"] == truth.sum() == 9 + 64 + 1

    import geopandas as gpd

    tiles = gpd.read_parquet(out / "tiles.parquet")
    assert tiles.crs.to_epsg() == 32633
    assert list(tiles.columns[:5]) == ["tile_id", "row_off", "col_off", "height", "width"]
    for col in ("n_valid", "changed_fraction", "score_mean", "score_p95", "score_max",
                "changed", "run_id", "geometry"):
        assert col in tiles.columns
    assert len(tiles) == 3 * 3 and tiles["n_valid"].sum() == 150 * 170
    assert tiles.geometry.union_all().area == pytest.approx(150 * 170 * 100)
    changes = gpd.read_parquet(out / "changes.parquet")
    assert changes.crs.to_epsg() == 32633
    assert sorted(changes["area_px"]) == [1, 9, 64]
    assert (changes["area_m2"] == changes["area_px"] * 100).all()
    assert (changes.geometry.area == changes["area_m2"]).all()
    # the 8x8 change at rows/cols 60..67 crosses the 64-px tile border: one polygon, 4 tiles
    big = changes[changes["area_px"] == 64].iloc[0]
    assert big.geometry.geom_type == "Polygon" and sorted(big["tile_ids"]) == [0, 1, 3, 4]
    score = _read(out / "change_score.tif")[60:68, 60:68].astype(np.float64)
    assert big["score_max"] == pytest.approx(score.max())
    assert big["score_mean"] == pytest.approx(score.mean())
    geo = json.loads(pq.read_schema(out / "changes.parquet").metadata[b"geo"])
    assert geo["version"] == "1.1.0" and geo["columns"]["geometry"]["encoding"] == "WKB"
    assert geo["columns"]["geometry"]["crs"]["id"]["code"] == 32633
    run = json.loads((out / "run.json").read_text())
    assert run["threshold"]["method"] == "value" and run["threshold"]["value"] == 0.0
    assert run["counts"]["regions"] == 3
    assert run["inputs"]["before"]["files"][0]["sha256"]
    assert run["parameters"]["tile_size"] == 64
    assert not (out / STAGING_DIR).exists()


@pytest.mark.parametrize("pre", [PreprocessConfig(radiometric="none", smoothing_sigma=0.0), PreprocessConfig(smoothing_sigma=1.0,
                                                                      log_transform=True)])
def test_mask_and_scores_do_not_depend_on_tile_size(planted_pair, tmp_path, pre) -> None:
    before, after, _ = planted_pair
    results = {}
    for size in (32, 64, 512):  # 150x170 is not a multiple of any; 512 = whole image
        out = tmp_path / f"t{size}"
        run_detection(before, after, out, DetectConfig(tile_size=size, preprocess=pre))
        results[size] = (_read(out / "change_mask.tif"), _read(out / "change_score.tif"))
        changes = pq.read_table(out / "changes.parquet").to_pydict()
        results[size] += (sorted(changes["area_px"]),)
    for size in (32, 64):
        np.testing.assert_array_equal(results[size][0], results[512][0])
        np.testing.assert_array_equal(results[size][1], results[512][1])
        assert results[size][2] == results[512][2]


def test_nodata_is_never_changed(make_geotiff, tmp_path) -> None:
    rng = np.random.default_rng(1)
    before = rng.normal(100, 5, (2, 60, 60)).astype("float32")
    after = before + rng.normal(0, 1, before.shape).astype("float32")
    after[:, 30:40, 30:40] += 80
    before[:, :10, :] = -1  # nodata strip at the top
    b = make_geotiff(before, name="b.tif", nodata=-1)
    a = make_geotiff(after, name="a.tif")
    out = tmp_path / "out"
    summary = run_detection(b, a, out, DetectConfig(tile_size=32,
                            preprocess=PreprocessConfig(smoothing_sigma=1.5)))
    mask, score = _read(out / "change_mask.tif"), _read(out / "change_score.tif")
    assert (mask[:10] == 255).all() and np.isnan(score[:10]).all()
    assert (mask[10:] != 255).all() and np.isfinite(score[10:]).all()
    assert mask[33:37, 33:37].min() == 1
    assert summary["counts"]["valid_px"] == 50 * 60


def test_failed_run_keeps_earlier_outputs_and_leaves_no_partial_file(
        planted_pair, tmp_path, monkeypatch) -> None:
    before, after, _ = planted_pair
    out = tmp_path / "out"
    run_detection(before, after, out, DetectConfig(tile_size=64))
    old = {n: (out / n).read_bytes() for n in OUTPUT_NAMES}

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(finalise, "write_changes_table", boom)
    with pytest.raises(OSError, match="disk full"):
        run_detection(before, after, out, DetectConfig(tile_size=32))
    # the staging folder stays for a rerun to resume (test_resume.py); nothing else is left
    assert sorted(p.name for p in out.iterdir()) == sorted([*OUTPUT_NAMES, STAGING_DIR])
    assert {n: (out / n).read_bytes() for n in OUTPUT_NAMES} == old


def test_unknown_method_fails_before_any_output(planted_pair, tmp_path) -> None:
    before, after, _ = planted_pair
    with pytest.raises(ValidationError, match=r"'cva', 'pca-kmeans', 'backbone' or 'learned'"):
        run_detection(before, after, tmp_path / "out", DetectConfig(method="magic"))
    unvalidated = DetectConfig.model_construct(method="magic")
    with pytest.raises(UnknownMethodError, match=r"unknown method 'magic': choose one of .*cva"):
        run_detection(before, after, tmp_path / "out", unvalidated)
    assert not (tmp_path / "out").exists()


def test_same_inputs_give_byte_identical_rasters(planted_pair, tmp_path) -> None:
    before, after, _ = planted_pair
    for name in ("a", "b"):
        run_detection(before, after, tmp_path / name, DetectConfig(tile_size=64))
    for n in ("change_mask.tif", "change_score.tif"):
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes()


def test_learned_outputs_do_not_depend_on_the_cpu_count(planted_pair, tmp_path,
                                                       monkeypatch) -> None:
    """The network trained with 1 or 2 CPUs (a Dask worker, a laptop) gives identical rasters."""
    before, after, _ = planted_pair
    for n in ("1", "2"):
        monkeypatch.setenv("OMP_NUM_THREADS", n)
        run_detection(before, after, tmp_path / f"c{n}", DetectConfig(method="learned"))
    for name in ("change_mask.tif", "change_score.tif"):
        assert (tmp_path / "c1" / name).read_bytes() == (tmp_path / "c2" / name).read_bytes()


def test_scoring_threads_do_not_change_outputs(planted_pair, tmp_path) -> None:
    """Tiles scored by 1 or 3 threads (batches taken in turn) give byte-identical rasters."""
    before, after, _ = planted_pair
    ticks: list[tuple[int, int]] = []
    for n in (1, 3):
        run_detection(before, after, tmp_path / f"t{n}", DetectConfig(tile_size=32, batch_tiles=2),
                      threads=n, progress=lambda done, total: ticks.append((done, total)))
    for name in ("change_mask.tif", "change_score.tif"):
        assert (tmp_path / "t1" / name).read_bytes() == (tmp_path / "t3" / name).read_bytes()
    total = ticks[-1][1]
    assert total > 6 and ticks[-1][0] == total
    assert [d for d, _ in ticks[len(ticks) // 2:]] == sorted(d for d, _ in ticks[len(ticks) // 2:])


def test_a_failing_scoring_thread_fails_the_run_cleanly(planted_pair, tmp_path, monkeypatch) -> None:
    """An error in one scoring thread stops the others, is raised, and leaves nothing behind."""
    before, after, _ = planted_pair
    real = score.make_mask
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(score, "make_mask", flaky)
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        run_detection(before, after, out, DetectConfig(tile_size=32, batch_tiles=1), threads=2)
    assert calls["n"] < 30  # the other thread stopped instead of scoring every tile
    # nothing under a final name; the staging folder stays for a rerun to resume
    assert [p.name for p in out.iterdir()] == [STAGING_DIR]
