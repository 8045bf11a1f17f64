"""A self-contained HTML report of one detection run: quicklooks, score histogram, PR curve, metrics.

:func:`write_report` writes ``OUT_DIR/report/*.png`` and ``OUT_DIR/report.html``, in which the
same PNGs are embedded as base64 data URIs so the page can be mailed or archived alone.

Rasters are never read whole (:mod:`~microchange.evaluation.quicklooks`). Plots use matplotlib's Agg canvas on ``Figure``
objects: nothing needs a display, and the process-wide pyplot backend is left alone.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from microchange.errors import InputError, OutputError
from microchange.evaluation.metrics import decode_truth
from microchange.evaluation.quicklooks import grey, quicklook, read_outputs, truth_quicklook
from microchange.io.manifest import read_run_manifest, run_rasters
from microchange.types import REPORT_DIR, REPORT_NAME, MaskValue, PathLike

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ("write_report",)

log = logging.getLogger(__name__)

_DPI = 100
_TP, _FP, _FN = (0.10, 0.75, 0.20), (0.90, 0.10, 0.10), (0.15, 0.45, 1.00)
_NO_LABEL = (0.35, 0.35, 0.35)


@dataclass(frozen=True)
class _Panel:
    """One figure of the report."""

    name: str
    caption: str
    png: bytes


def write_report(
    out_dir: PathLike,
    metrics: Mapping[str, Any] | None = None,
    *,
    before: PathLike | None = None,
    after: PathLike | None = None,
    truth: PathLike | None = None,
    encoding: Mapping[str, Any] | None = None,
    max_size: int = 1024,
) -> Path:
    """Write ``OUT_DIR/report.html`` and its figures ``OUT_DIR/report/*.png``.

    Figures: quicklooks of BEFORE and AFTER (bands 1-3 as RGB, or the red/green/blue bands
    when the file says which they are, else band 1; 2-98 percentile stretch per band), the
    score map, the mask over AFTER, the truth overlay (TP green, FP red, FN blue, unlabelled
    grey) when a truth is known, the score histogram with the threshold, and the PR curve
    when ``metrics`` has one. A metrics table (or the run's counts without metrics) heads the
    page.

    Args:
        out_dir: Folder of a finished detection run (``change_mask.tif``,
            ``change_score.tif``; ``run.json`` gives the defaults below).
        metrics: The dict returned by :func:`microchange.evaluation.evaluate_run` (or read from
            metrics.json); None for a report without accuracy.
        before: Raster at t0; default the BEFORE path recorded in run.json (skipped with a
            note when that file is gone).
        after: Raster at t1; default the AFTER path in run.json. Warped onto the mask's grid
            when georeferenced on another grid.
        truth: Truth raster on the mask's grid; default ``metrics["truth"]`` (skipped with a
            note when that file is gone).
        encoding: Keyword arguments of :func:`microchange.evaluation.decode_truth`; default
            ``metrics["encoding"]``, else changed = 255.
        max_size: Longest side of the quicklooks in pixels; >= 16.

    Returns:
        Path of report.html.

    Raises:
        InputError: If ``out_dir`` is not a finished detection run or ``max_size`` < 16.
        RasterReadError: If a raster given explicitly cannot be read.
        GridMismatchError: If the truth is not on the mask's grid.
        OutputError: If the report cannot be written.
    """
    out = Path(out_dir)
    mask_path, score_path = run_rasters(out)
    if max_size < 16:
        raise InputError(f"max_size must be >= 16 pixels, got {max_size!r}")
    run = read_run_manifest(out)
    notes: list[str] = []
    before_path = _input_path(before, run, "before", notes)
    after_path = _input_path(after, run, "after", notes)
    truth, encoding = _truth_of(truth, encoding, metrics, notes)
    threshold = _threshold_value(metrics, run)

    mask, score, full_shape = read_outputs(mask_path, score_path, max_size)
    shape = mask.shape

    panels: list[_Panel] = []
    before_rgb = after_rgb = None
    if before_path is not None:
        before_rgb = quicklook(before_path, "BEFORE", shape, mask_path)
        panels.append(_image_panel("before", "BEFORE", before_rgb))
    if after_path is not None:
        after_rgb = quicklook(after_path, "AFTER", shape, mask_path)
        panels.append(_image_panel("after", "AFTER", after_rgb))
    panels.append(_score_panel(score, threshold))
    base = grey(after_rgb if after_rgb is not None else before_rgb, shape)
    panels.append(_mask_panel(base, mask))
    if truth is not None:
        truth_q = truth_quicklook(truth, shape, full_shape, mask_path)
        changed, labelled = decode_truth(truth_q, **dict(encoding))
        panels.append(_truth_panel(base, mask, changed, labelled))
    panels.append(_histogram_panel(metrics, score, threshold))
    if metrics is not None and metrics.get("pr_curve", {}).get("recall"):
        panels.append(_pr_panel(metrics))

    return _publish(out, panels, _html_page(out, panels, _table_rows(metrics, run, truth), notes))


def _publish(out: Path, panels: list[_Panel], page: str) -> Path:
    """Write the figures and the page (each under a temporary name first)."""
    try:
        fig_dir = out / REPORT_DIR
        fig_dir.mkdir(exist_ok=True)
        for panel in panels:
            _write_atomic(fig_dir / f"{panel.name}.png", panel.png)
        report = out / REPORT_NAME
        _write_atomic(report, page.encode("utf-8"))
    except OSError as exc:
        raise OutputError(f"cannot write the report in {str(out)!r} ({exc}): make the run "
                          "folder writable") from exc
    return report


# -- reading ----------------------------------------------------------------------------------


def _truth_of(truth: PathLike | None, encoding: Mapping[str, Any] | None,
              metrics: Mapping[str, Any] | None, notes: list[str]
              ) -> tuple[PathLike | None, Mapping[str, Any]]:
    """The truth and its encoding: as given, else those the metrics were computed with."""
    if truth is None and metrics is not None and metrics.get("truth"):
        if Path(metrics["truth"]).is_file():
            truth = metrics["truth"]
        else:
            notes.append(f"truth {metrics['truth']} (from the metrics) is gone: no overlay.")
    if encoding is None:
        encoding = (metrics or {}).get("encoding") or {"changed_values": (255,)}
    return truth, encoding


def _input_path(given: PathLike | None, run: Mapping[str, Any], role: str,
                notes: list[str]) -> PathLike | None:
    if given is not None:
        return given
    recorded = (run.get("inputs") or {}).get(role, {}).get("path")
    if recorded and Path(recorded).is_file():
        return str(recorded)
    if recorded:
        notes.append(f"{role.upper()} {recorded} (from run.json) is gone: no quicklook.")
    return None


def _threshold_value(metrics: Mapping[str, Any] | None, run: Mapping[str, Any]) -> float | None:
    thr = (metrics or {}).get("threshold") or run.get("threshold") or {}
    value = thr.get("value") if isinstance(thr, Mapping) else None
    return float(value) if isinstance(value, int | float) else None


# -- figures ----------------------------------------------------------------------------------


def _figure(shape: tuple[int, int] | None = None) -> Figure:
    from matplotlib.figure import Figure

    if shape is None:
        return Figure(figsize=(7.0, 4.5), dpi=_DPI)
    h, w = shape
    return Figure(figsize=(7.0, min(max(7.0 * h / w, 2.0), 12.0) + 0.5), dpi=_DPI)


def _png(fig: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _image_panel(name: str, title: str, rgb: NDArray[np.float64]) -> _Panel:
    fig = _figure(rgb.shape[:2])
    ax = fig.add_subplot()
    ax.imshow(np.nan_to_num(rgb, nan=0.0), interpolation="nearest")
    ax.set_title(f"{title} (2-98 % stretch)")
    ax.set_axis_off()
    return _Panel(name, f"{title} quicklook", _png(fig))


def _score_panel(score: NDArray[np.float64], threshold: float | None) -> _Panel:
    fig = _figure(score.shape)
    ax = fig.add_subplot()
    finite = score[np.isfinite(score)]
    vmin, vmax = (np.percentile(finite, (2, 99.5)) if finite.size else (0.0, 1.0))
    im = ax.imshow(np.ma.masked_invalid(score), cmap="magma", vmin=vmin, vmax=vmax,
                   interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="change score")
    thr = f", threshold {threshold:.4g}" if threshold is not None else ""
    ax.set_title(f"Change score{thr}")
    ax.set_axis_off()
    return _Panel("score", "Change score (higher = more change; blank = nodata)", _png(fig))


def _overlay(base: NDArray[np.float64], layers: Iterable[tuple[NDArray[np.bool_],
             tuple[float, float, float]]]) -> NDArray[np.float64]:
    img = base.copy()
    for where, colour in layers:
        img[where] = colour
    return img


def _legend(ax: Any, items: Iterable[tuple[str, tuple[float, float, float]]]) -> None:
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=c, label=t) for t, c in items], loc="upper center",
              bbox_to_anchor=(0.5, -0.01), ncol=4, frameon=False)


def _mask_panel(base: NDArray[np.float64], mask: NDArray[np.uint8]) -> _Panel:
    img = _overlay(base, [(mask == MaskValue.NODATA, _NO_LABEL), (mask == MaskValue.CHANGED, _FP)])
    fig = _figure(mask.shape)
    ax = fig.add_subplot()
    ax.imshow(img, interpolation="nearest")
    ax.set_title(f"Change mask over AFTER ({int(np.count_nonzero(mask == MaskValue.CHANGED)):,} "
                 "changed px in this view)")
    ax.set_axis_off()
    _legend(ax, [("changed", _FP), ("nodata", _NO_LABEL)])
    return _Panel("mask_overlay", "Change mask (red) over AFTER", _png(fig))


def _truth_panel(base: NDArray[np.float64], mask: NDArray[np.uint8],
                 changed: NDArray[np.bool_], labelled: NDArray[np.bool_]) -> _Panel:
    pred = mask == MaskValue.CHANGED
    scored = labelled & (mask != MaskValue.NODATA)
    img = _overlay(base, [(~scored, _NO_LABEL), (scored & pred & ~changed, _FP),
                          (scored & ~pred & changed, _FN), (scored & pred & changed, _TP)])
    fig = _figure(mask.shape)
    ax = fig.add_subplot()
    ax.imshow(img, interpolation="nearest")
    ax.set_title("Mask against the truth")
    ax.set_axis_off()
    _legend(ax, [("TP", _TP), ("FP", _FP), ("FN", _FN), ("not scored", _NO_LABEL)])
    return _Panel("truth_overlay", "Mask against the truth: TP green, FP red, FN blue, "
                  "grey not scored (unlabelled or nodata)", _png(fig))


def _histogram_panel(metrics: Mapping[str, Any] | None, score: NDArray[np.float64],
                     threshold: float | None) -> _Panel:
    fig = _figure()
    ax = fig.add_subplot()
    hist = (metrics or {}).get("score_histogram")
    if hist:
        edges = np.asarray(hist["edges"], dtype=np.float64)
        for key, colour in (("unchanged", "tab:blue"), ("changed", "tab:red")):
            counts = np.asarray(hist[key], dtype=np.float64)
            ax.stairs(counts, edges, color=colour, label=f"{key} in truth ({int(counts.sum()):,})")
        caption = "Score histogram per truth class (labelled pixels)"
    else:
        finite = score[np.isfinite(score)]
        ax.hist(finite, bins=128, histtype="step", color="tab:gray",
                label=f"all pixels of the quicklook ({finite.size:,})")
        caption = "Score histogram (quicklook pixels)"
    if threshold is not None:
        ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set_yscale("log")
    ax.set_xlabel("change score")
    ax.set_ylabel("pixels")
    ax.legend()
    ax.set_title(caption)
    return _Panel("score_histogram", caption, _png(fig))


def _pr_panel(metrics: Mapping[str, Any]) -> _Panel:
    curve = metrics["pr_curve"]
    fig = _figure()
    ax = fig.add_subplot()
    ap = metrics.get("pr_auc")
    ax.plot(curve["recall"], curve["precision"], color="tab:red",
            label=f"PR curve (AP {ap:.3f})" if ap is not None else "PR curve")
    auc = metrics.get("auc") or {}
    n_pos, n_neg = auc.get("n_changed", 0), auc.get("n_unchanged", 0)
    if n_pos + n_neg:
        ax.axhline(n_pos / (n_pos + n_neg), color="tab:gray", linestyle=":",
                   label="chance (prevalence)")
    ax.plot([metrics.get("recall", 0.0)], [metrics.get("precision", 0.0)], "ko",
            label="the run's threshold")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.legend(loc="lower left")
    ax.set_title("Precision-recall over all thresholds of the score")
    return _Panel("pr_curve", "Precision-recall curve of the score map", _png(fig))


# -- page -------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table_rows(metrics: Mapping[str, Any] | None, run: Mapping[str, Any],
                truth: PathLike | None) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    thr = (metrics or {}).get("threshold") or run.get("threshold")
    if isinstance(thr, Mapping):
        rows.append(("threshold", f"{thr.get('method')} = {_fmt(thr.get('value'))}"))
    if metrics is None:
        for key, value in (run.get("counts") or {}).items():
            rows.append((key, _fmt(value)))
        rows.append(("accuracy", "not computed: run `microchange evaluate OUT_DIR --truth GT`"))
        return rows
    for key in ("precision", "recall", "f1", "iou", "oa", "kappa", "pr_auc", "roc_auc",
                "tp", "fp", "fn", "tn", "n_labelled", "n_ignored", "n_nodata"):
        if key in metrics:
            rows.append((key, _fmt(metrics[key])))
    objects = metrics.get("object_recall")
    if objects:
        hit, n = objects["n_detected"], objects["n_objects"]
        rows.append(("object recall", f"{_fmt(objects['overall'])} ({hit:,}/{n:,} objects)"))
        for name, c in objects["by_size"].items():
            rows.append((f"object recall {name} px",
                         f"{_fmt(c['recall'])} ({c['n_detected']:,}/{c['n_objects']:,})"))
    rows.append(("truth", str(metrics.get("truth", truth))))
    enc = metrics.get("encoding")
    if enc:
        rows.append(("truth encoding", ", ".join(f"{k}={v}" for k, v in enc.items())))
    return rows


def _html_page(out: Path, panels: list[_Panel], rows: list[tuple[str, str]],
               notes: list[str]) -> str:
    esc = html.escape
    table = "\n".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    figures = "\n".join(
        f'<figure><img src="data:image/png;base64,{base64.b64encode(p.png).decode("ascii")}" '
        f'alt="{esc(p.caption)}"><figcaption>{esc(p.caption)}</figcaption></figure>'
        for p in panels
    )
    note_html = "".join(f"<p class=\"note\">{esc(n)}</p>" for n in notes)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>microchange report: {esc(out.name)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }}
th {{ background: #f3f3f3; font-weight: normal; }}
.figures {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0; max-width: 720px; }}
img {{ max-width: 100%; }}
.note {{ color: #a60; }}
</style>
</head>
<body>
<h1>microchange report</h1>
<p>Run folder: <code>{esc(str(out.resolve()))}</code></p>
{note_html}
<h2>Metrics</h2>
<table>
{table}
</table>
<h2>Figures</h2>
<div class="figures">
{figures}
</div>
</body>
</html>
"""


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
