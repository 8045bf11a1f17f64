"""Task runners for the flows: Dask on a local cluster by default, or an existing scheduler.

Tiles are scored as Prefect tasks mapped over tile batches; with a Dask task runner each batch
runs in a Dask worker process, so a raster is scored on all cores of one machine (LocalCluster)
or on a ``distributed`` cluster that the user already runs (``address``). Workers get one thread
each and ``OMP_NUM_THREADS=1`` so that numpy, GDAL and torch do not oversubscribe the cores.

A cluster started here logs quietly: distributed's loggers at WARNING in this process and in
the workers, unless ``$MICROCHANGE_DASK_LOG_LEVEL`` or ``$DASK_LOGGING__DISTRIBUTED`` asks for
more. On a machine where torch sees a GPU each of its workers declares one ``GPU`` resource;
:func:`gpu_annotation` makes the deep tile tasks ask for it, so a GPU runs one task at a time per
worker. A lost worker costs nothing but time: distributed runs its tasks again elsewhere and
the scoring task skips the tiles that were written completely.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import dask
from dask.base import annotate
from distributed import Client, LocalCluster
from prefect_dask.task_runners import DaskTaskRunner

from microchange.config import DetectConfig
from microchange.errors import ConfigError
from microchange.features.devices import cuda_available, may_use_cuda, runs_on_cuda
from microchange.parallel import GPU_RESOURCE, available_cpus, has_gpu_workers, usable_cores

ADDRESS_ENV = "MICROCHANGE_DASK_ADDRESS"
WORKERS_ENV = "MICROCHANGE_DASK_WORKERS"
LOG_LEVEL_ENV = "MICROCHANGE_DASK_LOG_LEVEL"
DASK_LOG_ENV = "DASK_LOGGING__DISTRIBUTED"
MALLOC_TRIM_ENV = "MALLOC_TRIM_THRESHOLD_"
_ANALYTICS_ENV = "PREFECT_SERVER_ANALYTICS_ENABLED"

_WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "GDAL_NUM_THREADS": "1"}
_LEVELS = ("debug", "info", "warning", "error", "critical")

log = logging.getLogger(__name__)


def dask_log_level() -> str:
    """Level of distributed's logs in the clusters started here (this process and the workers).

    ``$MICROCHANGE_DASK_LOG_LEVEL``, else dask's own ``$DASK_LOGGING__DISTRIBUTED``, else
    'warning': a run then logs its own few lines, not distributed's ~40 INFO lines about the
    scheduler, nannies and workers coming and going.

    Raises:
        ConfigError: If the variable is not a level name.
    """
    level = (os.environ.get(LOG_LEVEL_ENV) or os.environ.get(DASK_LOG_ENV) or "warning").lower()
    if level not in _LEVELS:
        raise ConfigError(f"{LOG_LEVEL_ENV} or {DASK_LOG_ENV} is {level!r}: use one of "
                          f"{', '.join(_LEVELS)}")
    return level


def worker_resources() -> dict[str, float]:
    """Resources each local worker declares: one GPU where torch sees one, else none."""
    return {GPU_RESOURCE: 1} if cuda_available() else {}


def local_cluster_kwargs(**kwargs: Any) -> dict[str, Any]:
    """The arguments :class:`EnvKeepingLocalCluster` passes to ``LocalCluster``.

    ``kwargs`` plus the workers' thread limits and log level in their environment (``env``
    entries in ``kwargs`` win) and, where torch sees a GPU, ``resources={"GPU": 1}`` unless
    ``kwargs`` gives resources.
    """
    out = dict(kwargs)
    out["env"] = {**_WORKER_ENV, DASK_LOG_ENV: dask_log_level(), **(kwargs.get("env") or {})}
    if "resources" not in out and (resources := worker_resources()):
        out["resources"] = resources
    return out


class _DistributedLogLevel:
    """distributed's log level in this process while clusters started here are up.

    Set by the first cluster, restored when the last one closes (flows may run side by side).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._saved = logging.NOTSET

    def hold(self, level: str) -> None:
        """A cluster starts: the first one sets ``level`` (a name such as 'warning')."""
        with self._lock:
            logger = logging.getLogger("distributed")
            if self._users == 0:
                self._saved = logger.level
                logger.setLevel(level.upper())
            self._users += 1

    def release(self) -> None:
        """A cluster closed: the last one restores the level found by the first."""
        with self._lock:
            self._users -= 1
            if self._users == 0:
                logging.getLogger("distributed").setLevel(self._saved)


_LOG_LEVEL = _DistributedLogLevel()


