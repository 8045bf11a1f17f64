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


def test_io_tasks_retry_with_backoff_but_not_on_bad_input(prefect_harness, tmp_path) -> None:
    """A missing input fails at once; a transient error is tried again after a delay."""
    import time

    from prefect import flow, task

    from microchange.errors import InputNotFoundError
    from microchange.tasks.detect import plan_tiles
    from microchange.tasks.retry import IO_RETRIES

    assert plan_tiles.retries == 3 and plan_tiles.retry_delay_seconds == [2, 4, 8]
    calls = {"bad": 0, "flaky": 0}

    @task(**{**IO_RETRIES, "retry_delay_seconds": [0.1, 0.2, 0.4]})
    def bad() -> None:
        calls["bad"] += 1
        raise InputNotFoundError("'x.tif' does not exist: check the path")

    @task(**{**IO_RETRIES, "retry_delay_seconds": [0.1, 0.2, 0.4]})
    def flaky() -> int:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise OSError("NFS hiccup")
        return calls["flaky"]

    @flow
    def both() -> int:
        state = bad(return_state=True)
        assert state.is_failed()
        return flaky()

    t0 = time.monotonic()
    assert both() == 3
    assert calls == {"bad": 1, "flaky": 3} and time.monotonic() - t0 >= 0.3
