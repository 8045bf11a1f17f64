"""The detect-changes flow with tile batches on Dask gives the same outputs as the CLI path."""

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import rasterio

from microchange.config import DetectConfig
from microchange.pipeline import run_detection


def _read(path):
    with rasterio.open(path) as src:
        return src.read(1)


def _same_outputs(a, b) -> None:
    for name in ("change_mask.tif", "change_score.tif"):
        np.testing.assert_array_equal(_read(a / name), _read(b / name))


@contextmanager
def _distributed_records() -> Iterator[list[logging.LogRecord]]:
    """Records of distributed's loggers, whatever their propagation and handlers."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("distributed")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def _info_lines(records: list[logging.LogRecord]) -> list[str]:
    return [f"{r.name}: {r.getMessage()}" for r in records if r.levelno < logging.WARNING]


def test_local_cluster_and_existing_scheduler(prefect_harness, planted_pair, tmp_path) -> None:
    import os

    from distributed import Client

    from microchange.flows.detect import detect_changes_on_dask
    from microchange.flows.runners import EnvKeepingLocalCluster as LocalCluster

    before, after, _ = planted_pair
    config = DetectConfig(tile_size=32)  # 30 tiles -> 8 batches spread over the workers
    run_detection(before, after, tmp_path / "plain", config)

    threads_env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    level = logging.getLogger("distributed").level
    local = detect_changes_on_dask(workers=2)
    with _distributed_records() as records:
        summary = local(before=str(before), after=str(after), out=str(tmp_path / "local"),
                        config=config)
    # quiet: none of distributed's ~40 INFO lines about its scheduler, nannies and workers
    assert _info_lines(records) == []
    assert logging.getLogger("distributed").level == level  # restored at close
    # distributed's Nanny sets OMP_NUM_THREADS=1 etc. in the parent before spawning workers;
    # the runner's cluster restores them, so later local runs here still use every CPU
    assert {k: os.environ.get(k) for k in threads_env} == threads_env
    assert summary["counts"]["tiles"] == 30
    _same_outputs(tmp_path / "plain", tmp_path / "local")
    # the global sample was read and reduced on the cluster, to the same fit as in-process
    plain, local = (json.loads((tmp_path / d / "run.json").read_text()) for d in ("plain", "local"))
    assert plain["sample"]["fitted_on"] == "local"
    assert local["sample"]["fitted_on"] == "dask (2 workers)"
    assert local["threshold"] == plain["threshold"]
    assert local["fitted_preprocess"] == plain["fitted_preprocess"]

    with _distributed_records() as records, LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        remote = detect_changes_on_dask(address=cluster.scheduler_address)
        remote(before=str(before), after=str(after), out=str(tmp_path / "remote"), config=config)
        with Client(cluster) as client:  # the worker processes are quiet too
            levels = client.run(lambda: logging.getLogger("distributed").getEffectiveLevel())
    assert list(levels.values()) == [logging.WARNING]
    assert _info_lines(records) == []
    _same_outputs(tmp_path / "plain", tmp_path / "remote")
    doc = json.loads((tmp_path / "remote" / "run.json").read_text())
    assert doc["sample"]["fitted_on"] == "dask (1 worker)"  # one worker: no deadlock


def test_run_detection_on_a_client_equals_the_local_run(planted_pair, tmp_path) -> None:
    """`detect --runner dask`: the stages here, sample and tiles on a 2-worker LocalCluster."""
    from microchange.flows.runners import dask_client

    before, after, _ = planted_pair
    config = DetectConfig(tile_size=32)  # 30 tiles -> 8 batches -> 4 tasks
    run_detection(before, after, tmp_path / "plain", config)
    seen: list[tuple[int, int]] = []
    with dask_client(workers=2) as client:
        run_detection(before, after, tmp_path / "dask", config, client=client,
                      progress=lambda done, total: seen.append((done, total)))
        assert len(client.nthreads()) == 2
    _same_outputs(tmp_path / "plain", tmp_path / "dask")
    assert [t for _, t in seen] == [30] * 4 and seen[-1] == (30, 30)
    run = json.loads((tmp_path / "dask" / "run.json").read_text())
    assert run["sample"]["fitted_on"] == "dask (2 workers)"
