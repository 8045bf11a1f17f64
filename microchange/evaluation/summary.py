"""A short summary of a finished run, for a dashboard: Markdown text and a quicklook.

The Prefect flows publish it as the run's artifact (the UI renders the Markdown and its embedded
image); anything else that shows runs (a chat message, a static page) can use it as well. The
quicklook is one decimated read of the mask and of AFTER, never a whole raster.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from microchange.evaluation.quicklooks import grey, quicklook, read_outputs
from microchange.io.manifest import read_run_manifest, run_rasters
from microchange.types import REPORT_NAME, MaskValue, PathLike

__all__ = ("artifact_key", "run_quicklook_jpeg", "run_summary_markdown")

_CHANGED = np.array([1.0, 0.1, 0.1])
_NODATA = np.array([0.1, 0.1, 0.1])


def run_quicklook_jpeg(out: PathLike, max_size: int = 320) -> bytes:
    """The change mask (red) over AFTER, at most ``max_size`` px on the long side, as JPEG.

    JPEG keeps it small (~20-40 kB) for the artifact database.

    Changes smaller than the decimation factor may not show (the tables count every pixel).

    Args:
        out: Folder of a finished detection run.
        max_size: Longest side of the image in pixels.

    Returns:
        The JPEG bytes.

    Raises:
        InputNotFoundError: If ``out`` holds no finished run.
    """
    from PIL import Image

    mask_path, score_path = run_rasters(out)
    mask, _, _ = read_outputs(mask_path, score_path, max_size)
    after = read_run_manifest(out).get("inputs", {}).get("after", {}).get("path")
    rgb = None
    if after and Path(after).exists():
        rgb = quicklook(after, "AFTER", mask.shape, mask_path)
    img = grey(rgb, mask.shape)
    img[mask == MaskValue.NODATA] = _NODATA
    img[mask == MaskValue.CHANGED] = _CHANGED
    buf = io.BytesIO()
    Image.fromarray((img * 255).round().astype(np.uint8)).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def artifact_key(name: str, kind: str = "changes") -> str:
    """A stable dashboard key for an area: ``<kind>-<name>`` in lowercase letters, digits, dashes.

    Args:
        name: Area of interest (or any run name); other characters become dashes.
        kind: What the key holds (``changes``, ``report``, ``catalog``).

    Returns:
        The key, e.g. ``changes-river-reach`` for "River reach".
    """
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "run"
    return f"{kind}-{slug}"[:120].rstrip("-")


def _area(counts: Mapping[str, Any]) -> str:
    m2 = counts.get("changed_area_m2")
    px = f"{counts.get('changed_px', 0):,} px"
    if m2 is None:
        return px
    return f"{m2 / 1e4:,.2f} ha ({px})" if m2 >= 1e4 else f"{m2:,.0f} m² ({px})"


def _threshold(threshold: Mapping[str, Any]) -> str:
    method, value = threshold.get("method", "?"), threshold.get("value")
    how = {"value": "a fixed value: the method's decision boundary",
           "auto": "automatic, on the global sample", "otsu": "Otsu on the global sample",
           "kittler-illingworth": "Kittler-Illingworth on the global sample",
           "kmeans": "2-means on the global sample",
           "fpr": "a false-alarm rate of the global sample"}.get(method, method)
    return f"{value:.4g} ({how})" if isinstance(value, int | float) else str(how)


def run_summary_markdown(out: PathLike, *, title: str | None = None,
                         quicklook: bool = True) -> str:
    """What a finished run found and how, as Markdown with the quicklook embedded.

    Args:
        out: Folder of a finished detection run.
        title: Heading (default: the output folder's name).
        quicklook: Embed the quicklook (JPEG) as a data URI.

    Returns:
        The Markdown text.

    Raises:
        InputNotFoundError: If ``out`` holds no finished run.
    """
    out = Path(out)
    mask_path, score_path = run_rasters(out)
    run = read_run_manifest(out)
    counts, timings = run.get("counts", {}), run.get("timings", {})
    resume = run.get("resume") or {}
    method = run.get("method", "?") + (f" + {run['scorer']}" if run.get("scorer") else "")
    rows = [
        ("Changed area", _area(counts)),
        ("Changed fraction", f"{100 * counts.get('changed_fraction', 0.0):.3f} % of valid pixels"),
        ("Regions", (f"{counts.get('regions', 0):,} (tiles with change: "
                     f"{counts.get('tiles_changed', 0)} of {counts.get('tiles', 0)})")),
        ("Threshold", _threshold(run.get("threshold", {}))),
        ("Method", f"{method} ({run.get('parameters', {}).get('sensor', '?')} sensor family)"),
        ("Device", str(run.get("device", "?"))),
        ("Time", ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in timings.items())),
    ]
    if resume.get("attempt", 1) > 1:
        fit = "reused" if resume.get("fit_reused") else "redone"
        rows.append(("Resumed", (f"attempt {resume['attempt']}: fit {fit}, "
                                f"{resume.get('tiles_reused', 0)} tiles reused")))
    inputs = run.get("inputs", {})
    paths = [inputs.get(role, {}).get("path", "?") for role in ("before", "after")]
    rows.append(("Inputs", f"`{paths[0]}` → `{paths[1]}`"))
    outputs = [mask_path, score_path, *(out / n for n in ("changes.parquet", "tiles.parquet",
                                                          "run.json", REPORT_NAME))]
    rows.append(("Outputs", "<br>".join(f"`{p}`" for p in outputs if p.exists())))
    lines = [f"# {title or out.name}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    if quicklook:
        try:
            jpeg = base64.b64encode(run_quicklook_jpeg(out)).decode("ascii")
        except (OSError, ValueError) as exc:  # the run is complete; only the picture is missing
            lines += ["", f"*No quicklook: {exc}*"]
        else:
            lines += ["", f"![Change mask (red) over AFTER](data:image/jpeg;base64,{jpeg})", "",
                      "*Change mask (red) over AFTER; nodata dark.*"]
    return "\n".join(lines) + "\n"
