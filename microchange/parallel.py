"""Where the per-block work of the fit stage runs: in this process, or on a Dask cluster.

The fit stage reads the global sample (blocks from all over the raster), fits each preprocessing
statistic from per-block partial results, and prepares every block for the feature extractor.
Each statistic is a reduction: a map over the blocks (``partial``, e.g. the valid values or the
local speckle ratios of one block) and a combine of the small parts in block order on the caller
(``fit_parts``, e.g. a median).

:class:`LocalBlocks` runs the maps in the calling process (the CLI). :class:`DaskBlocks` runs them
on a ``distributed`` cluster, a LocalCluster or an existing scheduler alike: the blocks are read
by the workers and stay in their memory between steps; only the partial statistics and, at the
end, the prepared blocks travel back. Both call the same functions in the same order, so the fit
is the same either way.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from itertools import pairwise
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from distributed import Client

__all__ = ("GPU_RESOURCE", "DaskBlocks", "LocalBlocks", "SampleBlocks", "SampleStatistic",
           "SwitchedStatistic", "available_cpus", "cluster_client", "has_gpu_workers",
           "ordered_map", "usable_cores")

GPU_RESOURCE = "GPU"
"""Dask worker resource a worker with a GPU declares; deep tile tasks ask for one."""


def has_gpu_workers(client: Client) -> bool:
    """Whether a worker of ``client``'s cluster declares a :data:`GPU_RESOURCE`."""
    workers = client.scheduler_info()["workers"].values()
    return any(w.get("resources", {}).get(GPU_RESOURCE) for w in workers)

T = TypeVar("T")
U = TypeVar("U")
P = TypeVar("P")
R = TypeVar("R")


class SampleStatistic(ABC):
    """A statistic fitted on the global sample as a reduction over its blocks.

    Subclasses give the per-block part (:meth:`partial`, run wherever the blocks are held) and
    the combine (:meth:`fit_parts`, run here on the parts in block order).
    """

    @property
    @abstractmethod
    def needs_fit(self) -> bool:
        """Whether :meth:`fit_parts` has anything to fit (False: skip the reduction)."""

    @abstractmethod
    def partial(self, before: NDArray[np.float32], after: NDArray[np.float32],
                valid: NDArray[np.bool_]) -> Any:
        """One block's share of the fit."""

    @abstractmethod
    def fit_parts(self, parts: Sequence[Any]) -> None:
        """Fit from the :meth:`partial` of every sample block, in block order."""

    def fit(self, samples: Sequence[tuple[NDArray[np.float32], NDArray[np.float32],
                                          NDArray[np.bool_]]]) -> None:
        """Fit in this process from (before, after, valid) blocks: (C, H, W) values, (H, W)."""
        self.fit_parts([self.partial(*s) for s in samples] if self.needs_fit else [])

    def fit_on(self, blocks: SampleBlocks[Any], part: Callable[[Any], Any] | None = None) -> None:
        """Fit as a reduction over blocks wherever they are held (skipped when not needed).

        Args:
            blocks: Blocks with ``before``, ``after`` and ``valid`` (e.g. ``PairArrays``).
            part: A block's share of the fit (default: :meth:`partial` of its arrays).
        """
        if not self.needs_fit:
            self.fit_parts([])
            return
        blocks.reduce(part or partial(_arrays_part, self.partial), self.fit_parts)


