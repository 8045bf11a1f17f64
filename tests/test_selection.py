"""The benchmark's summaries: leave-one-dataset-out choices and the collapse check."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.selection import collapse_check, family_summary, leave_one_dataset_out


def _row(pair, source, method, f1, *, family="optical", share=0.1):
    return {"pair": pair, "dataset": source, "family": family, "method": method, "f1": f1,
            "kappa": f1 - 0.01, "best_f1": f1, "changed_share": share}


def test_leave_one_dataset_out_chooses_without_the_held_out_dataset() -> None:
    # 'b' wins only thanks to dataset X; without X, 'a' is chosen, and scores 0.2 on X
    rows = [_row("x1", "X", "a", 0.2), _row("x1", "X", "b", 0.9),
            _row("y1", "Y", "a", 0.6), _row("y1", "Y", "b", 0.5),
            _row("z1", "Z", "a", 0.6), _row("z1", "Z", "b", 0.5)]
    (res,) = leave_one_dataset_out(rows, ["a", "b"])
    assert res["in_sample_choice"] == "b"
    assert abs(res["in_sample_mean"] - (0.9 + 0.5 + 0.5) / 3) < 1e-12
    # held out X: 'a' (0.6 vs 0.5 elsewhere) scores 0.2; held out Y or Z: 'b' wins (0.7 vs 0.4)
    assert res["lodo_choices"] == "X: a, Y: b, Z: b"
    assert abs(res["lodo_mean"] - (0.2 + 0.5 + 0.5) / 3) < 1e-12
    assert (res["lodo_worst"], res["lodo_worst_pair"]) == (0.2, "x1")


def test_sar_choices_are_judged_on_kappa() -> None:
    rows = [_row("s", "S", "a", 0.5, family="sar"), _row("t", "T", "a", 0.7, family="sar")]
    (res,) = leave_one_dataset_out(rows, ["a"])
    assert res["metric"] == "kappa" and abs(res["in_sample_mean"] - 0.59) < 1e-12


def test_collapse_check_flags_an_empty_map_where_the_scene_changed() -> None:
    rows = [_row("p", "P", "default", 0.0, share=0.2), _row("p", "P", "cva@otsu", 0.8),
            _row("p", "P", "pca-kmeans", 0.6),
            _row("q", "Q", "default", 0.5, share=0.2), _row("q", "Q", "cva@otsu", 0.6),
            _row("q", "Q", "pca-kmeans", 0.7),
            _row("r", "R", "default", 0.0, share=0.005), _row("r", "R", "cva@otsu", 0.8),
            _row("r", "R", "pca-kmeans", 0.8)]  # under 1 % changed: not checked
    checks = {c["pair"]: c for c in collapse_check(rows, "default")}
    assert set(checks) == {"p", "q"}
    assert not checks["p"]["passes"] and checks["p"]["baseline"] == "cva@otsu"
    assert checks["q"]["passes"] and checks["q"]["baseline"] == "pca-kmeans"


def test_family_summary_names_the_worst_pair() -> None:
    rows = [_row("a1", "A", "m", 0.8), _row("b1", "B", "m", 0.1)]
    (s,) = family_summary(rows)
    assert (s["pairs"], s["worst_pair"], round(s["mean_f1"], 3)) == (2, "b1", 0.45)
