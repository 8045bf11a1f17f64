"""Honest summaries of accuracy rows: family means, worst pairs, leave-one-dataset-out, collapse.

Rows are dicts with ``pair`` (its name), ``dataset`` (the dataset it belongs to), ``family``,
``method`` and the metrics of :func:`microchange.evaluation.evaluate_run` (``f1``, ``kappa``,
``changed_share`` ...). Every function here is pure: the accuracy benchmark feeds it rows.

* :func:`family_summary`: per family and method, the mean and the worst pair.
* :func:`leave_one_dataset_out`: the selection rule "the method with the best family mean of the
  family's metric" applied in-sample (on every pair) and leave-one-dataset-out (chosen on the
  other datasets of the family, scored on the one left out), so that a choice made from the data
  is also scored on data it was not made on.
* :func:`collapse_check`: a method collapses on a pair when its F1 is below 0.7 x the better of
  the baselines (CVA with Otsu, PCA-KMeans) where the truth has at least 1 % changed pixels and
  that baseline reaches F1 0.15: a silently (nearly) empty map where the scene changed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

METRIC = {"sar": "kappa"}
"""The metric a family's choices are judged on (F1 elsewhere)."""
BASELINES = ("cva@otsu", "pca-kmeans")
COLLAPSE_RATIO = 0.7
MIN_CHANGED_SHARE = 0.01
MIN_BASELINE_F1 = 0.15


def metric_of(family: str) -> str:
    """``kappa`` for SAR, ``f1`` for the other families."""
    return METRIC.get(family, "f1")


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def family_summary(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per family and method: pairs, mean F1 / kappa / best F1, and the worst pair's F1."""
    out = []
    for fam in sorted({r["family"] for r in rows}):
        for method in dict.fromkeys(r["method"] for r in rows):
            sel = [r for r in rows if r["family"] == fam and r["method"] == method]
            if not sel:
                continue
            worst = min(sel, key=lambda r: r["f1"])
            out.append({"family": fam, "method": method, "pairs": len(sel),
                        "mean_f1": _mean([r["f1"] for r in sel]),
                        "mean_kappa": _mean([r["kappa"] for r in sel]),
                        "mean_best_f1": _mean([r["best_f1"] or 0.0 for r in sel]),
                        "worst_f1": worst["f1"], "worst_pair": worst["pair"]})
    return out


def _best(rows: Sequence[dict[str, Any]], methods: Sequence[str], metric: str) -> str:
    """The method with the best mean of ``metric`` over ``rows`` (the first listed on ties)."""
    means = {m: _mean([r[metric] for r in rows if r["method"] == m]) for m in methods}
    return max(methods, key=lambda m: (means[m], -methods.index(m)))


def leave_one_dataset_out(rows: Sequence[dict[str, Any]], candidates: Sequence[str]
                          ) -> list[dict[str, Any]]:
    """In-sample and leave-one-dataset-out scores of the rule "best family mean" per family.

    Args:
        rows: Accuracy rows of every candidate on every pair.
        candidates: Methods the rule chooses among (others in ``rows`` are ignored).

    Returns:
        Per family: the metric, the in-sample choice and its mean, the leave-one-dataset-out
        mean (each pair scored by the method chosen without its dataset), its worst pair, and
        the choice made for each held-out dataset.
    """
    out = []
    for fam in sorted({r["family"] for r in rows}):
        metric = metric_of(fam)
        fam_rows = [r for r in rows if r["family"] == fam and r["method"] in candidates]
        methods = [m for m in candidates if any(r["method"] == m for r in fam_rows)]
        if not methods:
            continue
        chosen = _best(fam_rows, methods, metric)
        in_sample = [r for r in fam_rows if r["method"] == chosen]
        held: list[dict[str, Any]] = []
        choices = {}
        for source in sorted({r["dataset"] for r in fam_rows}):
            train = [r for r in fam_rows if r["dataset"] != source]
            pick = _best(train, methods, metric) if train else chosen
            choices[source] = pick
            held += [r for r in fam_rows if r["dataset"] == source and r["method"] == pick]
        worst = min(held, key=lambda r: r[metric])
        out.append({"family": fam, "metric": metric, "datasets": len(choices),
                    "in_sample_choice": chosen,
                    "in_sample_mean": _mean([r[metric] for r in in_sample]),
                    "lodo_mean": _mean([r[metric] for r in held]),
                    "lodo_worst": worst[metric], "lodo_worst_pair": worst["pair"],
                    "lodo_choices": ", ".join(f"{s}: {m}" for s, m in choices.items())})
    return out


def collapse_check(rows: Sequence[dict[str, Any]], method: str) -> list[dict[str, Any]]:
    """Pairs where ``method`` falls below 0.7 x the better baseline (see the module docstring).

    Returns:
        One row per pair with enough change and a baseline of F1 >= 0.15: the changed share,
        the better baseline and its F1, the method's F1, the ratio and whether it passes.
    """
    out = []
    by_pair: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by_pair.setdefault(r["pair"], {})[r["method"]] = r
    for pair, runs in by_pair.items():
        if method not in runs or not all(b in runs for b in BASELINES):
            continue
        share = runs[method]["changed_share"]
        base = max(BASELINES, key=lambda b: runs[b]["f1"])
        base_f1 = runs[base]["f1"]
        if share < MIN_CHANGED_SHARE or base_f1 < MIN_BASELINE_F1:
            continue
        f1 = runs[method]["f1"]
        out.append({"pair": pair, "family": runs[method]["family"],
                    "changed_share": share, "baseline": base, "baseline_f1": base_f1,
                    "f1": f1, "ratio": f1 / base_f1,
                    "passes": f1 >= COLLAPSE_RATIO * base_f1})
    return out


def object_recall_by_dataset(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Objects found / objects of the truth per dataset, method and size class.

    Args:
        rows: Per-pair rows with ``<class>_objects`` and ``<class>_detected`` counts.

    Returns:
        One row per (dataset, method): 'found/total (recall)' per size class, '-' where the
        dataset has no object of that class.
    """
    from microchange.evaluation.metrics import SIZE_CLASSES

    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["method"]), []).append(r)
    out = []
    for (dataset, method), group in groups.items():
        row: dict[str, Any] = {"dataset": dataset, "method": method}
        for name, _, _ in SIZE_CLASSES:
            total = sum(r[f"{name}_objects"] for r in group)
            found = sum(r[f"{name}_detected"] for r in group)
            row[name] = f"{found}/{total} ({found / total:.2f})" if total else "-"
        out.append(row)
    return out