class EnvKeepingLocalCluster(LocalCluster):
    """A ``distributed.LocalCluster`` that leaves this process's environment as it found it.

    Before it spawns a worker, distributed's Nanny writes ``distributed.nanny.pre-spawn-environ``
    (``OMP_NUM_THREADS=1``, ``MKL_NUM_THREADS=1``, ``OPENBLAS_NUM_THREADS=1``,
    ``MALLOC_TRIM_THRESHOLD_``) into the *parent's* ``os.environ`` and never removes it. In a
    process that runs several flows, every later local run would then see one CPU
    (:func:`microchange.parallel.available_cpus` reads ``OMP_NUM_THREADS``) and score its tiles on
    one thread. The variables are restored once the workers are up and again at close.

    The arguments are completed by :func:`local_cluster_kwargs` (thread limits, log level, GPU
    resource); distributed logs at :func:`dask_log_level` here until the cluster is closed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs = local_cluster_kwargs(**kwargs)
        level = kwargs["env"][DASK_LOG_ENV]
        # distributed sets its log level when it is imported, which a spawned worker may do
        # before the Nanny applies ``env`` (e.g. a script importing the flows at the top): the
        # level must be in the environment the worker process starts with, restarts included
        # distributed's MALLOC_TRIM_THRESHOLD_=65536 turns glibc's dynamic mmap threshold off:
        # every array over 128 KiB is then mmapped and faulted in afresh, and tile scoring ran
        # 1.5-2x slower in a worker than in a plain process (numpy astype: 1.2 s against 0.6 s)
        pre_spawn = {k: v for k, v in
                     dask.config.get("distributed.nanny.pre-spawn-environ", {}).items()
                     if k != MALLOC_TRIM_ENV}
        pre_spawn[DASK_LOG_ENV] = level
        self._saved_env = {k: os.environ.get(k) for k in set(pre_spawn) | set(kwargs["env"])}
        _LOG_LEVEL.hold(level)
        self._log_level_held = True
        try:
            with dask.config.set({"distributed.nanny.pre-spawn-environ": pre_spawn}):
                super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        except BaseException:
            self._release_log_level()
            raise
        finally:
            self._restore_env()

    def _restore_env(self) -> None:
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def _release_log_level(self) -> None:
        if getattr(self, "_log_level_held", False):
            self._log_level_held = False
            _LOG_LEVEL.release()

    def close(self, *args: Any, **kwargs: Any) -> Any:
        """Close the cluster, then restore the environment and distributed's log level."""
        try:
            return super().close(*args, **kwargs)
        finally:
            self._restore_env()
            self._release_log_level()


def dask_task_runner(address: str | None = None, workers: int | None = None) -> DaskTaskRunner:
    """A Dask task runner for the detection flow.

    Args:
        address: Scheduler of an existing ``distributed`` cluster (e.g. ``tcp://host:8786``);
            default ``$MICROCHANGE_DASK_ADDRESS``; when unset a LocalCluster is started for the run.
        workers: Worker processes of the LocalCluster (default ``$MICROCHANGE_DASK_WORKERS`` or the
            cores this process may run on); one thread each.

    Returns:
        The configured :class:`prefect_dask.DaskTaskRunner`.
    """
    address = address or os.environ.get(ADDRESS_ENV) or None
    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_class="microchange.flows.runners.EnvKeepingLocalCluster",
                          cluster_kwargs=_local_cluster_spec(workers))


def _local_cluster_spec(workers: int | None) -> dict[str, Any]:
    """LocalCluster arguments: ``workers`` processes (default: env or the cores), one thread."""
    return {
        "n_workers": workers or int(os.environ.get(WORKERS_ENV, "0")) or usable_cores(),
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": None,
        "env": _WORKER_ENV,
    }


@contextmanager
def dask_client(address: str | None = None, workers: int | None = None) -> Iterator[Client]:
    """A client of an existing Dask scheduler, or of a LocalCluster started for the block.

    What ``microchange detect --runner dask`` scores its tiles on, without Prefect.

    Args:
        address: Scheduler of an existing ``distributed`` cluster (e.g. ``tcp://host:8786``);
            default ``$MICROCHANGE_DASK_ADDRESS``; when unset a LocalCluster is started.
        workers: Worker processes of the LocalCluster (default ``$MICROCHANGE_DASK_WORKERS`` or the
            cores this process may run on); one thread each.

    Yields:
        The connected client; the LocalCluster (if any) closes with the block.
    """
    address = address or os.environ.get(ADDRESS_ENV) or None
    if address:
        with Client(address) as client:
            yield client
        return
    with EnvKeepingLocalCluster(**_local_cluster_spec(workers)) as cluster, \
            Client(cluster) as client:
        yield client


def gpu_annotation(config: DetectConfig | None,
                   client: Any = None) -> AbstractContextManager[None]:
    """Within the block, Dask tasks ask for one ``GPU`` resource if the detection uses GPUs.

    Wrap the submission of the deep tile tasks in it. It is a no-op when the detection runs no
    network or runs it on the CPU, when the flow's tasks do not go to Dask, and when no worker
    of the cluster declares a ``GPU`` resource (tasks asking for one would wait for ever; a
    warning says so if the network would run on CUDA here).

    Args:
        config: The detection's parameters (None: the defaults).
        client: Client of the cluster the tasks go to (default: the running flow's
            DaskTaskRunner's).

    Returns:
        ``dask.annotate(resources={"GPU": 1})`` or a null context.
    """
    config = config or DetectConfig()
    if not may_use_cuda(config):
        return nullcontext()
    client = client or _flow_dask_client()
    if client is None:
        return nullcontext()
    if not has_gpu_workers(client):
        if runs_on_cuda(config):
            log.warning("the network runs on CUDA but no worker of the Dask cluster declares a "
                        "%r resource (e.g. `dask worker --resources GPU=1`): tile tasks are not "
                        "pinned to GPUs", GPU_RESOURCE)
        return nullcontext()
    return annotate(resources={GPU_RESOURCE: 1})


def task_slots() -> int:
    """How many tasks the running flow's task runner runs at once (threads of a Dask cluster).

    Outside a flow, or on a runner whose width is unknown: the CPUs available here.
    """
    client = _flow_dask_client()
    if client is not None:
        return max(1, sum(client.nthreads().values()))
    from prefect.context import FlowRunContext

    runner = getattr(FlowRunContext.get(), "task_runner", None)
    width = getattr(runner, "_max_workers", None)
    unbounded = not isinstance(width, int) or width < 1 or width >= sys.maxsize
    return available_cpus() if unbounded else int(width)


def _flow_dask_client() -> Any:
    """Client of the running flow's DaskTaskRunner; None outside a flow or on another runner."""
    from prefect.context import FlowRunContext

    runner = getattr(FlowRunContext.get(), "task_runner", None)
    return runner.client if isinstance(runner, DaskTaskRunner) else None
