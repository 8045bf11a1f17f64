"""Scorers fitted on the global sample: they find planted change, stay quiet without change."""

import numpy as np
import pytest
import rasterio

from microchange.config import DetectConfig, PreprocessConfig
from microchange.detector import SCORERS as REGISTERED
from microchange.detector import build_detector
from microchange.errors import UnknownMethodError
from microchange.evaluation import evaluate_mask
from microchange.pipeline import run_detection
from microchange.scoring.pca_kmeans import PcaKMeansScorer
from microchange.synthetic import make_scene, write_scene
from microchange.types import PairArrays


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    changed = make_scene(height=160, width=192, n_changes=12, seed=11)
    quiet = make_scene(height=160, width=192, n_changes=0, seed=11)
    return (write_scene(changed, root / "changed", dtype="float32", scale=1.0),
            write_scene(quiet, root / "quiet", dtype="float32", scale=1.0))


@pytest.mark.parametrize(("scorer", "threshold", "floor"), [
    ("distance", "fpr:0.0001", 0.6), ("mahalanobis", "fpr:0.0001", 0.6),
    ("density", "fpr:0.0001", 0.4), ("density", None, 0.35), ("cluster", None, 0.3)])
def test_each_scorer_finds_planted_changes(scenes, tmp_path, scorer, threshold, floor) -> None:
    paths, _ = scenes
    run_detection(paths["before"], paths["after"], tmp_path / "o",
                  DetectConfig(method="cva", scorer=scorer, threshold=threshold, tile_size=64))
    m = evaluate_mask(tmp_path / "o" / "change_mask.tif", paths["truth"], changed_values=(1,))
    assert m["f1"] >= floor, m


@pytest.mark.parametrize(("scorer", "threshold"), [
    ("distance", "fpr:0.0001"), ("mahalanobis", "fpr:0.0001"), ("density", None),
    ("cluster", None), ("distance", "auto")])
def test_no_change_pair_is_quiet_with_the_false_alarm_threshold(scenes, tmp_path, scorer,
                                                                threshold) -> None:
    _, paths = scenes
    s = run_detection(paths["before"], paths["after"], tmp_path / "o",
                      DetectConfig(method="cva", scorer=scorer, threshold=threshold, tile_size=64))
    assert s["counts"]["changed_fraction"] < 0.001


def test_density_score_is_a_calibrated_tail_probability() -> None:
    from microchange.scoring.density import DensityScorer
    rng = np.random.default_rng(5)
    cov = np.array([[1.0, 0.6, 0.0], [0.6, 1.0, 0.0], [0.0, 0.0, 0.3]])
    chol = np.linalg.cholesky(cov)

    def block():
        after = (rng.normal(size=(200 * 200, 3)) @ chol.T).T.reshape(3, 200, 200)
        return PairArrays(np.zeros((3, 200, 200), np.float32), after.astype(np.float32),
                             np.ones((200, 200), bool), 0)

    scorer = DensityScorer(seed=1)
    scorer.fit([block()])
    s = scorer.score(block())
    # -log10 p: 1 in 100 unchanged pixels above 2, 1 in 1000 above 3
    assert 0.007 < (s > 2).mean() < 0.013
    assert 0.0006 < (s > 3).mean() < 0.0015


def test_same_image_twice_is_quiet_with_every_scorer(scenes, tmp_path) -> None:
    _, paths = scenes
    for scorer in ("distance", "mahalanobis", "density"):
        for threshold in ("otsu", "kittler-illingworth", "fpr:0.001"):
            s = run_detection(paths["before"], paths["before"], tmp_path / f"{scorer}{threshold}",
                              DetectConfig(scorer=scorer, threshold=threshold, tile_size=96))
            assert s["counts"]["changed_fraction"] < 0.001, (scorer, threshold)


@pytest.mark.parametrize("scorer", ["mahalanobis", "density"])
def test_fitted_scorers_are_tile_size_invariant(scenes, tmp_path, scorer) -> None:
    paths, _ = scenes
    out = []
    for size in (48, 512):
        run_detection(paths["before"], paths["after"], tmp_path / str(size),
                      DetectConfig(scorer=scorer, tile_size=size,
                                   preprocess=PreprocessConfig(smoothing_sigma=0.7)))
        with rasterio.open(tmp_path / str(size) / "change_score.tif") as src:
            out.append(src.read(1))
    np.testing.assert_array_equal(out[0], out[1])


