"""Choosing the torch device and thread count (imports torch lazily: CVA never pays for it)."""

from __future__ import annotations

import os
from typing import Any

from microchange.errors import ConfigError

__all__ = ("cpu_threads", "resolve_device")


def cpu_threads() -> int:
    """Threads torch may use: the CPUs this process may run on, or OMP_NUM_THREADS if set.

    Inside Dask workers set OMP_NUM_THREADS (workers x threads <= cores) to avoid oversubscription.
    """
    env = os.environ.get("OMP_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


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

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
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
