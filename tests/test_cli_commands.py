"""Paths only the command line reaches: `methods`, `demo`, `detect --runner prefect | dask`."""

import json
import os
import subprocess
import sys
from pathlib import Path

from microchange.cli import main
from microchange.config import DetectConfig
from microchange.detector import METHODS, SCORERS

RASTERS = ("change_mask.tif", "change_score.tif")


def _same_rasters(a: Path, b: Path) -> None:
    for name in RASTERS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_methods_lists_what_the_registries_can_build(capsys) -> None:
    assert main(["methods"]) == 0
    methods, scorers = capsys.readouterr().out.splitlines()
    assert methods.startswith("methods: ") and scorers.startswith("scorers: ")
    assert methods.removeprefix("methods: ").split(", ") == list(METHODS)
    assert scorers.removeprefix("scorers: ").split(", ") == list(SCORERS)


def _demo(out: Path, *runner: str) -> list[str]:
    assert main(["demo", "--out", str(out), "--scene-size", "64", "--scene-seed", "2", "-q",
                 *runner]) == 0
    return [p.name for p in sorted(out.iterdir())]


def test_demo_detects_and_scores_a_synthetic_scene_with_the_defaults(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    names = _demo(out, "--runner", "local")
    printed = capsys.readouterr().out
    assert {"inputs", "change_mask.tif", "change_score.tif", "tiles.parquet",
            "changes.parquet", "run.json", "metrics.json", "report.html"} <= set(names)
    assert sorted(p.name for p in (out / "inputs").iterdir()) == [
        "after.tif", "before.tif", "truth.tif"]
    run = json.loads((out / "run.json").read_text())
    assert run["parameters"] == DetectConfig().model_dump(mode="json")  # the defaults
    assert run["inputs"]["before"]["path"].endswith("inputs/before.tif")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["truth"] == str((out / "inputs" / "truth.tif").resolve())
    assert metrics["object_recall"]["n_objects"] > 0 and metrics["recall"] > 0.5
    assert "synthetic scene 64x64 px" in printed
    assert (f"against the implanted truth: precision {metrics['precision']:.3f}, recall "
            f"{metrics['recall']:.3f}") in printed
    assert f"report: {out / 'report.html'}" in printed


def test_demo_runs_on_prefect_by_default_with_the_local_outputs(prefect_harness,
                                                                tmp_path) -> None:
    # folder names of their own: a flow run's artifact key is made from its folder's name
    _demo(tmp_path / "demo-local", "--runner", "local")
    _demo(tmp_path / "demo-flow")
    _same_rasters(tmp_path / "demo-local", tmp_path / "demo-flow")
    local, flow = (json.loads((tmp_path / d / "metrics.json").read_text())
                   for d in ("demo-local", "demo-flow"))
    for key in ("tp", "fp", "fn", "tn", "pr_auc", "roc_auc", "object_recall"):
        assert local[key] == flow[key], key
    assert (tmp_path / "demo-flow" / "report.html").is_file()


def _detect(pair, out: Path, *args: str) -> list[str]:
    before, after, _ = pair
    return ["detect", str(before), str(after), "--out", str(out), "--method", "cva",
            "--tile-size", "64", "-q", *args]


def test_detect_runner_prefect_gives_the_local_outputs(prefect_harness, planted_pair,
                                                       tmp_path) -> None:
    assert main(_detect(planted_pair, tmp_path / "local")) == 0
    assert main(_detect(planted_pair, tmp_path / "runner-prefect", "--runner", "prefect",
                        "--threads", "2")) == 0
    _same_rasters(tmp_path / "local", tmp_path / "runner-prefect")
    run = json.loads((tmp_path / "runner-prefect" / "run.json").read_text())
    assert run["counts"]["tiles"] == 9


def test_detect_runner_dask_from_a_shell_gives_the_local_outputs(planted_pair,
                                                                 tmp_path) -> None:
    """As a user runs it: a new process, no PREFECT_API_URL, a LocalCluster of one worker; the
    tile work goes to the cluster without any Prefect API (none is started)."""
    assert main(_detect(planted_pair, tmp_path / "local")) == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    res = subprocess.run([sys.executable, "-m", "microchange.cli",
                          *_detect(planted_pair, tmp_path / "dask", "--runner", "dask",
                                   "--workers", "1")],
                         check=False, capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "temporary server" not in res.stderr + res.stdout
    _same_rasters(tmp_path / "local", tmp_path / "dask")
    run = json.loads((tmp_path / "dask" / "run.json").read_text())
    assert run["sample"]["fitted_on"] == "dask (1 worker)"
