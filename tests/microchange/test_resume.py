"""Resume: a run interrupted (killed, crashed) and started again reuses what was finished.

The staging folder is keyed by the input checksums, the parameters and the code version; the
rerun reuses the fitted detector and every finished tile and gives byte-identical outputs.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from microchange.config import DetectConfig, PostprocessConfig, PreprocessConfig
from microchange.errors import NoOverlapError
from microchange.pipeline import finalise, run_detection, score
from microchange.synthetic import make_scene, write_scene
from microchange.types import (
    CHANGE_MASK,
    CHANGE_SCORE,
    CHANGES_TABLE,
    OUTPUT_NAMES,
    RUN_MANIFEST,
    STAGING_DIR,
    TILES_TABLE,
)

DATA_OUTPUTS = (CHANGE_MASK, CHANGE_SCORE, TILES_TABLE, CHANGES_TABLE)  # run.json has timings


def _same_outputs(a: Path, b: Path) -> None:
    for name in DATA_OUTPUTS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _resume(out: Path) -> dict:
    return json.loads((out / RUN_MANIFEST).read_text())["resume"]


def test_rerun_after_a_crash_reuses_the_fit_and_the_finished_tiles(
        planted_pair, tmp_path, monkeypatch) -> None:
    before, after, _ = planted_pair
    cfg = DetectConfig(method="cva", tile_size=32, batch_tiles=1)
    run_detection(before, after, tmp_path / "clean", cfg, threads=1)
    assert _resume(tmp_path / "clean") == {"attempt": 1, "fit_reused": False, "tiles_reused": 0}

    real, calls = score.make_mask, {"n": 0}

    def crash_at_tile_8(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:
            raise MemoryError("worker lost")
        return real(*args, **kwargs)

    monkeypatch.setattr(score, "make_mask", crash_at_tile_8)
    out = tmp_path / "out"
    with pytest.raises(MemoryError):
        run_detection(before, after, out, cfg, threads=1)
    assert not any((out / n).exists() for n in OUTPUT_NAMES)  # nothing under a final name
    (staging,) = (out / STAGING_DIR).iterdir()
    assert len(list((staging / "parts").glob("tile_*.json"))) == 7

    monkeypatch.setattr(score, "make_mask", real)
    calls["n"] = 0
    counted = []
    monkeypatch.setattr(score, "make_mask", lambda *a, **k: counted.append(1) or real(*a, **k))
    run_detection(before, after, out, cfg, threads=1)
    _same_outputs(out, tmp_path / "clean")
    tiles = json.loads((out / RUN_MANIFEST).read_text())["tiling"]["tiles"]
    assert _resume(out) == {"attempt": 2, "fit_reused": True, "tiles_reused": 7}
    assert len(counted) == tiles - 7  # only the unfinished tiles were scored again
    assert not (out / STAGING_DIR).exists()


def test_a_crash_while_finishing_then_a_rerun_gives_the_same_outputs(
        planted_pair, tmp_path, monkeypatch) -> None:
    """The minimum mapping unit never rewrites the scored masks, so finishing twice is safe."""
    before, after, _ = planted_pair
    cfg = DetectConfig(method="cva", tile_size=64, postprocess=PostprocessConfig(min_region_px=5),
                       preprocess=PreprocessConfig(radiometric="none", smoothing_sigma=0.0))
    run_detection(before, after, tmp_path / "clean", cfg)
    real = finalise.write_changes_table

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(finalise, "write_changes_table", crash)
    with pytest.raises(OSError, match="disk full"):
        run_detection(before, after, tmp_path / "out", cfg)
    (staging,) = (tmp_path / "out" / STAGING_DIR).iterdir()
    assert list((staging / "parts").glob("kept_*"))  # the 1-px region was removed in a tile
    monkeypatch.setattr(finalise, "write_changes_table", real)
    run_detection(before, after, tmp_path / "out", cfg)
    _same_outputs(tmp_path / "out", tmp_path / "clean")
    assert _resume(tmp_path / "out")["tiles_reused"] == 9
    run = json.loads((tmp_path / "out" / RUN_MANIFEST).read_text())
    assert run["counts"]["removed_by_min_region_px"] == 1


def test_other_parameters_do_not_reuse_an_interrupted_run(planted_pair, tmp_path,
                                                          monkeypatch) -> None:
    before, after, _ = planted_pair

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(finalise, "write_changes_table", crash)
    with pytest.raises(OSError):
        run_detection(before, after, tmp_path / "out", DetectConfig(method="cva", tile_size=64))
    monkeypatch.undo()
    run_detection(before, after, tmp_path / "out", DetectConfig(method="cva", tile_size=32))
    assert _resume(tmp_path / "out") == {"attempt": 1, "fit_reused": False, "tiles_reused": 0}
    # the other run's state stays for its own rerun (removed after a week)
    assert len(list((tmp_path / "out" / STAGING_DIR).iterdir())) == 1


def test_bad_input_leaves_no_staging(make_geotiff, tmp_path) -> None:
    import numpy as np

    nodata = np.full((1, 40, 40), 7, "uint16")
    b = make_geotiff(nodata, name="b.tif", nodata=7)
    a = make_geotiff(nodata, name="a.tif", nodata=7)
    with pytest.raises(NoOverlapError):
        run_detection(b, a, tmp_path / "out", DetectConfig(method="cva"))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_run_killed_with_sigkill_resumes_with_identical_outputs(tmp_path) -> None:
    """Kill the command line after some tiles (default deep method), run it again, compare."""
    paths = write_scene(make_scene(height=384, width=384, seed=3, n_changes=12), tmp_path / "in")
    args = [str(paths["before"]), str(paths["after"]), "--tile-size", "48"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "microchange.cli", "detect", *args]
    subprocess.run([*cmd, "--out", str(tmp_path / "clean")], env=env, check=True,
                   capture_output=True)

    out = tmp_path / "out"
    proc = subprocess.Popen([*cmd, "--out", str(out)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            if len(list(out.glob(f"{STAGING_DIR}/*/parts/tile_*.json"))) >= 20:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        else:
            pytest.fail("no tile was finished within 240 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not any((out / n).exists() for n in OUTPUT_NAMES)
    subprocess.run([*cmd, "--out", str(out)], env=env, check=True, capture_output=True)
    _same_outputs(out, tmp_path / "clean")
    resume = _resume(out)
    assert resume["fit_reused"] and resume["attempt"] == 2
    assert 20 <= resume["tiles_reused"] < 64
