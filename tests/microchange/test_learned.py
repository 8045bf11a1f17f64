"""The 'learned' extractor: training, scores, checkpoints, tile-size invariance, determinism."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from pydantic import ValidationError

from microchange.config import DeepConfig, DetectConfig
from microchange.detector import build_detector
from microchange.errors import ConfigError
from microchange.features import checkpoints
from microchange.pipeline import run_detection
from microchange.synthetic import make_scene, write_scene
from microchange.training import train_extractor

EPOCHS = 2


def _config(**deep) -> DetectConfig:
    deep = {"device": "cpu", "epochs": EPOCHS, **deep}
    return DetectConfig(method="learned", deep=DeepConfig(**deep))


def _with_model(config: DetectConfig, model: Path, **update) -> DetectConfig:
    deep = config.deep.model_copy(update={"model": str(model)})
    return config.model_copy(update={"deep": deep, **update})


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A 100 x 90 px 3-band scene (not a multiple of the tile sizes) with implanted changes."""
    s = make_scene(height=100, width=90, bands=3, seed=3, n_changes=6, noise=0.01)
    paths = write_scene(s, tmp_path_factory.mktemp("scene"))
    return paths, s.truth.astype(bool)


@pytest.fixture(scope="module")
def trained(scene, tmp_path_factory):
    """A checkpoint trained by train_extractor, and an on-the-fly detect run with the same seed."""
    paths, _ = scene
    root = tmp_path_factory.mktemp("learned")
    summary = train_extractor(paths["before"], paths["after"], root / "model.ckpt", _config())
    fly = root / "fly"
    run_detection(paths["before"], paths["after"], fly, _config())
    return summary, root / "model.ckpt", fly


