"""Dask runner settings without a cluster: GPU pinning, worker resources, log level, cores."""

from __future__ import annotations

import logging
import os
from typing import Any

import dask
import pytest
import torch

from microchange.config import DetectConfig
from microchange.errors import ConfigError
from microchange.features import devices
from microchange.flows import runners
from microchange.flows.runners import (
    dask_log_level,
    dask_task_runner,
    gpu_annotation,
    local_cluster_kwargs,
)

DEEP = DetectConfig(method="backbone")  # device 'auto'
CVA = DetectConfig(method="cva")


class FakeClient:
    """What gpu_annotation asks of a distributed Client: the workers and their resources."""

    def __init__(self, *resources: dict[str, float]) -> None:
        self.resources = resources

    def scheduler_info(self) -> dict[str, Any]:
        return {"workers": {f"tcp://127.0.0.1:{4000 + i}": {"resources": r}
                            for i, r in enumerate(self.resources)}}


@pytest.fixture
def cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch sees a GPU (and the cheap driver probe finds one)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(devices, "_gpu_driver_present", lambda: True)


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _annotations(config: DetectConfig | None, client: Any) -> dict[str, Any]:
    with gpu_annotation(config, client):
        return dict(dask.get_annotations())


def test_deep_tile_tasks_ask_for_a_gpu_on_a_cluster_with_gpus(cuda) -> None:
    gpus = FakeClient({"GPU": 1}, {"GPU": 1})
    assert _annotations(DEEP, gpus) == {"resources": {"GPU": 1}}
    assert _annotations(None, gpus) == {"resources": {"GPU": 1}}  # default method: 'learned'
    assert _annotations(DetectConfig(method="learned", deep={"device": "cuda"}),
                        gpus) == {"resources": {"GPU": 1}}
    assert dask.get_annotations() == {}  # only within the block


def test_no_annotation_on_the_cpu(cuda) -> None:
    gpus = FakeClient({"GPU": 1})
    assert _annotations(CVA, gpus) == {}  # no network
    assert _annotations(DetectConfig(method="backbone", deep={"device": "cpu"}), gpus) == {}


def test_no_annotation_without_a_dask_runner(cuda) -> None:
    assert _annotations(DEEP, None) == {}  # not in a flow on Dask


def test_no_annotation_when_no_worker_has_a_gpu(cuda, caplog) -> None:
    """Tasks asking for a GPU that no worker has would wait for ever: run them unpinned."""
    with caplog.at_level(logging.WARNING, logger="microchange.flows.runners"):
        assert _annotations(DEEP, FakeClient({}, {})) == {}
    assert "no worker of the Dask cluster declares" in caplog.text


def test_no_warning_on_a_cpu_machine_and_cluster(no_cuda, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="microchange.flows.runners"):
        assert _annotations(DEEP, FakeClient({})) == {}
    assert caplog.text == ""


def test_local_workers_declare_a_gpu_where_torch_sees_one(cuda) -> None:
    kwargs = local_cluster_kwargs(**dask_task_runner(workers=2).cluster_kwargs)
    assert kwargs["resources"] == {"GPU": 1}
    assert kwargs["n_workers"] * kwargs["threads_per_worker"] == 2
    assert kwargs["env"]["OMP_NUM_THREADS"] == "1"


def test_local_workers_declare_nothing_on_the_cpu(no_cuda) -> None:
    kwargs = local_cluster_kwargs(**dask_task_runner(workers=2).cluster_kwargs)
    assert "resources" not in kwargs


def test_cuda_probe_spares_the_torch_import_without_a_driver(monkeypatch) -> None:
    monkeypatch.setattr(devices.sys, "modules", {k: v for k, v in devices.sys.modules.items()
                                                 if k != "torch"})
    monkeypatch.setattr(devices, "_gpu_driver_present", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # never asked
    assert devices.cuda_available() is False


def test_default_workers_fill_the_cores_one_thread_each(monkeypatch) -> None:
    monkeypatch.delenv(runners.WORKERS_ENV, raising=False)
    monkeypatch.setattr(runners, "usable_cores", lambda: 3)
    kwargs = dask_task_runner().cluster_kwargs
    assert (kwargs["n_workers"], kwargs["threads_per_worker"]) == (3, 1)


def test_log_level(monkeypatch) -> None:
    monkeypatch.delenv(runners.LOG_LEVEL_ENV, raising=False)
    monkeypatch.delenv(runners.DASK_LOG_ENV, raising=False)
    assert dask_log_level() == "warning"
    monkeypatch.setenv(runners.DASK_LOG_ENV, "info")  # dask's own setting is respected
    assert dask_log_level() == "info"
    assert local_cluster_kwargs()["env"][runners.DASK_LOG_ENV] == "info"
    monkeypatch.setenv(runners.LOG_LEVEL_ENV, "DEBUG")  # ours wins
    assert dask_log_level() == "debug"
    monkeypatch.setenv(runners.LOG_LEVEL_ENV, "loud")
    with pytest.raises(ConfigError, match="MICROCHANGE_DASK_LOG_LEVEL"):
        dask_log_level()


def test_log_level_is_restored_when_the_last_cluster_closes() -> None:
    logger = logging.getLogger("distributed")
    before = logger.level
    level = runners._DistributedLogLevel()
    level.hold("warning")
    level.hold("warning")
    assert logger.level == logging.WARNING
    level.release()
    assert logger.level == logging.WARNING  # another cluster is still up
    level.release()
    assert logger.level == before


def _start_environment() -> bytes:
    """The environment this process was started with (what glibc's malloc read)."""
    with open(f"/proc/{os.getpid()}/environ", "rb") as fh:
        return fh.read()


@pytest.mark.skipif(not os.path.exists("/proc/self/environ"), reason="needs Linux /proc")
def test_local_workers_start_without_distributed_malloc_trim_threshold() -> None:
    """distributed's MALLOC_TRIM_THRESHOLD_ made tile scoring 1.5-2x slower in workers."""
    from distributed import Client

    assert runners.MALLOC_TRIM_ENV not in os.environ, "the test needs a parent without it"
    with runners.EnvKeepingLocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                        dashboard_address=None) as cluster, \
            Client(cluster) as client:
        started_with = client.submit(_start_environment, pure=False).result()
    assert runners.MALLOC_TRIM_ENV.encode() not in started_with
    assert b"OMP_NUM_THREADS=1" in started_with
    assert runners.MALLOC_TRIM_ENV not in os.environ
