"""The catalog flow: every pair of every area once; a broken entry never stops the others."""

import shutil
from pathlib import Path

import pytest
import yaml

from microchange.config import DetectConfig
from microchange.synthetic import make_scene, write_scene

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
OTTAWA = SHARED / "ottawa_radarsat_sar"


def _catalog(tmp_path: Path) -> Path:
    a = write_scene(make_scene(height=160, width=200, seed=1, n_changes=6), tmp_path / "a")
    write_scene(make_scene(height=128, width=128, seed=2, n_changes=4), tmp_path / "b")
    areas = [
        {"name": "fields", "acquisitions": [
            {"date": "2026-05-01", "path": str(a["before"])},
            {"date": "2026-05-11", "path": str(a["after"])},
            {"date": "2026-05-21", "path": str(a["before"])}]},
        # its second image arrives later: this pair fails now and runs on the next run
        {"name": "river", "acquisitions": [
            {"date": "2026-06-01", "path": "b/before.tif"},
            {"date": "2026-06-11", "path": "late/after.tif"}]},
        {"name": "bad name!", "acquisitions": []},  # a broken entry: reported, skipped
    ]
    if OTTAWA.is_dir():  # a real SAR pair of the shared data, with its own sensor family
        areas.append({"name": "ottawa", "config": {"sensor": "sar"}, "acquisitions": [
            {"date": "1997-05-01", "path": str(OTTAWA / "ottawa_1.bmp")},
            {"date": "1997-08-01", "path": str(OTTAWA / "ottawa_2.bmp")}]})
    path = tmp_path / "catalog.yaml"
    path.write_text(yaml.safe_dump({"areas": areas}))
    return path


def test_catalog_runs_every_pair_once_and_retries_the_failed_one(prefect_harness,
                                                                 tmp_path) -> None:
    import geopandas as gpd
    import pystac

    from microchange.flows.catalog import detect_changes_catalog

    catalog, out = _catalog(tmp_path), tmp_path / "out"
    config = DetectConfig(method="cva", tile_size=128)
    state = detect_changes_catalog(str(catalog), str(out), config, pairs_at_once=2,
                                   return_state=True)
    assert state.is_failed()
    assert "river 2026-06-01_2026-06-11" in state.message and "bad name!" in state.message
    summary = gpd.read_parquet(out / "summary.parquet")
    status = dict(zip(summary["area"] + " " + summary["after_date"].astype(str),
                      summary["status"], strict=True))
    expected = {"fields 2026-05-11": "done", "fields 2026-05-21": "done",
                "river 2026-06-11": "failed"}
    if OTTAWA.is_dir():
        expected["ottawa 1997-08-01"] = "done"
    assert status == expected
    river = summary[summary["area"] == "river"].iloc[0]
    assert "after.tif" in river["error"] and river.geometry is None
    fields = summary[summary["area"] == "fields"]
    assert summary.crs.to_string() == "OGC:CRS84" and fields.geometry.notna().all()
    assert (fields["changed_fraction"] > 0).all() and (fields["regions"] > 0).all()
    for folder in ("fields/2026-05-01_2026-05-11", "fields/2026-05-11_2026-05-21"):
        assert (out / folder / "change_mask.tif").is_file()
    stac = pystac.Catalog.from_file(str(out / "catalog.json"))
    items = {i.id: i for i in stac.get_items(recursive=True)}
    assert "fields-2026-05-01_2026-05-11" in items and "river-2026-06-01_2026-06-11" not in items
    mask = items["fields-2026-05-01_2026-05-11"].assets["change_mask"]
    assert Path(mask.get_absolute_href()).is_file()
    parents = _subflow_parents(summary["flow_run"].tolist())  # every pair ran as a subflow
    assert len(parents) == len(expected) and all(parents)
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("fields/*/change_mask.tif")}

    (tmp_path / "late").mkdir()  # the missing image arrives
    shutil.copy(tmp_path / "b" / "after.tif", tmp_path / "late" / "after.tif")
    catalog.write_text(catalog.read_text().replace("bad name!", "fixed"))
    state = detect_changes_catalog(str(catalog), str(out), config, return_state=True)
    assert state.is_failed() and "fixed" in state.message  # 'fixed' has no acquisitions yet
    summary = gpd.read_parquet(out / "summary.parquet")
    status = dict(zip(summary["area"] + " " + summary["after_date"].astype(str),
                      summary["status"], strict=True))
    assert status["river 2026-06-11"] == "done"
    assert status["fields 2026-05-11"] == status["fields 2026-05-21"] == "skipped"
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # nothing redone
    assert (summary.loc[summary["status"] == "skipped", "changed_fraction"] > 0).all()


def _subflow_parents(ids: list[str]) -> list:
    import asyncio
    from uuid import UUID

    from prefect.client.orchestration import get_client

    async def read() -> list:
        async with get_client() as client:
            return [(await client.read_flow_run(UUID(i))).parent_task_run_id for i in ids]

    return asyncio.run(read())


def test_catalog_flow_parameters_are_documented_for_the_ui() -> None:
    from microchange.flows.catalog import detect_changes_catalog

    props = detect_changes_catalog.parameters.properties
    assert set(props) == {"catalog", "out", "config", "pairs_at_once"}
    assert all(p.get("description") for p in props.values())


@pytest.mark.parametrize("bad", [0, -1])
def test_pairs_at_once_must_be_positive(prefect_harness, tmp_path, bad) -> None:
    from microchange.flows.catalog import detect_changes_catalog

    state = detect_changes_catalog(str(tmp_path / "c.yaml"), str(tmp_path / "o"),
                                   pairs_at_once=bad, return_state=True)
    assert state.is_failed() and "pairs_at_once" in state.message