def _mixed_bands(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BEFORE: three smooth, uncorrelated bands. AFTER: the same bands permuted, one negated
    (a sensor nuisance CVA sees everywhere, a 1x1 mapping a network learns), plus eight 4 x 4
    changes of 1.5 standard deviations per band.

    Returns:
        (3, n, n) float32 BEFORE and AFTER, and the (n, n) bool truth.
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    fields = np.stack([ndimage.gaussian_filter(rng.normal(size=(n, n)), 2) for _ in range(3)])
    fields = (fields - fields.mean((1, 2), keepdims=True)) / fields.std((1, 2), keepdims=True)
    after = np.stack([fields[1], -fields[2], fields[0]]) + rng.normal(0, 0.05, fields.shape)
    before = fields + rng.normal(0, 0.05, fields.shape)
    truth = np.zeros((n, n), bool)
    for _ in range(8):
        r, c = rng.integers(4, n - 8, 2)
        truth[r:r + 4, c:c + 4] = True
    after[:, truth] += rng.choice([-1, 1], (3, 1)) * 1.5
    return before.astype(np.float32), after.astype(np.float32), truth


def _auc(score: np.ndarray, truth: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    ok = np.isfinite(score)
    return float(roc_auc_score(truth[ok], score[ok]))


def test_training_learns_away_a_band_mixing_that_cva_flags() -> None:
    """The untrained network is the identity (deep CVA = CVA of z-scores, by design); trained on
    the pair it predicts each date from the other, so the residual of unchanged pixels shrinks
    and the changes stand out: a training that does not learn fails here."""
    from microchange.features.bands import BandFeatures
    from microchange.features.learned import LearnedFeatures
    from microchange.scoring.distance import CvaScorer
    from microchange.types import PairArrays

    before, after, truth = _mixed_bands()
    block = PairArrays(before, after, np.ones(truth.shape, bool), 0)
    bands = BandFeatures()
    bands.fit([block])
    cva = CvaScorer().score(bands.extract(block))
    ext = LearnedFeatures(objective="cross", device="cpu", epochs=8, patience=8)
    ext.fit([block])
    residual = CvaScorer().score(ext.extract(block))
    assert _auc(cva, truth) < 0.85  # the nuisance hides the changes from CVA
    assert _auc(residual, truth) > max(0.95, _auc(cva, truth) + 0.1)
    assert residual[~truth].mean() < 0.6 * cva[~truth].mean()
    t = ext.training
    assert t["best_loss"] < 0.9 * t["initial_loss"]


def test_a_learned_run_ranks_changes_that_a_cva_run_cannot(make_geotiff, tmp_path) -> None:
    """Through the whole pipeline (preprocessing, sample, scorer): the score map of 'learned'
    separates the changes from the mixed bands, CVA's does not."""
    before, after, truth = _mixed_bands()
    b = make_geotiff(before, name="b.tif")
    a = make_geotiff(after, name="a.tif")
    auc = {}
    for method, config in (("learned", _config(epochs=8, patience=8)),
                           ("cva", DetectConfig(method="cva"))):
        run_detection(b, a, tmp_path / method, config)
        auc[method] = _auc(_read(tmp_path / method / "change_score.tif"), truth)
    assert auc["cva"] < 0.8 and auc["learned"] > auc["cva"] + 0.15, auc


def test_train_extractor_summary_and_loss_curve(trained) -> None:
    summary, ckpt, _ = trained
    assert summary["checkpoint"] == str(ckpt) and summary["objective"] == "cross"
    assert summary["epochs"] == len(checkpoints.load(ckpt).metadata["training"]["loss_history"])
    assert Path(summary["loss_curve"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(ckpt.parent.glob(".microchange-train-*"))  # staging removed


def test_checkpoint_metadata(trained, scene) -> None:
    _, ckpt, _ = trained
    meta = checkpoints.load(ckpt).metadata
    assert meta["bands"] == 3 and meta["objective"] == "cross"
    assert meta["architecture"]["name"] == "cross-residual-cnn"
    assert meta["architecture"]["halo"] == 3
    assert np.asarray(meta["normalisation"]["mean"]).shape == (2, 3)
    assert len(meta["data"]["sample_sha256"]) == 64
    assert {Path(f["path"]).name for f in meta["data"]["inputs"]} == {"before.tif", "after.tif"}
    assert meta["versions"]["torch"] and meta["versions"]["microchange"]
    assert meta["created"] and meta["training"]["epochs_run"] >= 1


def test_training_on_more_pairs_of_the_sensor(trained, scene, tmp_path) -> None:
    """A second 3-band pair of another place joins the training set; the model scores both."""
    paths, truth = scene
    other = write_scene(make_scene(height=80, width=110, bands=3, seed=11, n_changes=4,
                                   noise=0.01), tmp_path / "other")
    ckpt = tmp_path / "two.ckpt"
    summary = train_extractor(paths["before"], paths["after"], ckpt, _config(),
                              more_pairs=[(other["before"], other["after"])])
    assert summary["pairs"] == 2
    meta = checkpoints.load(ckpt).metadata
    assert meta["training"]["pairs"] == 2
    assert [p["grid"] for p in meta["sample"]["pairs"]] == [
        {"height": 100, "width": 90}, {"height": 80, "width": 110}]
    assert len(meta["data"]["inputs"]) == 4
    assert meta["data"]["sample_sha256"] != checkpoints.load(trained[1]).metadata["data"][
        "sample_sha256"]
    run_detection(paths["before"], paths["after"], tmp_path / "o", _with_model(_config(), ckpt))
    score = _read(tmp_path / "o" / "change_score.tif")
    assert np.nanmean(score[truth]) > 2 * np.nanmean(score[~truth])


def test_training_pairs_with_another_band_count_are_refused(scene, tmp_path) -> None:
    paths, _ = scene
    four = write_scene(make_scene(height=60, width=60, bands=4, seed=12), tmp_path / "four")
    with pytest.raises(ConfigError, match="training pair 2 has 4 bands, the first pair 3"):
        train_extractor(paths["before"], paths["after"], tmp_path / "m.ckpt", _config(),
                        more_pairs=[(four["before"], four["after"])])
    assert not (tmp_path / "m.ckpt").exists()
    assert not list(tmp_path.glob(".microchange-train-*"))


def test_checkpoint_round_trip_equals_on_the_fly(trained, scene, tmp_path) -> None:
    paths, _ = scene
    _, ckpt, fly = trained
    run_detection(paths["before"], paths["after"], tmp_path / "ckpt", _with_model(_config(), ckpt))
    for name in ("change_score.tif", "change_mask.tif"):
        np.testing.assert_array_equal(_read(tmp_path / "ckpt" / name), _read(fly / name))


def test_scores_do_not_depend_on_the_tile_size(trained, scene, tmp_path) -> None:
    """Tiles of 32 and 64 px (100 x 90 raster) against the whole-raster on-the-fly run.

    oneDNN picks convolution kernels by input shape, so scores may differ by ~1 ulp between
    block shapes (exact with ``torch.backends.mkldnn`` disabled, at ~6x the inference time).
    """
    paths, _ = scene
    _, ckpt, fly = trained
    whole_score, whole_mask = _read(fly / "change_score.tif"), _read(fly / "change_mask.tif")
    for tile in (32, 64):
        out = tmp_path / f"t{tile}"
        run_detection(paths["before"], paths["after"], out,
                      _with_model(_config(), ckpt, tile_size=tile))
        np.testing.assert_array_equal(_read(out / "change_mask.tif"), whole_mask)
        np.testing.assert_allclose(_read(out / "change_score.tif"), whole_score, rtol=0,
                                   atol=1e-5)


def test_scoring_threads_share_the_cpus_and_keep_the_scores(trained, scene, tmp_path) -> None:
    """Two threads scoring tiles (one torch thread each) against one thread: same mask."""
    import torch

    paths, _ = scene
    _, ckpt, _ = trained
    before_threads = torch.get_num_threads()
    outs = []
    for n in (1, 2):
        out = tmp_path / f"threads{n}"
        run_detection(paths["before"], paths["after"], out,
                      _with_model(_config(), ckpt, tile_size=32), threads=n)
        outs.append(out)
    assert torch.get_num_threads() == before_threads
    np.testing.assert_array_equal(_read(outs[0] / "change_mask.tif"),
                                  _read(outs[1] / "change_mask.tif"))
    np.testing.assert_allclose(_read(outs[0] / "change_score.tif"),
                               _read(outs[1] / "change_score.tif"), rtol=0, atol=1e-5)


def test_run_json_records_device_and_training(trained) -> None:
    import json

    _, _, fly = trained
    features = json.loads((fly / "run.json").read_text())["features"]
    assert features["device"] == "cpu" and features["objective"] == "cross"
    training = features["training"]
    assert 1 <= training["epochs_run"] <= EPOCHS
    assert len(training["loss_history"]) == training["epochs_run"]


def test_cpu_training_is_deterministic(trained, scene, tmp_path) -> None:
    paths, _ = scene
    run_detection(paths["before"], paths["after"], tmp_path / "again", _config())
    a = (tmp_path / "again" / "change_score.tif").read_bytes()
    assert a == (trained[2] / "change_score.tif").read_bytes()


def test_extract_batch_equals_extract_and_state_round_trips(trained, scene) -> None:
    from microchange.types import PairArrays

    _, ckpt, _ = trained
    det = build_detector(_with_model(_config(), ckpt))
    rng = np.random.default_rng(0)
    blocks = [PairArrays(rng.normal(0, 1, (3, h, w)).astype(np.float32),
                            rng.normal(0, 1, (3, h, w)).astype(np.float32),
                            np.ones((h, w), bool), 3) for h, w in ((40, 40), (40, 40), (30, 50))]
    blocks[0].valid[5:9, 5:9] = False
    det.extractor.fit(blocks)
    batch = det.extractor.extract_batch(blocks)
    clone = build_detector(_config())
    clone.extractor.load_state(det.extractor.state())
    for blk, feats in zip(blocks, batch, strict=True):
        one = clone.extractor.extract(blk)
        assert feats.before.shape == (6, *blk.valid.shape)
        np.testing.assert_allclose(one.before, feats.before, atol=1e-5)
        np.testing.assert_allclose(one.after, feats.after, atol=1e-5)
    assert not batch[0].before[:, 5:9, 5:9].any()


def test_dae_objective_trains_and_scores(scene, tmp_path) -> None:
    paths, truth = scene
    run_detection(paths["before"], paths["after"], tmp_path / "dae",
                  _config(objective="dae", epochs=1))
    score = _read(tmp_path / "dae" / "change_score.tif")
    assert np.isfinite(score).all() and np.nanmean(score[truth]) > np.nanmean(score[~truth])


def test_checkpoint_with_other_band_count_is_refused(scene, tmp_path) -> None:
    paths, _ = scene
    two = tmp_path / "two.ckpt"
    train_extractor(paths["before"], paths["after"], two,
                    _config(epochs=1).model_copy(update={"bands": (1, 2)}))
    with pytest.raises(ConfigError, match=r"trained on 2 band\(s\) but the input has 3"):
        run_detection(paths["before"], paths["after"], tmp_path / "o",
                      _with_model(_config(), two))
    assert not (tmp_path / "o" / "run.json").exists()


def test_objective_conflicting_with_the_checkpoint_is_refused(trained) -> None:
    _, ckpt, _ = trained
    with pytest.raises(ConfigError, match=r"trained with objective 'cross'.*--objective 'dae'"):
        build_detector(_with_model(_config(objective="dae"), ckpt))


def test_unknown_objective_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"objective\n.*'cross', 'cross-cal' or 'dae'"):
        _config(objective="nope")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_malicious_checkpoint_is_refused_without_running_it(tmp_path) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"format": checkpoints.FORMAT, "format_version": 1, "state_dict": {},
                "metadata": {"payload": _Payload(marker)}}, evil)
    with pytest.raises(ConfigError, match="was refused: it holds Python objects"):
        checkpoints.load(evil)
    with pytest.raises(ConfigError, match=r"evil\.ckpt"):
        build_detector(_with_model(_config(), evil))
    assert not marker.exists()
    torch.load(evil, weights_only=False)  # the payload is live: an unsafe load would run it
    assert marker.exists()


def test_missing_and_corrupt_checkpoints_are_clear_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"does not exist.*microchange train"):
        checkpoints.load(tmp_path / "nope.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConfigError, match=r"cannot read checkpoint .*bad\.ckpt"):
        checkpoints.load(bad)
    other = tmp_path / "other.ckpt"
    torch.save({"weight": torch.zeros(3)}, other)
    with pytest.raises(ConfigError, match="not a microchange learned-extractor checkpoint"):
        checkpoints.load(other)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_each_precision_is_deterministic_and_tile_size_invariant(scene, tmp_path,
                                                                  precision) -> None:
    """On-the-fly training and scoring in float32 and in bf16 autocast, whatever the CPU.

    bf16 runs where the CPU lacks bf16 instructions too (emulated by oneDNN, slower), so both
    paths are tested on every machine.
    """
    paths, truth = scene
    config = _config(precision=precision)
    runs = {}
    for name, tile in (("a", 512), ("b", 512), ("tiled", 32)):
        runs[name] = tmp_path / name
        run_detection(paths["before"], paths["after"], runs[name],
                      config.model_copy(update={"tile_size": tile}))
    assert ((runs["a"] / "change_score.tif").read_bytes()
            == (runs["b"] / "change_score.tif").read_bytes())
    np.testing.assert_array_equal(_read(runs["tiled"] / "change_mask.tif"),
                                  _read(runs["a"] / "change_mask.tif"))
    np.testing.assert_allclose(_read(runs["tiled"] / "change_score.tif"),
                               _read(runs["a"] / "change_score.tif"), rtol=0, atol=1e-5)
    import json

    features = json.loads((runs["a"] / "run.json").read_text())["features"]
    assert features["precision"] == precision and features["training"]["precision"] == "fp32"
    score = _read(runs["a"] / "change_score.tif")
    assert np.nanmean(score[truth]) > 2 * np.nanmean(score[~truth])


def test_log_variance_fit_recovers_a_log_linear_variance() -> None:
    """Squared residuals with variance exp(0.8 x - 1): Newton's maximum likelihood finds it."""
    from microchange.features.learned.calibration import log_variance_fit as _log_variance_fit

    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, 200_000)
    r2 = np.exp(0.8 * x - 1.0) * rng.chisquare(1, x.size)
    theta = _log_variance_fit(np.stack([x, np.ones_like(x)], axis=1), r2)
    np.testing.assert_allclose(theta, [0.8, -1.0], atol=0.02)


