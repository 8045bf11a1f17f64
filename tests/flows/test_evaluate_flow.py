"""The evaluate-changes flow writes metrics.json and report.html like the CLI."""

import json

from microchange.config import DetectConfig, PreprocessConfig
from microchange.pipeline import run_detection


def test_evaluate_flow(prefect_harness, planted_pair, truth_raster, tmp_path) -> None:
    from microchange.flows.evaluate import evaluate_changes

    before, after, truth = planted_pair
    out = tmp_path / "out"
    run_detection(before, after, out, DetectConfig(tile_size=64, preprocess=PreprocessConfig(radiometric="none", smoothing_sigma=0.0)))
    gt = truth_raster(truth)
    summary = evaluate_changes(out=str(out), truth=str(gt))
    assert summary["precision"] == 1.0 and summary["recall"] == 1.0
    assert summary["object_recall"]["n_objects"] == 3
    assert summary["report"] == str(out / "report.html")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tp"] == truth.sum() and metrics["roc_auc"] == 1.0
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert _link("report-out") == f"[report of out]({(out / 'report.html').as_uri()})"


def _link(key: str) -> str:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read() -> list:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    (artifact,) = asyncio.run(read())
    return artifact.data


def test_evaluate_flow_parameters_are_documented_for_the_ui() -> None:
    from microchange.flows.evaluate import evaluate_changes

    props = evaluate_changes.parameters.properties
    assert set(props) == {"out", "truth", "changed_values", "ignore_values", "unchanged_values",
                          "truth_threshold", "report", "area"}
    assert all(p.get("description") for p in props.values())
    assert props["changed_values"]["default"] == [255]
