"""Command line ``microchange evaluate``: metrics line, files, exit codes."""

import json

import pytest

from microchange.cli import main


@pytest.fixture
def run_and_truth(planted_pair, truth_raster, tmp_path):
    before, after, truth = planted_pair
    out = tmp_path / "out"
    assert main(["detect", str(before), str(after), "--out", str(out), "--tile-size", "64",
                 "--smoothing-sigma", "0", "-q"]) == 0
    gt = truth_raster(truth, value=7)
    return out, gt


def test_evaluate_prints_metrics_and_writes_files(run_and_truth, capsys) -> None:
    out, gt = run_and_truth
    code = main(["evaluate", str(out), "--truth", str(gt), "--changed-values", "7"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "precision 1.000, recall 1.000, F1 1.000" in printed
    assert "objects 3/3 (lt25 2/2 25to100 1/1 gt100 0/0)" in printed
    assert f"metrics: {out / 'metrics.json'}" in printed
    assert f"report: {out / 'report.html'}" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tp"] == 74 and metrics["encoding"]["changed_values"] == [7]


def test_evaluate_no_report_and_options(run_and_truth, capsys) -> None:
    out, gt = run_and_truth
    code = main(["evaluate", str(out), "--truth", str(gt), "--truth-threshold", "3",
                 "--ignore-values", "9", "--unchanged-values", "0", "--no-report"])
    assert code == 0 and "report:" not in capsys.readouterr().out
    assert not (out / "report.html").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["encoding"] == {"changed_values": [255], "ignore_values": [9],
                                   "unchanged_values": [0], "truth_threshold": 3.0}


def test_evaluate_missing_truth_exits_2(run_and_truth, tmp_path, capsys) -> None:
    out, _ = run_and_truth
    code = main(["evaluate", str(out), "--truth", str(tmp_path / "nope.tif")])
    err = capsys.readouterr().err
    assert code == 2
    assert "truth raster" in err and "nope.tif' does not exist" in err and "Traceback" not in err


def test_evaluate_folder_without_run_exits_2(tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    for folder in ("empty", "missing"):
        code = main(["evaluate", str(tmp_path / folder), "--truth", str(tmp_path / "gt.tif")])
        assert code == 2
        assert "microchange detect" in capsys.readouterr().err
