"""Bad inputs: exit 2 (or a failed flow run) with one clear message, and outputs left alone.

Every case runs the command twice: into a fresh ``--out`` (nothing may be created) and into a
folder holding the outputs of an earlier run (every byte must stay as it was). The message must
name the file or option, say what is wrong and how to fix it, with no traceback. A pickle payload
in a checkpoint or weights file must never run: it would create a marker file.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning

from microchange.cli import main

ORIGIN = (500_000.0, 4_000_000.0)
CVA = ("--method", "cva", "--tile-size", "32")
FIX = ("give", "use", "check", "drop", "choose", "select", "retrain", "set", "crop", "georeference",
       "omit", "copy", "list", "run", "train", "make", "resize")
"""One of these words says how to fix the input."""


def write_tif(path: Path, data: np.ndarray, *, crs: str | None = "EPSG:32633",
              origin: tuple[float, float] = ORIGIN, res: float = 10.0,
              nodata: float | None = None) -> Path:
    """A (C, H, W) array as a GeoTIFF (tiled 16 x 16 when large enough)."""
    if data.ndim == 2:
        data = data[None]
    count, height, width = data.shape
    profile: dict[str, Any] = {"driver": "GTiff", "width": width, "height": height,
                               "count": count, "dtype": data.dtype}
    if nodata is not None:
        profile["nodata"] = nodata
    if crs is not None:
        profile.update(crs=crs, transform=Affine(res, 0, origin[0], 0, -res, origin[1]))
    if height >= 16 and width >= 16:
        profile.update(tiled=True, blockxsize=16, blockysize=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
    return path


class _Payload:
    """Unpickling this creates the marker file (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def _make_inputs(d: Path) -> None:
    import torch

    from microchange.features import checkpoints

    rng = np.random.default_rng(3)
    before = rng.normal(100, 10, (3, 48, 48)).astype("float32")
    after = before + rng.normal(0, 1, before.shape).astype("float32")
    after[:, 20:24, 20:24] += 80
    write_tif(d / "before.tif", before)
    write_tif(d / "after.tif", after)
    write_tif(d / "two_bands.tif", after[:2])
    write_tif(d / "far.tif", after, origin=(ORIGIN[0] + 1e5, ORIGIN[1]))
    write_tif(d / "not_georef.tif", after, crs=None)
    write_tif(d / "all_nodata.tif", np.zeros_like(after), nodata=0)
    write_tif(d / "all_nan.tif", np.full_like(after, np.nan))
    inf = np.full_like(after, np.inf)
    inf[:, ::2] = -np.inf
    write_tif(d / "all_inf.tif", inf)
    write_tif(d / "beyond_float32.tif", after.astype("float64") * 1e300)
    raw = (d / "before.tif").read_bytes()
    (d / "truncated.tif").write_bytes(raw[: len(raw) * 6 // 10])  # header intact, pixels cut
    (d / "cut_header.tif").write_bytes(raw[:64])
    damaged = bytearray(raw)  # ImageWidth 48 -> 40000: the block index no longer fits
    assert damaged[8 + 2:8 + 4] == b"\x00\x01" and damaged[8 + 10:8 + 12] == b"\x30\x00"
    damaged[8 + 10:8 + 12] = (40000).to_bytes(2, "little")
    (d / "bad_width.tif").write_bytes(bytes(damaged))
    write_tif(d / "site_grid.tif", after, crs='LOCAL_CS["site grid",UNIT["metre",1],'
              'AXIS["Easting",EAST],AXIS["Northing",NORTH]]')
    (d / "zero.tif").write_bytes(b"")
    (d / "text.tif").write_text("this is not a raster\n")
    (d / "no_rasters").mkdir()
    (d / "no_rasters" / "readme.txt").write_text("no raster here\n")
    (d / "a_file").write_text("a file, not a folder\n")
    truth = np.zeros((48, 48), "uint8")
    truth[20:24, 20:24] = 255
    write_tif(d / "truth.tif", truth)
    write_tif(d / "truth_small.tif", truth[:30, :30])
    raw = (d / "truth.tif").read_bytes()
    (d / "truth_truncated.tif").write_bytes(raw[: len(raw) // 2])
    # checkpoints and weights
    marker = d / "PAYLOAD_RAN"
    (d / "random.ckpt").write_bytes(np.random.default_rng(0).bytes(4096))
    (d / "pickle.ckpt").write_bytes(pickle.dumps(_Payload(marker)))
    torch.save({"state_dict": _Payload(marker)}, d / "torch_pickle.ckpt")
    torch.save({"weights": torch.zeros(3)}, d / "other_torch.ckpt")
    checkpoints.save(d / "two_band_model.ckpt", {"w": torch.zeros(2)},
                     {"bands": 2, "objective": "cross", "architecture": {}})
    raw = (d / "two_band_model.ckpt").read_bytes()
    (d / "truncated.ckpt").write_bytes(raw[: len(raw) // 2])
    (d / "bad.json").write_text("{not json")
    (d / "list.json").write_text("[1, 2]")
    (d / "cva_model.json").write_text(json.dumps({"method": "cva", "deep": {"model": "x.ckpt"}}))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every input of the matrix, and an earlier run's outputs in ``previous/``."""
    d = tmp_path_factory.mktemp("bad_inputs")
    _make_inputs(d)
    previous = d / "previous"
    assert main(["detect", str(d / "before.tif"), str(d / "after.tif"), "--out", str(previous),
                 *CVA, "-q"]) == 0
    assert main(["evaluate", str(previous), "--truth", str(d / "truth.tif"), "--no-report",
                 "-q"]) == 0
    (previous / "model.ckpt").write_bytes(b"an earlier checkpoint")
    return d


@dataclass(frozen=True)
class Case:
    """One bad command line: ``{f}`` is the inputs folder, ``{out}`` the output folder."""

    argv: tuple[str, ...]
    says: tuple[str, ...]
    """Substrings of the message (the file or option, what is wrong)."""
    gpu_free: bool = False
    """Only meaningful where torch sees no CUDA device."""


def detect(*args: str, says: tuple[str, ...], **kw: Any) -> Case:
    return Case(("detect", *args, "--out", "{out}"), says, **kw)


def train(*args: str, says: tuple[str, ...], **kw: Any) -> Case:
    return Case(("train", "--epochs", "1", *args, "--out", "{out}/model.ckpt"), says, **kw)


def evaluate(*args: str, says: tuple[str, ...]) -> Case:
    return Case(("evaluate", *args), says)


B, A = "{f}/before.tif", "{f}/after.tif"
CUDA_SAYS = ("--device cuda", "no CUDA GPU is available", "--device cpu")

CASES: dict[str, Case] = {
    # -- inputs that are not (readable) rasters ---------------------------------------------
    "missing-before": detect("{f}/missing.tif", A, *CVA, says=("missing.tif", "does not exist")),
    "missing-after": detect(B, "{f}/missing.tif", *CVA, says=("missing.tif", "does not exist")),
    "folder-without-rasters": detect("{f}/no_rasters", A, *CVA,
                                     says=("no_rasters", "holds no raster")),
    "text-file": detect("{f}/text.tif", A, *CVA, says=("text.tif", "cannot read")),
    "zero-bytes": detect(B, "{f}/zero.tif", *CVA, says=("zero.tif", "cannot read")),
    "truncated-pixels-before": detect("{f}/truncated.tif", A, *CVA,
                                      says=("BEFORE", "truncated.tif", "truncated or corrupt")),
    "truncated-pixels-after": detect(B, "{f}/truncated.tif", *CVA,
                                     says=("AFTER", "truncated.tif", "truncated or corrupt")),
    "truncated-header": detect("{f}/cut_header.tif", A, *CVA, says=("cut_header.tif",)),
    "damaged-width": detect("{f}/bad_width.tif", A, *CVA,
                            says=("bad_width.tif", "corrupt")),
    "crs-without-transformation": detect(B, "{f}/site_grid.tif", *CVA,
                                         says=("site_grid.tif", "cannot resample", "gdalwarp")),
    # -- rasters that do not make a pair ----------------------------------------------------
    "band-count-mismatch": detect(B, "{f}/two_bands.tif", *CVA,
                                  says=("two_bands.tif", "has 2", "--bands")),
    "band-out-of-range": detect(B, A, *CVA, "--bands", "1,7", says=("band(s) [7]", "1..3")),
    "no-overlap": detect(B, "{f}/far.tif", *CVA, says=("far.tif", "does not overlap")),
    "one-georeferenced": detect(B, "{f}/not_georef.tif", *CVA,
                                says=("not_georef.tif", "is not", "georeference")),
    "all-nodata": detect("{f}/all_nodata.tif", A, *CVA, says=("all_nodata.tif", "no valid pixel")),
    "all-nan": detect(B, "{f}/all_nan.tif", *CVA, says=("all_nan.tif", "no valid pixel")),
    "all-infinite": detect(B, "{f}/all_inf.tif", *CVA, says=("all_inf.tif", "no valid pixel")),
    "float64-beyond-float32": detect(B, "{f}/beyond_float32.tif", *CVA,
                                     says=("beyond_float32.tif", "float32 range", "rescale")),
    # -- absurd or non-numeric options ------------------------------------------------------
    "tile-size-negative": detect(B, A, "--method", "cva", "--tile-size", "-64",
                                 says=("--tile-size", "greater than or equal to 32")),
    "tile-size-huge": detect(B, A, "--method", "cva", "--tile-size", "1000000000",
                             says=("--tile-size", "less than or equal to 8192")),
    "tile-size-not-a-number": detect(B, A, "--method", "cva", "--tile-size", "big",
                                     says=("--tile-size", "invalid int value: 'big'")),
    "threshold-garbage": detect(B, A, *CVA, "--threshold", "lots", says=("--threshold", "'lots'")),
    "threshold-fpr-not-a-number": detect(B, A, *CVA, "--threshold", "fpr:x",
                                         says=("--threshold", "'fpr:x'")),
    "smoothing-nan": detect(B, A, *CVA, "--smoothing-sigma", "nan", says=("--smoothing-sigma",)),
    "smoothing-infinite": detect(B, A, *CVA, "--smoothing-sigma", "inf",
                                 says=("--smoothing-sigma",)),
    "sample-pixels-tiny": detect(B, A, *CVA, "--sample-pixels", "3", says=("--sample-pixels",)),
    "seed-negative": detect(B, A, *CVA, "--seed", "-1", says=("--seed",)),
    "unknown-method": detect(B, A, "--method", "magic", says=("--method", "invalid choice")),
    "config-not-json": detect(B, A, *CVA, "--config", "{f}/bad.json", says=("bad.json", "JSON")),
    "config-not-an-object": detect(B, A, *CVA, "--config", "{f}/list.json",
                                   says=("list.json", "list")),
    "output-is-a-file": Case(("detect", B, A, "--out", "{f}/a_file", *CVA),
                             says=("a_file", "is a file")),
    # -- options that do not apply to the method --------------------------------------------
    "model-with-cva": detect(B, A, *CVA, "--model", "{f}/missing.ckpt",
                             says=("model=", "applies to method 'learned'", "not 'cva'")),
    "model-pickle-with-cva": detect(B, A, *CVA, "--model", "{f}/pickle.ckpt",
                                    says=("model=", "applies to method 'learned'")),
    "model-in-config-with-cva": detect(B, A, "--config", "{f}/cva_model.json",
                                       says=("model=", "applies to method 'learned'")),
    "weights-with-cva": detect(B, A, *CVA, "--weights", "{f}/random.ckpt",
                               says=("weights=", "applies to method 'backbone'")),
    "weights-with-learned": detect(B, A, "--method", "learned", "--weights", "{f}/random.ckpt",
                                   says=("weights=", "applies to method 'backbone'")),
    "objective-with-cva": detect(B, A, *CVA, "--objective", "dae",
                                 says=("objective=", "applies to method 'learned'")),
    "objective-with-backbone": detect(B, A, "--method", "backbone", "--objective", "dae",
                                      says=("objective=", "applies to method 'learned'")),
    "model-with-backbone": detect(B, A, "--method", "backbone", "--model", "{f}/missing.ckpt",
                                  says=("model=", "applies to method 'learned'")),
    "backbone-with-learned": detect(B, A, "--method", "learned", "--backbone", "resnet34",
                                    says=("backbone=", "applies to method 'backbone'")),
    "epochs-with-pca-kmeans": detect(B, A, "--method", "pca-kmeans", "--epochs", "3",
                                     says=("epochs=", "applies to method 'learned'")),
    "precision-with-cva": detect(B, A, *CVA, "--precision", "bf16",
                                 says=("precision=", "'backbone' or 'learned'")),
    "device-cuda-with-cva": detect(B, A, *CVA, "--device", "cuda",
                                   says=CUDA_SAYS,
                                   gpu_free=True),
    "device-cuda-with-learned": detect(B, A, "--method", "learned", "--device", "cuda",
                                       says=CUDA_SAYS,
                                       gpu_free=True),
    # -- checkpoints and weights ------------------------------------------------------------
    "checkpoint-missing": detect(B, A, "--model", "{f}/missing.ckpt",
                                 says=("missing.ckpt", "does not exist")),
    "checkpoint-is-a-folder": detect(B, A, "--model", "{f}/no_rasters",
                                     says=("no_rasters", "is a folder")),
    "checkpoint-random-bytes": detect(B, A, "--model", "{f}/random.ckpt",
                                      says=("random.ckpt", "not a torch checkpoint")),
    "checkpoint-truncated": detect(B, A, "--model", "{f}/truncated.ckpt",
                                   says=("truncated.ckpt",)),
    "checkpoint-pickle-payload": detect(B, A, "--model", "{f}/pickle.ckpt",
                                        says=("pickle.ckpt",)),
    "checkpoint-torch-pickle-payload": detect(B, A, "--model", "{f}/torch_pickle.ckpt",
                                              says=("torch_pickle.ckpt", "refused")),
    "checkpoint-other-torch-file": detect(B, A, "--model", "{f}/other_torch.ckpt",
                                         says=("other_torch.ckpt", "not a microchange")),
    "checkpoint-other-bands": detect(B, A, "--model", "{f}/two_band_model.ckpt",
                                     "--tile-size", "32",
                                     says=("two_band_model.ckpt", "trained on 2 band(s)",
                                           "has 3")),
    "weights-random-bytes": detect(B, A, "--method", "backbone", "--weights", "{f}/random.ckpt",
                                   says=("random.ckpt", "state dict")),
    "weights-raw-pickle-payload": detect(B, A, "--method", "backbone", "--weights",
                                         "{f}/pickle.ckpt", says=("pickle.ckpt",)),
    "weights-pickle-payload": detect(B, A, "--method", "backbone", "--weights",
                                     "{f}/torch_pickle.ckpt", says=("torch_pickle.ckpt",)),
    # -- train ------------------------------------------------------------------------------
    "train-missing-before": train("{f}/missing.tif", A, says=("missing.tif", "does not exist")),
    "train-truncated-after": train(B, "{f}/truncated.tif", says=("truncated.tif", "truncated")),
    "train-band-mismatch": train(B, "{f}/two_bands.tif", says=("two_bands.tif", "--bands")),
    "train-model": train(B, A, "--model", "{f}/two_band_model.ckpt",
                         says=("--model", "applies to `microchange detect --method learned")),
    "train-scorer": train(B, A, "--scorer", "distance",
                          says=("--scorer", "applies to `microchange detect`")),
    "train-threshold": train(B, A, "--threshold", "otsu",
                             says=("--threshold", "applies to `microchange detect`")),
    "train-weights": train(B, A, "--weights", "{f}/random.ckpt",
                           says=("--weights", "--method backbone")),
    "train-epochs-zero": train(B, A, "--epochs", "0", says=("--epochs", "greater than or equal")),
    "train-objective-unknown": train(B, A, "--objective", "magic",
                                     says=("--objective", "invalid choice")),
    "train-out-is-a-folder": Case(("train", B, A, "--out", "{f}/no_rasters", "--epochs", "1"),
                                  says=("no_rasters", "is a folder")),
    "train-device-cuda": train(B, A, "--device", "cuda", says=CUDA_SAYS, gpu_free=True),
    # -- evaluate ---------------------------------------------------------------------------
    "evaluate-no-run-folder": evaluate("{f}/missing_run", "--truth", "{f}/truth.tif",
                                       says=("missing_run", "is not a folder")),
    "evaluate-folder-without-run": evaluate("{f}/no_rasters", "--truth", "{f}/truth.tif",
                                            says=("change_mask.tif", "not found")),
    "evaluate-truth-missing": evaluate("{out}", "--truth", "{f}/missing.tif",
                                       says=("missing.tif", "does not exist")),
    "evaluate-truth-text": evaluate("{out}", "--truth", "{f}/text.tif",
                                    says=("text.tif", "cannot read")),
    "evaluate-truth-truncated": evaluate("{out}", "--truth", "{f}/truth_truncated.tif",
                                         says=("truth_truncated.tif", "truncated or corrupt")),
    "evaluate-truth-other-size": evaluate("{out}", "--truth", "{f}/truth_small.tif",
                                          says=("truth_small.tif", "30x30")),
    "evaluate-truth-threshold-nan": evaluate("{out}", "--truth", "{f}/truth.tif",
                                             "--truth-threshold", "nan",
                                             says=("--truth-threshold", "not a finite number")),
    "evaluate-values-not-numbers": evaluate("{out}", "--truth", "{f}/truth.tif",
                                            "--changed-values", "high",
                                            says=("--changed-values", "invalid int value")),
    "evaluate-value-changed-and-unchanged": evaluate(
        "{out}", "--truth", "{f}/truth.tif", "--changed-values", "255", "--unchanged-values",
        "0", "255", says=("[255]", "--changed-values", "--unchanged-values")),
}


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) and its bytes."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit code and stderr of ``microchange ARGV`` run in this process."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def assert_clear_message(err: str, says: tuple[str, ...]) -> None:
    assert "Traceback" not in err, err
    assert "error:" in err, err
    for text in says:
        assert text in err, f"{text!r} not in {err!r}"
    assert any(word in err.lower() for word in FIX), f"no fix in {err!r}"


@pytest.fixture(scope="module")
def cuda_visible() -> bool:
    from microchange.features.devices import cuda_available

    return cuda_available()


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_and_leaves_outputs_alone(name: str, files: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    cuda_visible: bool) -> None:
    case = CASES[name]
    if case.gpu_free and cuda_visible:
        pytest.skip("a CUDA device is visible here")
    marker = files / "PAYLOAD_RAN"

    def argv(out: Path) -> list[str]:
        return [a.format(f=files, out=out) for a in case.argv]

    uses_out = any("{out}" in a for a in case.argv)
    if uses_out and case.argv[0] != "evaluate":  # a fresh folder stays absent
        fresh = tmp_path / "fresh"
        code, err = run_cli(argv(fresh), capsys)
        assert code == 2, err
        assert_clear_message(err, case.says)
        assert not fresh.exists(), sorted(fresh.rglob("*"))
    out = tmp_path / "out"  # an earlier run's outputs stay as they were
    shutil.copytree(files / "previous", out)
    before = _snapshot(out), _snapshot(files)
    code, err = run_cli(argv(out), capsys)
    assert code == 2, err
    assert_clear_message(err, case.says)
    assert (_snapshot(out), _snapshot(files)) == before
    assert not marker.exists()


def test_the_matrix_is_big_enough() -> None:
    assert len(CASES) >= 35


# -- the flow refuses the same inputs ---------------------------------------------------------

FLOW_CASES: dict[str, tuple[Callable[[Path], dict[str, Any]], tuple[str, ...]]] = {
    "missing-before": (lambda f: {"before": str(f / "missing.tif")},
                       ("missing.tif", "does not exist")),
    "truncated-before": (lambda f: {"before": str(f / "truncated.tif")},
                         ("truncated.tif", "truncated or corrupt")),
    "band-count-mismatch": (lambda f: {"after": str(f / "two_bands.tif")},
                            ("two_bands.tif", "--bands")),
    "no-overlap": (lambda f: {"after": str(f / "far.tif")}, ("far.tif", "does not overlap")),
    "all-nan": (lambda f: {"after": str(f / "all_nan.tif")}, ("all_nan.tif", "no valid pixel")),
    "output-is-a-file": (lambda f: {"out": str(f / "a_file")}, ("a_file", "is a file")),
    "tile-size-negative": (lambda f: {"config": {"method": "cva", "tile_size": -1}},
                           ("tile_size", "greater than or equal to 32")),
    "threshold-garbage": (lambda f: {"config": {"method": "cva", "threshold": "lots"}},
                          ("threshold", "'lots'")),
    "model-with-cva": (lambda f: {"config": {"method": "cva",
                                              "deep": {"model": str(f / "pickle.ckpt")}}},
                       ("model=", "applies to method 'learned'")),
    "device-with-cva": (lambda f: {"config": {"method": "cva", "deep": {"device": "cuda"}}},
                        ("device=", "applies to method 'backbone' or 'learned'")),
    "checkpoint-pickle-payload": (
        lambda f: {"config": {"method": "learned", "deep": {"model": str(f / "pickle.ckpt")}}},
        ("pickle.ckpt", "not a torch checkpoint")),
    "checkpoint-torch-pickle-payload": (
        lambda f: {"config": {"method": "learned",
                              "deep": {"model": str(f / "torch_pickle.ckpt")}}},
        ("torch_pickle.ckpt", "refused")),
    "unknown-field": (lambda f: {"config": {"method": "cva", "tile": 64}},
                      ("tile", "Extra inputs are not permitted")),
}


@pytest.mark.parametrize("name", list(FLOW_CASES))
def test_flow_run_fails_on_bad_input_with_a_clear_message(name: str, prefect_harness: None,
                                                          files: Path, tmp_path: Path) -> None:
    from microchange.flows.detect import detect_changes

    make, says = FLOW_CASES[name]
    out = tmp_path / "out"
    shutil.copytree(files / "previous", out)
    params: dict[str, Any] = {"before": str(files / "before.tif"),
                              "after": str(files / "after.tif"), "out": str(out),
                              "config": {"method": "cva", "tile_size": 32}}
    params.update(make(files))
    before = _snapshot(out), _snapshot(files)
    state = detect_changes(**params, return_state=True)
    assert state.is_failed()
    for text in says:
        assert text in state.message, state.message
    assert "Traceback" not in state.message
    assert (_snapshot(out), _snapshot(files)) == before
    assert not (files / "PAYLOAD_RAN").exists()


def test_catalog_with_a_broken_entry_runs_the_others(prefect_harness, files: Path,
                                                     tmp_path: Path) -> None:
    import yaml

    from microchange.config import DetectConfig
    from microchange.flows.catalog import detect_changes_catalog

    f = files
    areas = [
        {"name": "good", "acquisitions": [{"date": "2026-01-01", "path": str(f / "before.tif")},
                                          {"date": "2026-02-01", "path": str(f / "after.tif")}]},
        {"name": "cut", "acquisitions": [
            {"date": "2026-01-01", "path": str(f / "before.tif")},
            {"date": "2026-02-01", "path": str(f / "truncated.tif")}]},
        {"name": "text", "acquisitions": [
            {"date": "2026-01-01", "path": str(f / "text.tif")},
            {"date": "2026-02-01", "path": str(f / "after.tif")}]},
        {"name": "bad name!", "acquisitions": []},  # a broken entry: reported, skipped
    ]
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(yaml.safe_dump({"areas": areas}))
    out = tmp_path / "out"
    state = detect_changes_catalog(str(catalog), str(out),
                                   DetectConfig(method="cva", tile_size=32), return_state=True)
    assert state.is_failed()
    assert "truncated.tif" in state.message and "text.tif" in state.message
    assert "bad name!" in state.message
    assert "Traceback" not in state.message
    assert (out / "good" / "2026-01-01_2026-02-01" / "change_mask.tif").is_file()
    assert not (out / "cut" / "2026-01-01_2026-02-01" / "change_mask.tif").exists()
    assert (out / "summary.parquet").is_file()


def test_payload_marker_would_be_created_by_a_plain_unpickle(tmp_path: Path) -> None:
    """The marker proves something: unpickling the payload without protection creates it."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Payload(marker))).close()  # the point of the test
    assert marker.exists()
    os.remove(marker)
