"""MICROCHANGE_OUTPUT_ROOT confines every output path; catalog area names never escape.

A deployment's worker sets the variable; whoever fills in a flow's form in the UI cannot move
it. ``..``, absolute paths and symbolic links that lead outside, and URLs, are refused with one
message before anything is written.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from microchange.catalog import Acquisition, PairSpec, load_catalog
from microchange.cli import main
from microchange.config import DetectConfig
from microchange.errors import InputError, OutputRootError
from microchange.flows.catalog import detect_changes_catalog
from microchange.flows.detect import detect_changes
from microchange.flows.evaluate import evaluate_changes
from microchange.flows.train import train_feature_extractor
from microchange.io.outdir import OUTPUT_ROOT_ENV, check_output_path
from microchange.pipeline import plan_detection


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "root"
    (root / "inside").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (root / "link").symlink_to(tmp_path / "elsewhere")
    monkeypatch.setenv(OUTPUT_ROOT_ENV, str(root))
    return root


def test_paths_inside_the_root_pass(root) -> None:
    for ok in (root, root / "inside", root / "new" / "deeper", root / "inside" / ".." / "x"):
        assert check_output_path(ok) == Path(ok)


@pytest.mark.parametrize("bad", ["{root}/../escaped", "{root}/inside/../../escaped", "/tmp",
                                 "{root}/link/out", "{root}x", "/vsis3/bucket/out",
                                 "s3://bucket/out"])
def test_escapes_are_refused(root, bad) -> None:
    with pytest.raises(OutputRootError, match=r"outside the output root|URL or /vsi") as info:
        check_output_path(bad.format(root=root))
    assert f"give a path inside {str(root)!r}" in str(info.value)
    assert isinstance(info.value, InputError)  # bad input: exit 2, never retried


def test_a_relative_path_is_taken_from_the_working_folder(root, monkeypatch) -> None:
    monkeypatch.chdir(root / "inside")
    assert check_output_path("run1") == Path("run1")
    with pytest.raises(OutputRootError):
        check_output_path("../../run1")


def test_without_the_variable_nothing_is_checked(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(OUTPUT_ROOT_ENV, raising=False)
    assert check_output_path(tmp_path / ".." / "x") == tmp_path / ".." / "x"


def test_detection_outside_the_root_writes_nothing(root, planted_pair, tmp_path, capsys) -> None:
    before, after, _ = planted_pair
    with pytest.raises(OutputRootError):
        plan_detection(before, after, tmp_path / "elsewhere" / "out", DetectConfig(method="cva"))
    code = main(["detect", str(before), str(after), "--out", str(root / ".." / "out"),
                 "--method", "cva", "-q"])
    assert code == 2 and "outside the output root" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "elsewhere" / "out").exists()


def test_every_flow_checks_its_output_first(root, tmp_path) -> None:
    """``.fn``: the check comes before any task, so no Prefect API is needed to see it."""
    outside = str(tmp_path / "elsewhere" / "x")
    calls = [lambda: detect_changes.fn("b.tif", "a.tif", outside),
             lambda: detect_changes_catalog.fn("catalog.yaml", outside),
             lambda: train_feature_extractor.fn("b.tif", "a.tif", outside + ".ckpt"),
             lambda: evaluate_changes.fn(outside, "truth.tif")]
    for call in calls:
        with pytest.raises(OutputRootError, match="outside the output root"):
            call()
    assert list((tmp_path / "elsewhere").iterdir()) == []


@pytest.mark.parametrize("name", ["..", "../x", "/etc", "a/b", ".hidden", "a\\b", "", "a\n"])
def test_area_names_cannot_escape_the_catalog_folder(tmp_path, name) -> None:
    doc = {"areas": [{"name": name, "acquisitions": [
        {"date": "2026-01-01", "path": "b.tif"}, {"date": "2026-02-01", "path": "a.tif"}]},
        {"name": "ok", "acquisitions": [
            {"date": "2026-01-01", "path": "b.tif"}, {"date": "2026-02-01", "path": "a.tif"}]}]}
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump(doc))
    loaded = load_catalog(path)
    assert [a.name for a in loaded.areas] == ["ok"]
    assert loaded.errors and "not a valid area name" in str(loaded.errors[0])
    acq = [Acquisition(date=dt.date(2026, m, 1), path="x.tif") for m in (1, 2)]
    with pytest.raises(ValidationError):
        PairSpec(area=name, before=acq[0], after=acq[1])
    pair = PairSpec(area="ok", before=acq[0], after=acq[1])
    assert (tmp_path / pair.folder).resolve().is_relative_to(tmp_path)
