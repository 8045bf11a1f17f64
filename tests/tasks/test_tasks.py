"""Tasks are thin: calling .fn runs the core stage with no Prefect API."""

from pathlib import Path

from microchange.config import DetectConfig, PreprocessConfig
from microchange.tasks.detect import finalise_outputs, fit_on_sample, plan_tiles, score_tiles


def test_tasks_run_the_core_stages_without_an_api(planted_pair, tmp_path) -> None:
    before, after, truth = planted_pair
    plan = plan_tiles.fn(str(before), str(after), str(tmp_path / "out"), DetectConfig(tile_size=80,
                      preprocess=PreprocessConfig(radiometric="none", smoothing_sigma=0.0)))
    assert Path(plan).name == "plan.json"
    model = fit_on_sample.fn(plan)
    assert Path(model).exists()
    assert score_tiles.fn(plan, [0, 1, 2]) == [0, 1, 2]
    assert score_tiles.fn(plan, [3, 4, 5]) == [3, 4, 5]
    summary = finalise_outputs.fn(plan, 0.0)
    assert summary["counts"]["changed_px"] == truth.sum()
    assert summary["counts"]["tiles"] == 6