class SwitchedStatistic(SampleStatistic):
    """A :class:`SampleStatistic` that is fitted only when its preprocessing step is on.

    Args:
        enabled: Whether the step is on (off: nothing is fitted).
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    @property
    def needs_fit(self) -> bool:
        """Whether the step is on."""
        return self.enabled

    def _pooled(self, parts: Sequence[NDArray[Any]]) -> NDArray[Any] | None:
        """The (C, N) parts side by side; None when the step is off or the parts are empty."""
        if not self.enabled or not parts:
            return None
        values = np.concatenate(parts, axis=1)
        return values if values.shape[1] else None


def _arrays_part(fn: Callable[[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]], Any],
                 block: Any) -> Any:
    """``fn(before, after, valid)`` of a block."""
    return fn(block.before, block.after, block.valid)


class LocalBlocks(Generic[T]):
    """Blocks held in this process.

    Maps run on ``threads`` threads (NumPy, SciPy and GDAL release the GIL); results keep the
    block order.

    Args:
        items: The blocks, in order.
        threads: Threads running the per-block functions.
    """

    def __init__(self, items: Sequence[T], *, threads: int = 1) -> None:
        self.items = list(items)
        self.threads = max(1, threads)

    @classmethod
    def load(cls, sources: Sequence[Any], load: Callable[[list[Any]], list[T]], *,
             threads: int = 1) -> LocalBlocks[T]:
        """Load blocks here: ``load`` turns a consecutive run of ``sources`` into blocks.

        Args:
            sources: What each block is made from (e.g. a window to read), in order.
            load: Called once per run of sources (one run per thread, each e.g. with its own
                reader); may drop some sources.
            threads: Threads loading runs concurrently.
        """
        n = max(1, min(threads, len(sources)))
        bounds = np.linspace(0, len(sources), n + 1).round().astype(int)
        runs = [list(sources[a:b]) for a, b in pairwise(bounds)]
        items = [x for run in ordered_map(load, runs, n) for x in run]
        return cls(items, threads=threads)

    def map(self, fn: Callable[[T], U]) -> LocalBlocks[U]:
        """Apply ``fn`` to every block."""
        return LocalBlocks(ordered_map(fn, self.items, self.threads), threads=self.threads)

    def reduce(self, partial: Callable[[T], P], combine: Callable[[list[P]], R]) -> R:
        """``combine`` (here) of ``partial`` of every block, in block order."""
        return combine(ordered_map(partial, self.items, self.threads))

    def collect(self) -> list[T]:
        """The blocks as a list, in order."""
        return list(self.items)

    def __len__(self) -> int:
        return len(self.items)


def available_cpus() -> int:
    """CPUs this process may use: OMP_NUM_THREADS if set, else the CPUs it may run on.

    Inside Dask workers set OMP_NUM_THREADS (workers x threads <= cores) to avoid oversubscription.
    """
    env = os.environ.get("OMP_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return usable_cores()


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), whatever OMP_NUM_THREADS says.

    The budget of a cluster started on this machine: workers x threads <= usable_cores().
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def ordered_map(fn: Callable[[T], U], items: Sequence[T], threads: int) -> list[U]:
    """``[fn(x) for x in items]``, on ``threads`` threads when there are several.

    For work that releases the GIL (NumPy, SciPy, GDAL, torch); results keep the order of items.
    """
    if threads <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(threads, len(items))) as pool:
        return list(pool.map(fn, items))


class DaskBlocks(Generic[T]):
    """Blocks held in the memory of a Dask cluster's workers (a persisted ``dask.bag``).

    Args:
        bag: The blocks, persisted on the cluster.
        client: Client of the cluster.
    """

    def __init__(self, bag: Any, client: Any) -> None:
        self.bag = bag
        self.client = client

    @classmethod
    def load(cls, sources: Sequence[Any], load: Callable[[list[Any]], list[T]], client: Any,
             *, partitions: int | None = None) -> DaskBlocks[T]:
        """Load blocks on the workers: ``load`` turns a run of ``sources`` into blocks.

        Args:
            sources: What each block is made from (e.g. a window to read), in order.
            load: Called on a worker with a consecutive run of ``sources``; returns their blocks
                (it may drop some, e.g. blocks without a valid pixel).
            client: Client of the cluster.
            partitions: Runs of sources (default: 4 per worker thread, at most one per source).
        """
        import dask.bag as db

        if partitions is None:
            threads = sum(client.nthreads().values()) or 1
            partitions = 4 * threads
        partitions = max(1, min(partitions, len(sources)))
        bag = db.from_sequence(  # type: ignore[no-untyped-call]
            list(sources), npartitions=partitions).map_partitions(load)
        return cls(client.persist(bag), client)

    def map(self, fn: Callable[[T], U]) -> DaskBlocks[U]:
        """Apply ``fn`` to every block on the workers; the result stays there."""
        return DaskBlocks(self.client.persist(self.bag.map(fn)), self.client)

    def reduce(self, partial: Callable[[T], P], combine: Callable[[list[P]], R]) -> R:
        """``partial`` of every block on the workers, then ``combine`` here, in block order."""
        return combine(self.client.compute(self.bag.map(partial)).result())

    def collect(self) -> list[T]:
        """Bring the blocks here, in order."""
        return list(self.client.compute(self.bag).result())

    def __len__(self) -> int:
        return int(self.client.compute(self.bag.count()).result())


SampleBlocks = LocalBlocks[T] | DaskBlocks[T]
"""Blocks of the global sample, wherever they are held."""


@contextmanager
def cluster_client() -> Iterator[Client | None]:
    """A client of the Dask cluster when this code runs inside one of its workers, else None.

    The worker's thread leaves its pool while the client is open (``distributed.worker_client``),
    so work submitted from a task cannot deadlock a cluster with one thread per worker.
    """
    try:
        from distributed import get_worker, worker_client

        get_worker()
    except (ImportError, ValueError):
        yield None
        return
    with worker_client() as client:
        yield client