def test_trimming_leaves_the_implanted_change_out_of_the_loss() -> None:
    from microchange.features.learned.training import trim_likely_changes as _trimmed

    rng = np.random.default_rng(1)
    before = rng.normal(0, 1, (2, 64, 64)).astype(np.float32)
    after = (before + rng.normal(0, 0.3, before.shape)).astype(np.float32)
    after[:, 10:20, 30:40] += 5.0  # 100 changed pixels of 4096
    valid = np.ones((64, 64), bool)
    (blocks, summary) = _trimmed([(before, after, valid)])
    mask = blocks[0][2]
    assert not mask[10:20, 30:40].any()
    # the 100 changed pixels (2.4 %) and about the null model's 1 % tail of the noise
    assert 0.024 <= summary["left_out"] <= 0.04
    assert mask.mean() == pytest.approx(1 - summary["left_out"], abs=1e-6)
    np.testing.assert_array_equal(blocks[0][0], before)  # inputs untouched


def test_calibrated_objective_round_trips_and_is_tile_size_invariant(scene, tmp_path) -> None:
    """cross-cal: scale heads fitted and recorded, checkpoint = on the fly, tiles agree."""
    import json

    paths, truth = scene
    config = _config(objective="cross-cal")
    fly = tmp_path / "fly"
    run_detection(paths["before"], paths["after"], fly, config)
    training = json.loads((fly / "run.json").read_text())["features"]["training"]
    cal = training["calibration"]
    assert cal["pixels"] > 0 and cal["ab"]["log_scale_range"][0] < cal["ab"]["log_scale_range"][1]
    assert training["trim"]["left_out"] > 0
    ckpt = tmp_path / "cal.ckpt"
    train_extractor(paths["before"], paths["after"], ckpt, config)
    assert checkpoints.load(ckpt).metadata["architecture"]["calibrated"] is True
    for name, tile in (("ckpt", 512), ("tiled", 32)):
        run_detection(paths["before"], paths["after"], tmp_path / name,
                      _with_model(config, ckpt, tile_size=tile))
    np.testing.assert_array_equal(_read(tmp_path / "ckpt" / "change_score.tif"),
                                  _read(fly / "change_score.tif"))
    np.testing.assert_array_equal(_read(tmp_path / "tiled" / "change_mask.tif"),
                                  _read(fly / "change_mask.tif"))
    np.testing.assert_allclose(_read(tmp_path / "tiled" / "change_score.tif"),
                               _read(fly / "change_score.tif"), rtol=0, atol=1e-5)
    score = _read(fly / "change_score.tif")
    assert np.nanmean(score[truth]) > 2 * np.nanmean(score[~truth])
    plain = build_detector(_with_model(_config(), ckpt))  # the checkpoint sets the objective
    assert plain.extractor.objective == "cross-cal"


