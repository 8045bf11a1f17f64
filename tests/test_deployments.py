"""deployments/prefect.yaml: every deployment loads its flow and its defaults validate."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENTS = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())["deployments"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS, ids=[d["name"] for d in DEPLOYMENTS])
def test_deployment_defaults_validate_against_its_flow(deployment) -> None:
    from prefect.flows import load_flow_from_entrypoint

    flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
    flow.validate_parameters(deployment.get("parameters", {}))  # what "Run" in the UI sends
    assert deployment["work_pool"]["name"] == "microchange"
    assert deployment.get("description")


def test_detection_and_catalog_run_on_a_cron_schedule() -> None:
    scheduled = {d["entrypoint"].split(":")[1] for d in DEPLOYMENTS
                 for s in d.get("schedules", []) if s.get("cron")}
    assert {"detect_changes_dask", "detect_changes_catalog"} <= scheduled
    on_demand = {d["entrypoint"].split(":")[1] for d in DEPLOYMENTS if not d.get("schedules")}
    assert {"train_feature_extractor", "evaluate_changes"} <= on_demand


def test_demo_catalog_points_at_the_demo_scene() -> None:
    from microchange.catalog import catalog_pairs, load_catalog

    loaded = load_catalog(ROOT / "deployments" / "demo-catalog.yaml")
    assert not loaded.errors and [a.name for a in loaded.areas] == ["demo-fields",
                                                                   "demo-fields-cva"]
    pair = catalog_pairs(loaded.areas[0])[0]
    assert pair.before.path == str(ROOT / "out" / "demo" / "inputs" / "before.tif")
    assert pair.folder == "demo-fields/2026-05-01_2026-05-11"
