"""One vocabulary: flags are config fields, runners are chosen one way, options apply or fail."""

import argparse
import json
from typing import Literal, get_args, get_origin

import pytest

from microchange.cli import build_parser, main
from microchange.cli.main import TRAIN_EXCLUDES
from microchange.cli.options import CONFIG_SECTIONS, config_from_args, flag
from microchange.config import DetectConfig


def _subparser(name: str) -> argparse.ArgumentParser:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices[name]


def _fields() -> dict[str, object]:
    out = {n: f for n, f in DetectConfig.model_fields.items() if n not in CONFIG_SECTIONS}
    for section in CONFIG_SECTIONS:
        out.update(DetectConfig.model_fields[section].annotation.model_fields)
    return out


def _options(name: str) -> dict[str, argparse.Action]:
    return {opt: a for a in _subparser(name)._actions for opt in a.option_strings}


def test_every_config_field_is_a_flag_of_the_same_name_with_its_choices() -> None:
    options = _options("detect")
    for name, field in _fields().items():
        action = options[flag(name)]
        assert action.dest == name
        literal = [a for a in (field.annotation, *get_args(field.annotation))
                   if get_origin(a) is Literal]
        if literal:
            assert tuple(action.choices) == get_args(literal[0])


def test_train_takes_the_preprocessing_options_and_a_config_file() -> None:
    options = _options("train")
    for name in _fields():  # a detect-only flag is refused with a message (hidden from help)
        action = options.get(flag(name))
        offered = action is not None and action.help is not argparse.SUPPRESS
        assert offered == (name not in TRAIN_EXCLUDES), name
    assert "--config" in options and "--smoothing-sigma" in options


@pytest.mark.parametrize("command", ["detect", "train", "evaluate", "demo"])
def test_every_command_chooses_its_runner_with_one_flag(command) -> None:
    options = _options(command)
    assert "--runner" in options
    assert not {"--prefect", "--no-prefect", "--dask"} & set(options)


def test_scheduler_address_never_swallows_a_positional_argument() -> None:
    args = build_parser().parse_args(["detect", "--runner", "dask", "b.tif", "a.tif", "--out", "o"])
    assert (args.before, args.after, args.scheduler) == ("b.tif", "a.tif", None)


