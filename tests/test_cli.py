"""Command line: exit codes, messages, progress."""

import json
import subprocess
import sys

import numpy as np
import pytest

from microchange.cli import main


def test_detect_success_prints_summary(planted_pair, tmp_path, capsys) -> None:
    before, after, _ = planted_pair
    code = main(["detect", str(before), str(after), "--out", str(tmp_path / "o"),
                 "--tile-size", "64", "--smoothing-sigma", "0"])
    out = capsys.readouterr()
    assert code == 0
    assert "changed 74 px" in out.out and "3 regions" in out.out
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["parameters"]["tile_size"] == 64


@pytest.mark.parametrize(("args", "message"), [
    (["--threshold", "median"], "invalid threshold 'median'"),
    (["--tile-size", "8"], "tile_size (--tile-size): Input should be greater than or equal to 32"),
    (["--bands", "1,9"], "band(s) [9] requested but BEFORE"),
])
def test_bad_options_exit_2_with_a_message(planted_pair, tmp_path, capsys, args, message) -> None:
    before, after, _ = planted_pair
    code = main(["detect", str(before), str(after), "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o" / "run.json").exists()


def test_bad_thread_count_exits_2(planted_pair, tmp_path, capsys) -> None:
    before, after, _ = planted_pair
    with pytest.raises(SystemExit) as exc:  # argparse's own exit
        main(["detect", str(before), str(after), "--out", str(tmp_path / "o"), "--threads", "0"])
    assert exc.value.code == 2
    assert "--threads 0: give a positive whole number, e.g. 2" in capsys.readouterr().err


def test_unknown_method_is_an_argparse_choice_error(planted_pair, tmp_path, capsys) -> None:
    before, after, _ = planted_pair
    with pytest.raises(SystemExit) as exc:
        main(["detect", str(before), str(after), "--out", str(tmp_path / "o"), "--method", "x"])
    assert exc.value.code == 2
    assert "invalid choice: 'x' (choose from 'cva', 'pca-kmeans', 'backbone', 'learned')" in (
        capsys.readouterr().err)


def test_missing_input_exit_2(planted_pair, tmp_path, capsys) -> None:
    before, _, _ = planted_pair
    code = main(["detect", str(before), str(tmp_path / "missing.tif"), "--out", str(tmp_path)])
    assert code == 2
    assert "missing.tif' does not exist" in capsys.readouterr().err


def test_config_file_and_sensor(planted_pair, tmp_path) -> None:
    before, after, _ = planted_pair
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"tile_size": 96, "threshold": "value:3"}))
    code = main(["detect", str(before), str(after), "--out", str(tmp_path / "o"),
                 "--config", str(cfg), "--sensor", "sar", "-q"])
    assert code == 0
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["parameters"]["tile_size"] == 96 and run["parameters"]["sensor"] == "sar"
    assert run["threshold"] == {"method": "value", "value": 3.0, "n_sample": 150 * 170,
                                "detail": None}


def test_python_m_help() -> None:
    res = subprocess.run([sys.executable, "-m", "microchange.cli", "detect", "--help"],
                         capture_output=True, text=True, check=True)
    assert "--tile-size" in res.stdout and "--sensor" in res.stdout


def test_unexpected_failure_exits_1(planted_pair, tmp_path, capsys, monkeypatch) -> None:
    from microchange.pipeline import run

    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(run, "fit_detection", boom)
    before, after, _ = planted_pair
    code = main(["detect", str(before), str(after), "--out", str(tmp_path / "o")])
    assert code == 1 and "kaboom" in capsys.readouterr().err
    # no output under a final name; the staging folder stays for a rerun to resume
    assert not [p for p in (tmp_path / "o").iterdir() if not p.name.startswith(".")]
    assert np.all([not p.name.endswith(".tmp") for p in (tmp_path / "o").glob("*")])
