"""Task runners for the flows: Dask on a local cluster by default, or an existing scheduler.

Tiles are scored as Prefect tasks mapped over tile batches; with a Dask task runner each batch
runs in a Dask worker process, so a raster is scored on all cores of one machine (LocalCluster)
or on a ``distributed`` cluster that the user already runs (``address``). Workers get one thread
each and ``OMP_NUM_THREADS=1`` so that numpy, GDAL and torch do not oversubscribe the cores.
"""

import os
from typing import Any

import dask
from distributed import LocalCluster
from prefect_dask.task_runners import DaskTaskRunner

ADDRESS_ENV = "MICROCHANGE_DASK_ADDRESS"
WORKERS_ENV = "MICROCHANGE_DASK_WORKERS"

_WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "GDAL_NUM_THREADS": "1", "DASK_LOGGING__DISTRIBUTED": "warning"}


class EnvKeepingLocalCluster(LocalCluster):
    """A ``distributed.LocalCluster`` that leaves this process's environment as it found it.

    Before it spawns a worker, distributed's Nanny writes ``distributed.nanny.pre-spawn-environ``
    (``OMP_NUM_THREADS=1``, ``MKL_NUM_THREADS=1``, ``OPENBLAS_NUM_THREADS=1``,
    ``MALLOC_TRIM_THRESHOLD_``) into the *parent's* ``os.environ`` and never removes it. In a
    process that runs several flows, every later local run would then see one CPU
    (:func:`microchange.parallel.available_cpus` reads ``OMP_NUM_THREADS``) and score its tiles on
    one thread. The variables are restored once the workers are up and again at close.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        keys = set(dask.config.get("distributed.nanny.pre-spawn-environ", {})) | set(_WORKER_ENV)
        self._saved_env = {k: os.environ.get(k) for k in keys}
        try:
            super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        finally:
            self._restore_env()

    def _restore_env(self) -> None:
        for k, v in self._saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def close(self, *args: Any, **kwargs: Any) -> Any:
        """Close the cluster, then restore the environment again."""
        try:
            return super().close(*args, **kwargs)
        finally:
            self._restore_env()


def dask_task_runner(address: str | None = None, workers: int | None = None) -> DaskTaskRunner:
    """A Dask task runner for the detection flow.

    Args:
        address: Scheduler of an existing ``distributed`` cluster (e.g. ``tcp://host:8786``);
            default ``$MICROCHANGE_DASK_ADDRESS``; when unset a LocalCluster is started for the run.
        workers: Worker processes of the LocalCluster (default ``$MICROCHANGE_DASK_WORKERS`` or the
            number of CPUs); one thread each.

    Returns:
        The configured :class:`prefect_dask.DaskTaskRunner`.
    """
    address = address or os.environ.get(ADDRESS_ENV) or None
    if address:
        return DaskTaskRunner(address=address)
    n = workers or int(os.environ.get(WORKERS_ENV, "0")) or (os.cpu_count() or 1)
    cluster_kwargs: dict[str, Any] = {
        "n_workers": n,
        "threads_per_worker": 1,
        "processes": True,
        "dashboard_address": None,
        "env": _WORKER_ENV,
    }
    return DaskTaskRunner(cluster_class="microchange.flows.runners.EnvKeepingLocalCluster",
                          cluster_kwargs=cluster_kwargs)