@pytest.mark.parametrize(("args", "message"), [
    (["--runner", "dask", "--threads", "2"], "--threads applies to --runner local or prefect"),
    (["--workers", "2"], "--workers applies to --runner dask, not local"),
    (["--runner", "prefect", "--workers", "2"], "--workers applies to --runner dask, not prefect"),
    (["--scheduler", "tcp://h:8786"], "--scheduler applies to --runner dask, not local"),
    (["--runner", "dask", "--scheduler", "tcp://h:8786", "--workers", "2"],
     "--workers sizes a LocalCluster"),
    (["--threads", "0"], "--threads 0: give a positive whole number"),
])
def test_concurrency_options_only_where_they_apply(tmp_path, capsys, args, message) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["detect", "b.tif", "a.tif", "--out", str(tmp_path / "o"), *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--min-region-px", "4", "--min-region-m2", "100"], "are both given"),
    (["--model", "x.ckpt", "--method", "cva"], "model='x.ckpt' applies to method 'learned', not 'cva'"),
    (["--weights", "w.pth", "--method", "learned"], "applies to method 'backbone', not 'learned'"),
    (["--epochs", "3", "--method", "backbone"], "applies to method 'learned', not 'backbone'"),
    (["--device", "cpu", "--method", "cva"], "device='cpu' applies to method 'backbone' or 'learned', not 'cva'"),
])
def test_options_that_do_not_apply_are_errors(planted_pair, tmp_path, capsys, args,
                                              message) -> None:
    before, after, _ = planted_pair
    code = main(["detect", str(before), str(after), "--out", str(tmp_path / "o"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_coregistration_can_be_switched_off() -> None:
    args = build_parser().parse_args(["detect", "b", "a", "--out", "o", "--no-coregister"])
    assert config_from_args(args).preprocess.coregister is False
    args = build_parser().parse_args(["detect", "b", "a", "--out", "o"])
    assert config_from_args(args).preprocess.coregister is True


def test_flags_config_files_and_flow_parameters_merge_sensor_defaults_alike(tmp_path) -> None:
    """A partial sub-config keeps the sensor family's other defaults, whoever gives it."""
    from microchange.flows.detect import detect_changes

    partial = {"sensor": "sar", "preprocess": {"radiometric": "linear"}}
    path = tmp_path / "c.json"
    path.write_text(json.dumps(partial))
    from_file = config_from_args(build_parser().parse_args(
        ["detect", "b", "a", "--out", "o", "--config", str(path)]))
    from_flags = config_from_args(build_parser().parse_args(
        ["detect", "b", "a", "--out", "o", "--sensor", "sar", "--radiometric", "linear"]))
    from_flow = detect_changes.validate_parameters(
        {"before": "b", "after": "a", "out": "o", "config": partial})["config"]
    from_python = DetectConfig.model_validate(partial)
    assert from_file == from_flags == from_flow == from_python
    pre = from_file.preprocess
    assert (pre.radiometric, pre.log_transform, pre.speckle_window, pre.smoothing_sigma) == (
        "linear", True, 5, 1.5)
    assert from_file.postprocess.min_region_px == 9


def test_flags_override_the_config_file(tmp_path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"sensor": "sar", "preprocess": {"smoothing_sigma": 3.0},
                                "tile_size": 256}))
    cfg = config_from_args(build_parser().parse_args(
        ["detect", "b", "a", "--out", "o", "--config", str(path), "--smoothing-sigma", "2",
         "--min-region-m2", "50"]))
    assert (cfg.tile_size, cfg.preprocess.smoothing_sigma) == (256, 2.0)
    assert (cfg.postprocess.min_region_px, cfg.postprocess.min_region_m2) == (None, 50.0)


def test_train_reads_the_detect_config_file_but_only_for_learned(tmp_path, capsys) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"sensor": "sar", "threshold": "otsu"}))
    args = build_parser().parse_args(["train", "b", "a", "--out", "m.ckpt", "--config", str(path),
                                      "--speckle-window", "7", "--epochs", "2"])
    from microchange.cli.commands import _training_method

    cfg = config_from_args(args, validate=_training_method)
    assert (cfg.method, cfg.preprocess.speckle_window, cfg.deep.epochs) == ("learned", 7, 2)
    assert cfg.preprocess.log_transform is True  # the SAR defaults still apply
    path.write_text(json.dumps({"method": "cva"}))
    code = main(["train", "b.tif", "a.tif", "--out", str(tmp_path / "m.ckpt"), "--config",
                 str(path)])
    assert code == 2 and "training is for the 'learned' method only" in capsys.readouterr().err


def test_help_of_every_command_reads(capsys) -> None:
    for command in ("detect", "train", "evaluate", "demo", "methods"):
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: microchange {command}") and "None:" not in out


def test_threads_size_the_prefect_runner(monkeypatch, tmp_path, capsys) -> None:
    """--runner prefect --threads N runs the flow with N tile tasks at once."""
    import microchange.flows.detect as flows_detect

    seen = {}
    summary = {"out": str(tmp_path), "counts": {"changed_px": 0, "changed_fraction": 0.0,
                                                "regions": 0, "tiles": 1, "tiles_changed": 0},
               "threshold": {"method": "auto", "value": 1.0}}

    class FakeFlow:
        def with_options(self, task_runner):
            seen["runner"] = task_runner
            return lambda **kwargs: summary

    monkeypatch.setattr(flows_detect, "detect_changes", FakeFlow())
    assert main(["detect", "b.tif", "a.tif", "--out", str(tmp_path), "--runner", "prefect",
                 "--threads", "3"]) == 0
    assert type(seen["runner"]).__name__ == "ThreadPoolTaskRunner"
    assert seen["runner"]._max_workers == 3


def test_benchmarks_take_the_products_flags() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.accuracy import build_parser as accuracy_parser

    options = {o for a in accuracy_parser()._actions for o in a.option_strings}
    assert {"--smoothing-sigma", "--no-coregister", "--coregister-cell", "--radiometric",
            "--min-region-px", "--threshold", "--objective"} <= options
    assert "--sigma" not in options  # the benchmarks' own old name of --smoothing-sigma
