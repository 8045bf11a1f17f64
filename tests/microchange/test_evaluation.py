"""Tests of microchange.evaluation: confusion counts, metrics and block-wise evaluation."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    cohen_kappa_score,
    f1_score,
    jaccard_score,
    precision_score,
    recall_score,
)

from microchange.errors import (
    BandMismatchError,
    GridMismatchError,
    InputError,
    RasterReadError,
)
from microchange.evaluation import (
    Confusion,
    confusion_from_arrays,
    decode_truth,
    evaluate_mask,
    metrics_from_confusion,
)

METRIC_KEYS = {"tp", "fp", "fn", "tn", "precision", "recall", "f1", "iou", "oa", "kappa"}


# --- confusion_from_arrays -------------------------------------------------------------------


def test_confusion_by_hand_bool():
    pred = np.array([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=bool)
    truth = np.array([[1, 0, 1, 0], [1, 1, 0, 0]], dtype=bool)
    labelled = np.ones_like(truth)
    # (p,t): (1,1) (1,0) (0,1) (0,0) / (1,1) (0,1) (1,0) (0,0)
    assert confusion_from_arrays(pred, truth, labelled) == Confusion(tp=2, fp=2, fn=2, tn=2)


def test_confusion_by_hand_with_nodata_and_unlabelled():
    pred = np.array([[1, 1, 0, 0, 255], [1, 0, 255, 0, 1]], dtype=np.uint8)
    truth = np.array([[1, 0, 1, 0, 1], [1, 0, 1, 0, 1]], dtype=bool)
    labelled = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], dtype=bool)
    # row 0: tp, fp, fn, tn, nodata ; row 1: unlabelled, unlabelled, nodata, tn, tp
    assert confusion_from_arrays(pred, truth, labelled) == Confusion(tp=2, fp=1, fn=1, tn=2)


def test_confusion_rejects_bad_shapes_and_values():
    ok = np.zeros((2, 2), dtype=bool)
    with pytest.raises(InputError, match="same shape"):
        confusion_from_arrays(np.zeros((2, 3), np.uint8), ok, ok)
    with pytest.raises(InputError, match=r"\[2\]"):
        confusion_from_arrays(np.array([[0, 1], [2, 255]], np.uint8), ok, ok)


def test_confusion_add():
    a = Confusion(1, 2, 3, 4)
    assert a + Confusion(10, 20, 30, 40) == Confusion(11, 22, 33, 44)
    assert (a + a).total == 20


# --- metrics_from_confusion ------------------------------------------------------------------


def test_metrics_by_hand():
    m = metrics_from_confusion(Confusion(tp=40, fp=10, fn=20, tn=30))
    assert set(m) == METRIC_KEYS
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (40, 10, 20, 30)
    assert m["precision"] == pytest.approx(0.8)
    assert m["recall"] == pytest.approx(40 / 60)
    assert m["f1"] == pytest.approx(80 / 110)
    assert m["iou"] == pytest.approx(40 / 70)
    assert m["oa"] == pytest.approx(0.7)
    # pe = (50*60 + 50*40) / 100**2 = 0.5 -> kappa = (0.7 - 0.5) / 0.5
    assert m["kappa"] == pytest.approx(0.4)


@pytest.mark.parametrize(
    ("confusion", "expected"),
    [
        (Confusion(), dict.fromkeys(METRIC_KEYS - {"tp", "fp", "fn", "tn"}, 0.0)),
        # nothing changed and nothing predicted: pe == 1 -> kappa 0.0 by definition
        (
            Confusion(tn=50),
            {"precision": 0.0, "recall": 0.0, "f1": 0.0, "iou": 0.0, "oa": 1.0, "kappa": 0.0},
        ),
        # everything changed and predicted changed: pe == 1 again
        (
            Confusion(tp=7),
            {"precision": 1.0, "recall": 1.0, "f1": 1.0, "iou": 1.0, "oa": 1.0, "kappa": 0.0},
        ),
        # nothing predicted changed: precision 0/0
        (
            Confusion(fn=5, tn=5),
            {"precision": 0.0, "recall": 0.0, "f1": 0.0, "iou": 0.0, "oa": 0.5, "kappa": 0.0},
        ),
        # everything wrong: kappa -1
        (
            Confusion(fp=5, fn=5),
            {"precision": 0.0, "recall": 0.0, "f1": 0.0, "iou": 0.0, "oa": 0.0, "kappa": -1.0},
        ),
    ],
)
def test_metrics_zero_denominators(confusion, expected):
    m = metrics_from_confusion(confusion)
    for key, value in expected.items():
        assert m[key] == pytest.approx(value), key
        assert isinstance(m[key], float)


def test_metrics_huge_counts_no_overflow():
    n = 10**12
    m = metrics_from_confusion(Confusion(tp=n, fp=n, fn=n, tn=n))
    assert m["f1"] == pytest.approx(0.5)
    assert m["kappa"] == pytest.approx(0.0)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("p_change", [0.02, 0.3])
def test_metrics_match_sklearn(seed, p_change):
    rng = np.random.default_rng(seed)
    truth = rng.random((64, 48)) < p_change
    # a prediction correlated with the truth, plus noise
    pred = np.where(rng.random(truth.shape) < 0.8, truth, rng.random(truth.shape) < p_change)
    labelled = rng.random(truth.shape) < 0.9
    m = metrics_from_confusion(confusion_from_arrays(pred, truth, labelled))
    y_true, y_pred = truth[labelled], pred[labelled]
    assert m["tp"] + m["fp"] + m["fn"] + m["tn"] == labelled.sum()
    assert m["kappa"] == pytest.approx(cohen_kappa_score(y_true, y_pred))
    assert m["f1"] == pytest.approx(f1_score(y_true, y_pred, zero_division=0.0))
    assert m["precision"] == pytest.approx(precision_score(y_true, y_pred, zero_division=0.0))
    assert m["recall"] == pytest.approx(recall_score(y_true, y_pred, zero_division=0.0))
    assert m["iou"] == pytest.approx(jaccard_score(y_true, y_pred, zero_division=0.0))
    assert m["oa"] == pytest.approx(np.mean(y_true == y_pred))


# --- decode_truth ----------------------------------------------------------------------------


def test_decode_truth_variants():
    truth = np.array([[0, 34, 255], [1, 2, 200]], dtype=np.uint8)
    changed, labelled = decode_truth(truth, ignore_values=(34,))
    np.testing.assert_array_equal(changed, [[0, 0, 1], [0, 0, 0]])
    np.testing.assert_array_equal(labelled, [[1, 0, 1], [1, 1, 1]])

    changed, labelled = decode_truth(truth, changed_values=(2,), unchanged_values=(1,))
    np.testing.assert_array_equal(changed, [[0, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(labelled, [[0, 0, 0], [1, 1, 0]])

    changed, labelled = decode_truth(truth, changed_values=(), truth_threshold=128)
    np.testing.assert_array_equal(changed, [[0, 0, 1], [0, 0, 1]])
    assert labelled.all()

    # ignore wins over changed
    changed, labelled = decode_truth(truth, changed_values=(255, 34), ignore_values=(34,))
    assert not changed[0, 1] and not labelled[0, 1]


# --- evaluate_mask ---------------------------------------------------------------------------


@pytest.fixture
def mask_and_truth(tmp_path, write_raster):
    mask = np.array(
        [
            [1, 1, 0, 0, 255],
            [1, 0, 1, 0, 1],
            [0, 0, 0, 1, 1],
        ],
        dtype=np.uint8,
    )
    truth = np.array(
        [
            [255, 0, 255, 0, 255],
            [34, 34, 255, 0, 255],
            [0, 255, 0, 0, 255],
        ],
        dtype=np.uint8,
    )
    return (
        write_raster(tmp_path / "mask.tif", mask),
        write_raster(tmp_path / "truth.tif", truth, crs=None),
    )


@pytest.mark.parametrize("block_rows", [1, 2, 1024])
def test_evaluate_mask_by_hand(mask_and_truth, block_rows):
    mask_path, truth_path = mask_and_truth
    m = evaluate_mask(mask_path, truth_path, ignore_values=(34,), block_rows=block_rows)
    # row 0: tp fp fn tn nodata ; row 1: ign ign tp tn tp ; row 2: tn fn tn fp tp
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (4, 2, 2, 4)
    assert (m["n_labelled"], m["n_ignored"], m["n_nodata"]) == (12, 2, 1)
    assert m["f1"] == pytest.approx(8 / 12)
    assert m["kappa"] == pytest.approx(1 / 3)  # po 8/12, pe 1/2


def test_evaluate_mask_sparse_truth_and_band(tmp_path, write_raster):
    mask = np.array([[1, 0, 1, 0]], dtype=np.uint8)
    truth = np.stack([np.array([[9, 9, 9, 9]], np.uint8), np.array([[2, 2, 1, 0]], np.uint8)])
    mask_path = write_raster(tmp_path / "m.tif", mask, crs=None)
    truth_path = write_raster(tmp_path / "t.tif", truth, crs=None)
    m = evaluate_mask(mask_path, truth_path, changed_values=(2,), unchanged_values=(1,), band=2)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 1, 1, 0)
    assert (m["n_labelled"], m["n_ignored"], m["n_nodata"]) == (3, 1, 0)
    with pytest.raises(BandMismatchError, match="2 band"):
        evaluate_mask(mask_path, truth_path, band=3)


def test_evaluate_mask_threshold_on_png(tmp_path, write_raster):
    truth = np.array([[0, 100, 129, 250]], dtype=np.uint8)
    truth_path = write_raster(tmp_path / "gt.png", truth, crs=None, driver="PNG")
    mask_path = write_raster(tmp_path / "m.tif", np.array([[0, 1, 1, 0]], np.uint8), crs=None)
    m = evaluate_mask(mask_path, truth_path, changed_values=(), truth_threshold=128)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 1, 1, 1)


def test_evaluate_mask_matches_in_memory_on_random(tmp_path, write_raster):
    rng = np.random.default_rng(7)
    truth = rng.choice(np.array([0, 34, 255], np.uint8), size=(97, 53), p=[0.7, 0.05, 0.25])
    mask = rng.choice(np.array([0, 1, 255], np.uint8), size=truth.shape, p=[0.6, 0.35, 0.05])
    mask_path = write_raster(tmp_path / "m.tif", mask, crs=None)
    truth_path = write_raster(tmp_path / "t.tif", truth, crs=None)
    m = evaluate_mask(mask_path, truth_path, ignore_values=(34,), block_rows=10)
    changed, labelled = decode_truth(truth, ignore_values=(34,))
    expected = metrics_from_confusion(confusion_from_arrays(mask, changed, labelled))
    assert {k: m[k] for k in expected} == expected
    assert m["n_labelled"] + m["n_ignored"] + m["n_nodata"] == truth.size
    assert m["n_ignored"] == np.count_nonzero(truth == 34)


def test_evaluate_mask_grid_mismatch(tmp_path, write_raster):
    mask_path = write_raster(tmp_path / "mask.tif", np.zeros((4, 5), np.uint8), crs=None)
    truth_path = write_raster(tmp_path / "truth.tif", np.zeros((5, 4), np.uint8), crs=None)
    with pytest.raises(GridMismatchError) as info:
        evaluate_mask(mask_path, truth_path)
    message = str(info.value)
    assert "mask.tif" in message and "truth.tif" in message
    assert "4x5" in message and "5x4" in message


def test_evaluate_mask_missing_file(tmp_path, write_raster):
    truth_path = write_raster(tmp_path / "truth.tif", np.zeros((2, 2), np.uint8), crs=None)
    missing = tmp_path / "nope.tif"
    with pytest.raises(RasterReadError, match=r"nope\.tif"):
        evaluate_mask(missing, truth_path)
    with pytest.raises(OSError, match=r"nope\.tif"):
        evaluate_mask(truth_path, missing)


def test_evaluate_mask_rejects_non_mask_values(tmp_path, write_raster):
    mask_path = write_raster(tmp_path / "mask.tif", np.array([[0, 128]], np.uint8), crs=None)
    truth_path = write_raster(tmp_path / "truth.tif", np.zeros((1, 2), np.uint8), crs=None)
    with pytest.raises(InputError, match=r"mask.*\[128\]"):
        evaluate_mask(mask_path, truth_path)
    with pytest.raises(InputError, match="block_rows"):
        evaluate_mask(truth_path, truth_path, block_rows=0)
