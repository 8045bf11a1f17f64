"""Tests of microchange.evaluation.evaluate_run: metrics, AUCs, object recall, metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from microchange.config import DetectConfig, PreprocessConfig
from microchange.errors import GridMismatchError, InputError
from microchange.evaluation import (
    evaluate_mask,
    evaluate_run,
    object_recall,
    ranking_metrics,
)
from microchange.pipeline import run_detection


@pytest.fixture
def write_run(write_raster):
    """Factory of a detection run folder: mask, scores and (with a threshold) run.json."""

    def _write(out: Path, mask: np.ndarray, score: np.ndarray, *,
               threshold: float | None = None) -> Path:
        write_raster(out / "change_mask.tif", mask.astype(np.uint8), crs=None, nodata=255)
        write_raster(out / "change_score.tif", score.astype(np.float32), crs=None,
                     nodata=float("nan"))
        if threshold is not None:
            (out / "run.json").write_text(json.dumps(
                {"threshold": {"method": "value", "value": threshold, "n_sample": 1}}))
        return out

    return _write


# --- hand-computed run -----------------------------------------------------------------------

MASK = np.array([[1, 1, 0, 0, 255],
                 [1, 0, 0, 0, 255],
                 [0, 0, 1, 0, 0],
                 [0, 0, 0, 0, 0]], dtype=np.uint8)
TRUTH = np.array([[255, 255, 255, 0, 255],
                  [0, 0, 34, 0, 0],
                  [0, 0, 255, 34, 0],
                  [0, 0, 0, 0, 0]], dtype=np.uint8)
NAN = np.nan
# positives (scored): 0.9, 0.8, 0.7 (TP) and 0.3 (FN); negatives: 0.6 (FP), 0.35 and ten 0.1.
# The ignored pixels score 5.0 and must not count; nodata pixels are NaN.
SCORE = np.array([[0.9, 0.8, 0.3, 0.35, NAN],
                  [0.6, 0.1, 5.0, 0.1, NAN],
                  [0.1, 0.1, 0.7, 5.0, 0.1],
                  [0.1, 0.1, 0.1, 0.1, 0.1]])


@pytest.fixture
def hand_run(tmp_path: Path, write_raster, write_run) -> tuple[Path, Path]:
    out = write_run(tmp_path / "run", MASK, SCORE, threshold=0.5)
    return out, write_raster(tmp_path / "truth.tif", TRUTH, crs=None)


@pytest.mark.parametrize("block_rows", [1, 3, None])
def test_evaluate_run_by_hand(hand_run, block_rows) -> None:
    out, truth = hand_run
    m = evaluate_run(out, truth, ignore_values=(34,), block_rows=block_rows)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 1, 1, 11)
    assert (m["n_labelled"], m["n_ignored"], m["n_nodata"]) == (16, 2, 2)
    assert m["precision"] == pytest.approx(0.75) and m["recall"] == pytest.approx(0.75)
    # ROC: 46 of 48 positive/negative pairs ranked right; AP = (1 + 1 + 1 + 4/6) / 4.
    assert m["roc_auc"] == pytest.approx(46 / 48)
    assert m["pr_auc"] == pytest.approx((3 + 4 / 6) / 4)
    assert m["auc"]["n_changed"] == 4 and m["auc"]["n_unchanged"] == 12
    assert m["threshold"] == {"method": "value", "value": 0.5, "n_sample": 1}
    assert m["encoding"] == {"changed_values": [255], "ignore_values": [34],
                             "unchanged_values": None, "truth_threshold": None}
    assert m["truth"] == str(truth.resolve())
    # Objects: {(0,0), (0,1), (0,2)} hit; {(2,2)} hit; both < 25 px.
    assert m["object_recall"]["n_objects"] == 2 and m["object_recall"]["overall"] == 1.0
    same = evaluate_mask(out / "change_mask.tif", truth, ignore_values=(34,))
    assert {k: m[k] for k in same} == same


def test_metrics_json_holds_the_metrics_and_no_temporary_file(hand_run) -> None:
    out, truth = hand_run
    m = evaluate_run(out, truth, ignore_values=(34,))
    doc = json.loads((out / "metrics.json").read_text())
    assert doc == json.loads(json.dumps(m))
    for key in ("tp", "fp", "fn", "tn", "precision", "recall", "f1", "iou", "oa", "kappa",
                "pr_auc", "roc_auc", "object_recall", "n_labelled", "n_ignored", "truth",
                "encoding", "threshold", "pr_curve", "score_histogram"):
        assert key in doc
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    hist = doc["score_histogram"]
    assert len(hist["edges"]) == len(hist["changed"]) + 1 <= 129
    assert sum(hist["changed"]) == 4 and sum(hist["unchanged"]) == 12
    curve = doc["pr_curve"]
    assert curve["recall"][-1] == 1.0 and curve["precision"][0] == 1.0


@pytest.mark.parametrize("earlier", [False, True])
def test_a_write_that_dies_halfway_never_shows_under_the_final_name(hand_run, monkeypatch,
                                                                    earlier) -> None:
    """The disk fills up after half of metrics.json: no metrics.json, or the earlier one."""
    from pathlib import Path as P

    out, truth = hand_run
    if earlier:
        evaluate_run(out, truth)
    before = (out / "metrics.json").read_bytes() if earlier else None
    real = P.write_text

    def dies_halfway(self, data, *args, **kwargs):
        if "metrics.json" not in self.name:
            return real(self, data, *args, **kwargs)
        with open(self, "w") as fh:
            fh.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(P, "write_text", dies_halfway)
    with pytest.raises(OSError):
        evaluate_run(out, truth, ignore_values=(34,))
    monkeypatch.undo()
    if earlier:
        assert (out / "metrics.json").read_bytes() == before
        json.loads(before)
    else:
        assert not (out / "metrics.json").exists()


def test_sparse_truth_and_threshold_truth(tmp_path, write_raster, write_run) -> None:
    out = write_run(tmp_path / "run", MASK, SCORE)
    sparse = np.where(TRUTH == 255, 2, np.where(TRUTH == 0, 1, 0)).astype(np.uint8)
    sparse[3, :] = 0  # unlabelled row
    m = evaluate_run(out, write_raster(tmp_path / "sparse.tif", sparse, crs=None),
                     changed_values=(2,), unchanged_values=(1,))
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 1, 1, 6)
    assert m["n_ignored"] == 7 and m["threshold"] is None
    soft = np.where(TRUTH == 255, 200, 20).astype(np.uint8)  # "lossy" mask, no ignored value
    m = evaluate_run(out, write_raster(tmp_path / "soft.tif", soft, crs=None),
                     changed_values=(), truth_threshold=128)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 1, 1, 13)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aucs_match_sklearn_on_random_data(tmp_path, seed, write_raster, write_run) -> None:
    rng = np.random.default_rng(seed)
    h, w = 120, 150
    truth = np.where(rng.random((h, w)) < 0.15, 255, 0).astype(np.uint8)
    truth[rng.random((h, w)) < 0.05] = 34
    score = rng.gamma(2.0, 1.0, (h, w)) + (truth == 255) * rng.uniform(0, 3, (h, w))
    mask = (score > 3.5).astype(np.uint8)
    nodata = rng.random((h, w)) < 0.03
    mask[nodata] = 255
    score[nodata] = np.nan
    out = write_run(tmp_path / "run", mask, score)
    m = evaluate_run(out, write_raster(tmp_path / "t.tif", truth, crs=None),
                     ignore_values=(34,), block_rows=17)
    ranked = (truth != 34) & ~nodata
    y, s = truth[ranked] == 255, score.astype(np.float32)[ranked]
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-3)
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, s), abs=1e-3)
    assert len(m["pr_curve"]["recall"]) <= 200
    p, r, t = precision_recall_curve(y, s)
    f1 = 2 * p * r / np.maximum(p + r, 1e-12)
    assert m["best_f1"] == pytest.approx(f1.max(), abs=2e-3)
    assert m["best_f1_threshold"] == pytest.approx(t[np.argmax(f1[:-1])], abs=0.05)


def test_ranking_metrics_edge_cases() -> None:
    edges = np.linspace(0, 1, 5)
    none = ranking_metrics(np.zeros(4, int), np.array([1, 2, 0, 0]), edges)
    assert none["roc_auc"] is None and none["pr_auc"] is None and none["pr_curve"]["recall"] == []
    only_pos = ranking_metrics(np.array([0, 3, 0, 1]), np.zeros(4, int), edges)
    assert only_pos["roc_auc"] is None and only_pos["pr_auc"] == 1.0
    tied = ranking_metrics(np.array([0, 2, 0, 0]), np.array([0, 6, 0, 0]), edges)
    assert tied["roc_auc"] == 0.5 and tied["pr_auc"] == 0.25
    assert none["best_f1"] is None and tied["best_f1"] == pytest.approx(2 * 0.25 / 1.25)
    with pytest.raises(InputError, match="edges"):
        ranking_metrics(np.zeros(4, int), np.zeros(4, int), np.linspace(0, 1, 4))


# --- object recall ---------------------------------------------------------------------------


def object_scene() -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((64, 64), bool)
    hits = np.zeros((64, 64), bool)

    def obj(rows, cols, hit=None):
        truth[rows, cols] = True
        if hit is not None:
            hits[hit] = True

    obj(slice(1, 4), slice(1, 4), (2, 2))            # 9 px, lt25, hit
    obj(slice(1, 3), slice(10, 12))                  # 4 px, lt25, missed
    obj([1, 2], [20, 21], (1, 20))                   # diagonal pair: one object, hit
    obj([7, 8], [50, 51], (8, 51))                   # diagonal across row 7|8, hit
    obj(slice(12, 18), slice(1, 7), (17, 6))         # 36 px, 25to100, hit
    obj(slice(12, 17), slice(20, 25))                # 25 px, 25to100, missed
    obj(slice(20, 30), slice(40, 50), (29, 49))      # 100 px, 25to100, hit
    obj(slice(32, 43), slice(1, 11))                 # 110 px, gt100, missed
    obj(slice(45, 61), slice(30, 33), (45, 30))      # U: left bar ...
    obj(slice(45, 61), slice(40, 43))                # ... right bar ...
    obj(slice(59, 61), slice(30, 43))                # ... joined at the bottom: 110 px, hit
    return truth, hits


@pytest.mark.parametrize("block_rows", [1, 2, 4, 8, 64])
def test_object_recall_by_size_merges_across_blocks(tmp_path, block_rows, write_raster,
                                                   write_run) -> None:
    truth, hits = object_scene()
    mask = hits.astype(np.uint8)
    mask[62:, :5] = 255
    out = write_run(tmp_path / "run", mask, hits.astype(np.float32))
    gt = write_raster(tmp_path / "gt.tif", np.where(truth, 255, 0).astype(np.uint8), crs=None)
    objects = evaluate_run(out, gt, block_rows=block_rows)["object_recall"]
    assert (objects["n_objects"], objects["n_detected"]) == (9, 6)
    assert objects["overall"] == pytest.approx(6 / 9)
    assert objects["connectivity"] == 8
    assert objects["by_size"] == {
        "lt25": {"recall": 0.75, "n_objects": 4, "n_detected": 3},
        "25to100": {"recall": pytest.approx(2 / 3), "n_objects": 3, "n_detected": 2},
        "gt100": {"recall": 0.5, "n_objects": 2, "n_detected": 1},
    }
    _, n = ndimage.label(truth, structure=np.ones((3, 3)))
    assert n == objects["n_objects"]


def test_object_recall_function() -> None:
    r = object_recall(np.array([1, 24, 25, 100, 101]), np.array([1, 0, 1, 0, 1], bool))
    assert r["by_size"]["lt25"]["n_objects"] == 2 and r["by_size"]["gt100"]["recall"] == 1.0
    empty = object_recall(np.zeros(0, int), np.zeros(0, bool))
    assert empty["overall"] == 0.0 and empty["n_objects"] == 0
    with pytest.raises(InputError, match="sizes"):
        object_recall(np.array([1, 2]), np.array([True]))


# --- real run and errors ---------------------------------------------------------------------


def test_evaluate_run_on_a_detection_run(planted_pair, tmp_path, write_raster) -> None:
    before, after, truth = planted_pair
    out = tmp_path / "out"
    run_detection(before, after, out, DetectConfig(tile_size=64, preprocess=PreprocessConfig(radiometric="none", smoothing_sigma=0.0)))
    gt = write_raster(tmp_path / "gt.tif", np.where(truth, 255, 0).astype(np.uint8), crs=None)
    m = evaluate_run(out, gt)
    assert m["tp"] == truth.sum() and m["fp"] == 0 and m["fn"] == 0
    assert m["roc_auc"] == pytest.approx(1.0) and m["pr_auc"] == pytest.approx(1.0)
    assert m["object_recall"]["by_size"]["lt25"] == {"recall": 1.0, "n_objects": 2,
                                                     "n_detected": 2}
    assert m["object_recall"]["by_size"]["25to100"]["n_objects"] == 1
    assert m["threshold"]["method"] == "value" and m["threshold"]["value"] == 0.0


def test_evaluate_run_errors(hand_run, tmp_path, write_raster) -> None:
    out, truth = hand_run
    with pytest.raises(InputError, match="run `microchange detect"):
        evaluate_run(tmp_path / "empty", truth)
    with pytest.raises(InputError, match="n_bins"):
        evaluate_run(out, truth, n_bins=1)
    small = write_raster(tmp_path / "small.tif", TRUTH[:3], crs=None)
    with pytest.raises(GridMismatchError, match=r"small\.tif"):
        evaluate_run(out, small)
