"""`microchange train`: checkpoint + loss curve, exit codes for bad options."""

from pathlib import Path

import pytest
import torch

from microchange.cli import main
from microchange.features import checkpoints


def test_train_writes_checkpoint_and_loss_curve(planted_pair, tmp_path, capsys) -> None:
    before, after, _ = planted_pair
    ckpt = tmp_path / "models" / "model.ckpt"
    code = main(["train", str(before), str(after), "--out", str(ckpt), "--epochs", "1",
                 "--device", "cpu", "--seed", "1"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert ckpt.is_file() and (tmp_path / "models" / "model.loss.png").is_file()
    assert f"checkpoint: {ckpt}" in out.out and "learned/cross: 1 epochs" in out.out
    assert "epoch 1/1" in out.err  # per-epoch progress
    meta = checkpoints.load(ckpt).metadata
    assert meta["bands"] == 4 and meta["training"]["seed"] == 1
    assert [p.name for p in (tmp_path / "models").iterdir()] != []
    assert not list((tmp_path / "models").glob(".*"))  # no temporary file left


def _score(out: Path) -> bytes:
    return (out / "change_score.tif").read_bytes()


def test_detect_uses_the_checkpoint(planted_pair, tmp_path, monkeypatch) -> None:
    """--model loads the checkpoint instead of training: the scores equal those of the same
    training done on the fly, and differ from those of the untrained network."""
    from microchange.features.learned import extractor

    before, after, _ = planted_pair
    ckpt = tmp_path / "model.ckpt"
    assert main(["train", str(before), str(after), "--out", str(ckpt), "--epochs", "1",
                 "--device", "cpu", "--seed", "1", "-q"]) == 0
    detect = ["detect", str(before), str(after), "--method", "learned", "--device", "cpu",
              "--seed", "1", "-q", "--out"]
    assert main([*detect, str(tmp_path / "fly"), "--epochs", "1"]) == 0

    loaded = []
    real_load = checkpoints.load
    monkeypatch.setattr(checkpoints, "load", lambda path: loaded.append(path) or real_load(path))

    def no_training(*args, **kwargs):
        raise AssertionError("detect --model trained a network")

    monkeypatch.setattr(extractor, "train_network", no_training)
    assert main([*detect, str(tmp_path / "ckpt"), "--model", str(ckpt)]) == 0
    assert {Path(p) for p in loaded} == {ckpt}
    assert _score(tmp_path / "ckpt") == _score(tmp_path / "fly")

    untrained = {"epochs_run": 0, "loss_history": []}
    monkeypatch.setattr(extractor, "train_network", lambda *args, **kwargs: dict(untrained))
    assert main([*detect, str(tmp_path / "untrained")]) == 0
    assert _score(tmp_path / "untrained") != _score(tmp_path / "ckpt")


def test_train_on_two_pairs(planted_pair, tmp_path, capsys) -> None:
    before, after, _ = planted_pair
    ckpt = tmp_path / "m.ckpt"
    code = main(["train", str(before), str(after), "--pair", str(after), str(before),
                 "--out", str(ckpt), "--epochs", "1", "--device", "cpu", "-q"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "sample px (first of 2 pairs)" in out.out
    assert checkpoints.load(ckpt).metadata["training"]["pairs"] == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_train_on_cuda_without_gpu_exits_2(planted_pair, tmp_path, capsys) -> None:
    before, after, _ = planted_pair
    code = main(["train", str(before), str(after), "--out", str(tmp_path / "m.ckpt"),
                 "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2
    assert "no CUDA GPU is available" in err and "--device cpu" in err and "Traceback" not in err
    assert not (tmp_path / "m.ckpt").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--epochs", "0"], "epochs (--epochs): Input should be greater than or equal to 1"),
    (["--bands", "1,9"], "band(s) [9] requested but BEFORE"),
])
def test_train_bad_options_exit_2(planted_pair, tmp_path, capsys, args, message) -> None:
    before, after, _ = planted_pair
    code = main(["train", str(before), str(after), "--out", str(tmp_path / "m.ckpt"), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_train_out_is_a_folder_exits_2(planted_pair, tmp_path, capsys) -> None:
    before, after, _ = planted_pair
    code = main(["train", str(before), str(after), "--out", str(tmp_path)])
    assert code == 2 and "is a folder" in capsys.readouterr().err


def test_detect_with_a_missing_model_exits_2(planted_pair, tmp_path, capsys) -> None:
    before, after, _ = planted_pair
    code = main(["detect", str(before), str(after), "--out", str(tmp_path / "o"), "--method",
                 "learned", "--model", str(tmp_path / "nope.ckpt")])
    err = capsys.readouterr().err
    assert code == 2 and "nope.ckpt" in err and "does not exist" in err