def test_calibration_is_skipped_without_enough_pixels() -> None:
    """With (almost) no usable pixel the scale heads stay at scale 1: plain cross-prediction."""
    from microchange.features.learned.calibration import fit_scales as _fit_scales
    from microchange.features.learned.networks import ARCHITECTURES
    from microchange.features.learned.networks import build_net as _build_net
    from microchange.features.learned.networks import feature_groups as _features

    arch = ARCHITECTURES["cross-cal"]
    net = _build_net(arch, 2, seed=0)
    rng = np.random.default_rng(0)
    zb = rng.normal(0, 1, (2, 48, 48)).astype(np.float32)
    za = rng.normal(0, 1, (2, 48, 48)).astype(np.float32)
    valid = np.zeros((48, 48), bool)
    valid[20:24, 20:24] = True  # 16 pixels
    summary = _fit_scales(net, [(zb, za, valid)], halo=arch.halo, seed=0,
                          device=torch.device("cpu"))
    assert "skipped" in summary
    b, a = torch.from_numpy(zb[None]), torch.from_numpy(za[None])
    (_, bb), (aa, _) = _features(net, arch, b, a)
    torch.testing.assert_close(bb, b)  # scale 1: the inputs pass unchanged
    torch.testing.assert_close(aa, a)


def test_trimming_leaves_out_a_change_too_large_for_the_null_model() -> None:
    """A third of the pixels changed: the null model's bound alone would keep most of them."""
    from scipy import ndimage

    from microchange.features.learned.training import trim_likely_changes as _trimmed

    rng = np.random.default_rng(0)
    before = rng.normal(0, 1, (2, 160, 160)).astype(np.float32)
    after = before + rng.normal(0, 1, before.shape).astype(np.float32)
    field = ndimage.gaussian_filter(rng.normal(size=(160, 160)), 8)
    changed = field > np.quantile(field, 0.65)
    after[0][changed] += 2.0
    (blocks, summary) = _trimmed([(before, after, np.ones((160, 160), bool))])
    left_out = ~blocks[0][2]
    magnitude = np.sqrt(np.square(after - before).sum(0))
    assert (magnitude[changed] > summary["bound"]).mean() < 0.5  # the null bound alone
    assert left_out[changed].mean() > 0.9
    assert left_out[~changed].mean() < 0.05
