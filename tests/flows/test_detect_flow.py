"""The Prefect flow and the CLI run the same stages and give identical outputs."""

import numpy as np
import pyarrow.parquet as pq
import rasterio

from microchange.cli import main
from microchange.config import DetectConfig, PreprocessConfig


def _arrays(out):
    with rasterio.open(out / "change_mask.tif") as m, rasterio.open(out / "change_score.tif") as s:
        sp = {k: v for k, v in s.profile.items() if k != "nodata"}  # NaN != NaN
        return m.read(1), s.read(1), m.profile, sp


def _table(path):
    t = pq.read_table(path).drop(["run_id"]).to_pydict()
    return t


def test_flow_and_cli_give_identical_outputs(prefect_harness, planted_pair, tmp_path) -> None:
    from microchange.flows.detect import detect_changes

    before, after, truth = planted_pair
    config = DetectConfig(tile_size=64, preprocess=PreprocessConfig(radiometric="none", smoothing_sigma=0.0))
    summary = detect_changes(before=str(before), after=str(after), out=str(tmp_path / "flow"),
                             config=config)
    assert summary["counts"]["changed_px"] == truth.sum()
    code = main(["detect", str(before), str(after), "--out", str(tmp_path / "cli"),
                 "--tile-size", "64", "--smoothing-sigma", "0", "--radiometric", "none", "-q"])
    assert code == 0
    fm, fs, fmp, fsp = _arrays(tmp_path / "flow")
    cm, cs, cmp_, csp = _arrays(tmp_path / "cli")
    np.testing.assert_array_equal(fm, cm)
    np.testing.assert_array_equal(fs, cs)
    assert fmp == cmp_ and fsp == csp
    for name in ("tiles.parquet", "changes.parquet"):
        assert _table(tmp_path / "flow" / name) == _table(tmp_path / "cli" / name)
    for name in ("change_mask.tif", "change_score.tif"):
        assert (tmp_path / "flow" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes()
    # the run page shows what was found, under the area's stable key
    assert summary["artifact"] == "changes-flow"
    (artifact,) = _artifacts("changes-flow")
    assert "| Changed area | 7,400 m² (74 px) |" in artifact.data  # 9 + 64 + 1 px of 100 m²
    assert "data:image/jpeg;base64," in artifact.data


def test_flow_and_cli_give_identical_outputs_with_the_optical_defaults(
        prefect_harness, planted_pair, tmp_path) -> None:
    """Every optical default on (learned, co-registration, histogram normalisation,
    smoothing): the flow's tasks and the CLI's process give the same bytes. (Folder names of
    their own: the run page's artifact key is made from the folder's name.)"""
    from microchange.flows.detect import detect_changes

    before, after, truth = planted_pair
    config = DetectConfig(tile_size=64)
    pre = config.preprocess
    assert config.resolved_method() == ("learned", None) and pre.coregister
    assert pre.radiometric == "histogram" and pre.smoothing_sigma > 0
    flow_out, cli_out = tmp_path / "defaults-flow", tmp_path / "defaults-cli"
    summary = detect_changes(before=str(before), after=str(after), out=str(flow_out),
                             config=config)
    assert summary["counts"]["tiles"] == 9 and summary["counts"]["changed_px"] >= truth.sum()
    assert main(["detect", str(before), str(after), "--out", str(cli_out),
                 "--tile-size", "64", "-q"]) == 0
    for name in ("change_mask.tif", "change_score.tif"):
        assert (flow_out / name).read_bytes() == (cli_out / name).read_bytes()
    for name in ("tiles.parquet", "changes.parquet"):
        assert _table(flow_out / name) == _table(cli_out / name)


def _artifacts(key: str) -> list:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    async def read() -> list:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

    return asyncio.run(read())


def test_flow_parameters_are_documented_for_the_ui() -> None:
    from microchange.flows.detect import detect_changes

    schema = detect_changes.parameters
    props = schema.properties
    assert set(props) == {"before", "after", "out", "config", "area"}
    assert "t0" in props["before"]["description"]
    config_def = schema.definitions["DetectConfig"]["properties"]
    assert all(field.get("description") for field in config_def.values())


def test_flow_runs_one_tile_batch_per_cpu_at_a_time() -> None:
    """Prefect's default thread pool is unbounded: every batch would be in memory at once."""
    import os

    from microchange.flows.detect import detect_changes

    # no public accessor; bounded by the CPUs at import
    assert 1 <= detect_changes.task_runner._max_workers <= (os.cpu_count() or 1)
