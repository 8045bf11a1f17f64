"""The detect flow on an existing ``distributed`` cluster: same outputs, and it survives a lost worker.

The cluster is what a user runs: a ``dask scheduler`` and ``dask worker`` processes on loopback,
started here as subprocesses. Workers run without a nanny, so a killed worker stays dead and the
other one has to finish the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from microchange.config import DetectConfig
from microchange.pipeline import run_detection
from microchange.synthetic import make_scene, write_scene

pytestmark = pytest.mark.timeout(240)

OUTPUTS = ("change_mask.tif", "change_score.tif")
CONFIG = DetectConfig(method="cva", tile_size=64, batch_tiles=1)  # 36 tiles, one task each
TILES = 36


@contextmanager
def dask_cluster(folder: Path, workers: int = 2,
                 resources: str | None = None) -> Iterator[tuple[str, dict[str, int]]]:
    """Scheduler + ``workers`` one-thread worker processes on 127.0.0.1, each a subprocess.

    Yields the scheduler's address and the pid of each worker (keyed by worker address, as
    the workers themselves report it).
    """
    from distributed import Client

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "GDAL_NUM_THREADS": "1",
           "DASK_LOGGING__DISTRIBUTED": "warning"}
    info = folder / "scheduler.json"
    dask = [sys.executable, "-m", "dask"]
    procs = [subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(info)], env=env)]
    try:
        worker = [*dask, "worker", "--scheduler-file", str(info), "--host", "127.0.0.1",
                  "--nthreads", "1", "--no-nanny", "--no-dashboard", "--memory-limit", "0"]
        worker += ["--resources", resources] if resources else []
        procs += [subprocess.Popen([*worker, "--name", f"w{i}"], env=env)
                  for i in range(workers)]
        with Client(scheduler_file=str(info), timeout=60) as client:
            client.wait_for_workers(workers, timeout=60)
            pids = client.run(os.getpid)
            assert set(pids.values()) == {p.pid for p in procs[1:]}
            yield client.scheduler.address, pids
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def _tiles_done(out: Path) -> int:
    return len(list(out.glob(".microchange-staging/*/parts/tile_*.json")))


class WorkerKiller(threading.Thread):
    """SIGKILLs one busy worker process once ``after`` tiles of the run in ``out`` are done."""

    def __init__(self, address: str, pids: dict[str, int], out: Path, after: int) -> None:
        super().__init__(daemon=True)
        self.address, self.pids, self.out, self.after = address, pids, out, after
        self.killed: int | None = None  # pid
        self.done_at_kill = -1
        self.was_busy = False  # the victim had a task running: killed mid-task
        self.stop = threading.Event()

    def run(self) -> None:
        from distributed import Client

        with Client(self.address, timeout=30) as client:
            while not self.stop.wait(0.02):
                if _tiles_done(self.out) < self.after:
                    continue
                busy = [w for w, keys in client.processing().items() if keys]
                victim = busy[0] if busy else next(iter(self.pids))
                os.kill(self.pids[victim], signal.SIGKILL)
                self.killed, self.done_at_kill = self.pids[victim], _tiles_done(self.out)
                self.was_busy = bool(busy)
                return


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A synthetic 384 x 384 pair and its outputs from the in-process pipeline."""
    folder = tmp_path_factory.mktemp("scene")
    paths = write_scene(make_scene(height=384, width=384, seed=4, n_changes=10), folder / "in")
    run_detection(paths["before"], paths["after"], folder / "plain", CONFIG)
    return {**paths, "plain": folder / "plain"}


def _assert_same_bytes(a: Path, b: Path) -> None:
    for name in OUTPUTS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_existing_cluster_gives_local_outputs_and_survives_a_killed_worker(
        prefect_harness, scene, tmp_path) -> None:
    from distributed import Client

    from microchange.flows.detect import detect_changes_on_dask

    args = {"before": str(scene["before"]), "after": str(scene["after"]), "config": CONFIG}
    with dask_cluster(tmp_path) as (address, pids):
        flow = detect_changes_on_dask(address=address)
        t0 = time.perf_counter()
        summary = flow(out=str(tmp_path / "remote"), **args)
        print(f"run on 2 workers: {time.perf_counter() - t0:.1f} s")
        assert summary["counts"]["tiles"] == TILES
        _assert_same_bytes(scene["plain"], tmp_path / "remote")

        killer = WorkerKiller(address, pids, tmp_path / "killed", after=6)
        killer.start()
        t0 = time.perf_counter()
        try:
            summary = flow(out=str(tmp_path / "killed"), **args)
        finally:
            killer.stop.set()
            killer.join(10)
        print(f"run with a worker killed after {killer.done_at_kill} tiles: "
              f"{time.perf_counter() - t0:.1f} s")
        assert killer.killed is not None, "no worker was killed"
        assert killer.was_busy and killer.done_at_kill < TILES, "not killed mid-run"
        with Client(address, timeout=30) as client:  # the survivor did the rest, alone
            assert list(client.run(os.getpid).values()) == [
                p for p in pids.values() if p != killer.killed]
    assert summary["counts"]["tiles"] == TILES
    _assert_same_bytes(scene["plain"], tmp_path / "killed")


def test_deep_tile_tasks_hold_a_worker_gpu(prefect_harness, tmp_path) -> None:
    """The annotation reaches the scheduler: a pinned task holds the worker's GPU while it runs."""
    from prefect import flow, task
    from prefect_dask.task_runners import DaskTaskRunner

    from microchange.flows.runners import gpu_annotation

    @task
    def gpus_left(batch: int) -> float:
        from distributed import get_worker

        return float(get_worker().state.available_resources["GPU"])

    with dask_cluster(tmp_path, workers=1, resources="GPU=1") as (address, _):
        @flow(task_runner=DaskTaskRunner(address=address))
        def probe(config: DetectConfig) -> list[float]:
            with gpu_annotation(config):  # as around score_tiles.map in the detect flow
                pinned = gpus_left.map([0, 1])
            return [*pinned.result(), gpus_left.submit(2).result()]

        assert probe(DetectConfig(method="backbone")) == [0.0, 0.0, 1.0]  # deep, 'auto'
        assert probe(CONFIG) == [1.0, 1.0, 1.0]  # CVA: no network, no GPU