def test_scorer_state_round_trip(planted_pair, tmp_path) -> None:
    from microchange.io.pair import PairReader
    from microchange.tiling import Tile

    before, after, _ = planted_pair
    cfg = DetectConfig(method="cva", scorer="density")
    with PairReader(before, after) as pair:
        tile = pair.read_tile(Tile(0, 0, 0, 150, 170, halo=build_detector(cfg).halo))
    det = build_detector(cfg)
    det.fit([tile])
    det.save(tmp_path / "m.npz")
    again = build_detector(cfg)
    again.load_state(tmp_path / "m.npz")
    np.testing.assert_array_equal(det.score(tile), again.score(tile))
    assert det.method == "cva+density"


def test_unknown_scorer_is_rejected_by_the_config_and_by_the_registry() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="scorer"):
        DetectConfig(scorer="magic")
    unvalidated = DetectConfig.model_construct(**{**DetectConfig().__dict__, "method": "cva",
                                                  "scorer": "magic"})
    with pytest.raises(UnknownMethodError, match="unknown scorer 'magic'") as exc:
        build_detector(unvalidated)
    assert all(name in str(exc.value) for name in REGISTERED)


@pytest.mark.parametrize(("scorer", "cls"), [
    ("distance", "CvaScorer"), ("mahalanobis", "MahalanobisScorer"),
    ("density", "DensityScorer"), ("cluster", "PcaKMeansScorer"), ("hybrid", "PcaKMeansScorer")])
def test_each_scorer_name_builds_its_scorer(scorer, cls) -> None:
    det = build_detector(DetectConfig(method="cva", scorer=scorer))
    assert type(det.scorer).__name__ == cls and det.method == f"cva+{scorer}"
    assert set(REGISTERED) == {"distance", "mahalanobis", "density", "cluster", "hybrid"}


def test_distance_is_the_euclidean_norm_of_the_difference() -> None:
    from microchange.scoring.distance import CvaScorer

    before = np.zeros((2, 1, 3), np.float32)
    after = np.array([[[3, 0, -1]], [[4, 2, 1]]], np.float32)
    score = CvaScorer().score(PairArrays(before, after, np.ones((1, 3), bool), 0))
    np.testing.assert_allclose(score, [[5.0, 2.0, np.sqrt(2)]], rtol=1e-6)


def test_mahalanobis_discounts_a_correlated_nuisance_that_distance_flags() -> None:
    """Two features drift together (a strong nuisance along (1, 1)); 20 real changes along
    (1, -1), shorter than most drift vectors. The 20 highest Mahalanobis scores are the 20
    changes, while plain CVA ranks (almost) all of them below the drift."""
    rng = np.random.default_rng(0)
    h, w = 100, 100
    drift = rng.normal(0, 3.0, (h, w))
    diff = np.stack([drift, drift]) + rng.normal(0, 0.1, (2, h, w))
    changed = np.zeros(h * w, bool)
    changed[rng.choice(h * w, 20, replace=False)] = True
    along = rng.choice([-1, 1], 20) * rng.uniform(1.0, 2.0, 20)
    diff.reshape(2, -1)[:, changed] = np.outer([1.0, -1.0], along) + rng.normal(0, 0.1, (2, 20))
    before = rng.normal(0, 1, (2, h, w)).astype(np.float32)
    block = PairArrays(before, (before + diff).astype(np.float32), np.ones((h, w), bool), 0)
    scorer = build_detector(DetectConfig(method="cva", scorer="mahalanobis")).scorer
    scorer.fit([block])
    score = scorer.score(block)
    assert score.shape == (h, w) and score.dtype == np.float32
    assert changed[np.argsort(score.ravel())[-20:]].all()
    cva = build_detector(DetectConfig(method="cva", scorer="distance")).scorer.score(block)
    assert changed[np.argsort(cva.ravel())[-20:]].sum() <= 2


def test_the_default_of_every_sensor_is_the_deep_method() -> None:
    assert build_detector(DetectConfig(sensor="sar", method="cva")).method == "cva"
    assert build_detector(DetectConfig(sensor="sar", scorer="density")).method == "learned+density"
    for sensor in ("optical", "sar"):
        det = build_detector(DetectConfig(sensor=sensor))
        assert det.method == "learned" and det.default_threshold == "value:0"
        assert isinstance(det.scorer, PcaKMeansScorer) and det.extractor.objective == "cross"


def test_learned_keeps_cross_calibration_as_an_option() -> None:
    sar = build_detector(
        DetectConfig(method="learned", sensor="sar", deep={"objective": "cross-cal"}))
    assert sar.method == "learned" and sar.extractor.objective == "cross-cal"
    explicit = build_detector(DetectConfig(method="learned", scorer="distance"))
    assert explicit.method == "learned+distance" and explicit.default_threshold == "auto"
