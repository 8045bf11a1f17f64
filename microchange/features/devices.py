"""Choosing the torch device and thread count (imports torch lazily: CVA never pays for it)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from microchange.blocks import available_cpus
from microchange.errors import ConfigError

__all__ = ("available_cpus", "cpu_threads", "resolve_device", "seeded", "sharing_cpus")

_local = threading.local()
_SEEDED = threading.Lock()


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global CPU generator with ``seed`` for the block, one thread at a time.

    Module constructors draw their initial weights from the global generator. Tiles are scored
    on several threads, each building its own network: without the lock their draws interleave
    and random weights (``backbone`` without a weights file) differ from thread to thread. The
    generator's state is restored on exit (``torch.random.fork_rng``).
    """
    import torch

    with _SEEDED, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def cpu_threads() -> int:
    """Threads torch may use in the calling thread: its share of :func:`available_cpus`.

    That is all of them, unless the thread runs inside :func:`sharing_cpus`: several threads
    scoring tiles at once each get ``available_cpus() // workers`` (at least 1).
    """
    return max(1, available_cpus() // getattr(_local, "workers", 1))


@contextmanager
def sharing_cpus(workers: int) -> Iterator[None]:
    """Within the block, the calling thread is one of ``workers`` sharing the CPUs.

    torch's intra-op thread count is per calling thread; if torch is loaded it is set to the
    thread's share on entry and restored on exit, so concurrent forward passes do not
    oversubscribe the cores.
    """
    import sys

    torch = sys.modules.get("torch")
    saved = getattr(_local, "workers", 1), torch.get_num_threads() if torch else None
    _local.workers = max(1, workers)
    if torch is not None:
        torch.set_num_threads(cpu_threads())
    try:
        yield
    finally:
        _local.workers = saved[0]
        if torch is not None and saved[1] is not None:
            torch.set_num_threads(saved[1])


def resolve_device(name: str) -> Any:
    """The ``torch.device`` for 'auto', 'cpu' or 'cuda'.

    Args:
        name: 'auto' (CUDA when available, else CPU), 'cpu' or 'cuda' / 'cuda:N'.

    Returns:
        A ``torch.device``.

    Raises:
        ConfigError: If 'cuda' is asked for and no CUDA device is available, or the name is
            unknown.
    """
    import torch

    if name == "auto" and torch.cuda.is_available():
        return torch.device("cuda")
    if name in ("auto", "cpu"):
        torch.set_num_threads(cpu_threads())
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {name!r} requested but no CUDA GPU is available here: use --device cpu "
                "or --device auto"
            )
        return torch.device(name)
    raise ConfigError(f"unknown device {name!r}: use 'auto', 'cpu' or 'cuda'")
