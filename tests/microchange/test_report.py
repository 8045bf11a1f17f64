"""Tests of microchange.evaluation.report.write_report: a self-contained HTML page and its PNG figures."""

from __future__ import annotations

import base64
import warnings
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from rasterio.errors import NotGeoreferencedWarning

from microchange.config import DetectConfig, PreprocessConfig
from microchange.errors import GridMismatchError, InputError
from microchange.evaluation import evaluate_run
from microchange.evaluation.report import write_report
from microchange.pipeline import run_detection

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL_FIGURES = {"before", "after", "score", "mask_overlay", "truth_overlay", "score_histogram",
               "pr_curve"}


class _Page(HTMLParser):
    """Collects <img> sources and checks that every opened element is closed."""

    VOID = frozenset({"meta", "img", "br", "hr", "link", "input"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.images: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def parse(path: Path) -> _Page:
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>")
    page = _Page()
    page.feed(text)
    page.close()
    assert page.errors == [] and page.stack == []
    return page


@pytest.fixture
def detected(planted_pair, truth_raster, tmp_path) -> tuple[Path, Path]:
    before, after, truth = planted_pair
    out = tmp_path / "out"
    run_detection(before, after, out, DetectConfig(tile_size=64, preprocess=PreprocessConfig(radiometric="none", smoothing_sigma=0.0)))
    return out, truth_raster(truth)


def test_report_with_metrics_embeds_every_figure(detected) -> None:
    out, gt = detected
    metrics = evaluate_run(out, gt)
    report = write_report(out, metrics)
    assert report == out / "report.html"
    page = parse(report)
    assert len(page.images) == len(ALL_FIGURES)
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_MAGIC)
    pngs = {p.stem: p for p in (out / "report").glob("*.png")}
    assert set(pngs) == ALL_FIGURES
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in pngs.values())
    text = report.read_text()
    assert "pr_auc" in text and "object recall lt25 px" in text and "1.0000" in text


def test_report_without_metrics(detected) -> None:
    out, _ = detected
    page = parse(write_report(out, None))
    assert len(page.images) == 5  # before, after, score, mask, histogram
    assert "microchange evaluate" in (out / "report.html").read_text()


def test_report_on_non_georeferenced_png_inputs(planted_pair, write_raster, truth_raster,
                                                 tmp_path) -> None:
    _, _, truth = planted_pair
    rng = np.random.default_rng(3)
    before = rng.integers(40, 90, (3, *truth.shape)).astype(np.uint8)
    after = before.copy()
    after[:, truth] = 250
    paths = [write_raster(tmp_path / name, data, crs=None, driver="PNG")
             for name, data in (("a.png", before), ("b.png", after))]
    out = tmp_path / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        run_detection(*paths, out, DetectConfig(tile_size=64))
    gt = truth_raster(truth, name="gt.bmp", crs=None, driver="BMP")
    page = parse(write_report(out, evaluate_run(out, gt), max_size=64))
    assert len(page.images) == len(ALL_FIGURES)


def test_report_errors(detected, truth_raster, tmp_path) -> None:
    out, _ = detected
    with pytest.raises(InputError, match="run `microchange detect"):
        write_report(tmp_path / "nothing")
    with pytest.raises(InputError, match="max_size"):
        write_report(out, max_size=4)
    small = truth_raster(np.zeros((5, 5), bool), name="small.tif", crs=None)
    with pytest.raises(GridMismatchError, match=r"small\.tif"):
        write_report(out, truth=small)
