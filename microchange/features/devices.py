"""Choosing the torch device and thread count (imports torch lazily: CVA never pays for it)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from functools import cache
from pathlib import Path
from typing import Any

from microchange.config import DEEP_METHODS, DetectConfig, Precision, choices
from microchange.errors import ConfigError
from microchange.parallel import available_cpus

__all__ = ("PRECISIONS", "autocast", "available_cpus", "cpu_threads", "cuda_available",
           "may_use_cuda", "native_bf16_cpu", "resolve_device", "resolve_precision",
           "runs_on_cuda", "seeded", "sharing_cpus")

PRECISIONS = choices(Precision)
"""Names accepted by ``DeepConfig.precision``."""
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_GPU_DEVICE_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd",
                     "/dev/dxg")
"""Linux device files of a GPU driver (NVIDIA, ROCm, WSL): without any, torch finds no GPU."""

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


def _gpu_driver_present() -> bool:
    """Whether this machine may have a GPU for torch (cheap: no torch import on Linux)."""
    if not sys.platform.startswith("linux"):
        return True  # no cheap test: ask torch
    return any(Path(p).exists() for p in _GPU_DEVICE_FILES)


def cuda_available() -> bool:
    """Whether torch sees a CUDA (or ROCm) device here.

    torch is imported only when it is loaded already or a GPU driver is present, so that a
    process that never runs a network (CVA, a flow's parent process) does not pay for it.
    """
    if "torch" not in sys.modules and not _gpu_driver_present():
        return False
    import torch

    return bool(torch.cuda.is_available())


def may_use_cuda(config: DetectConfig) -> bool:
    """Whether the detection runs a network that may run on CUDA (device 'auto' or 'cuda')."""
    return config.resolved_method()[0] in DEEP_METHODS and config.deep.device != "cpu"


def runs_on_cuda(config: DetectConfig) -> bool:
    """Whether the detection's network runs on CUDA in this process (see resolve_device)."""
    if not may_use_cuda(config):
        return False
    return config.deep.device.startswith("cuda") or cuda_available()


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


@cache
def native_bf16_cpu(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has bfloat16 instructions (AVX512-BF16 or AMX-BF16).

    Read from the ``flags`` of ``/proc/cpuinfo``: torch offers no public query, and oneDNN runs
    bf16 convolutions on other CPUs too, but emulated and slower than float32. False where the
    file cannot be read (not Linux).
    """
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.partition(":")[2].split())
            return any(f in flags for f in _BF16_FLAGS)
    return False


def resolve_precision(precision: str, device: Any) -> str:
    """The arithmetic a network runs in: 'fp32', 'bf16' or (CUDA without bf16) 'fp16'.

    Args:
        precision: 'auto', 'fp32' or 'bf16' (``DeepConfig.precision``).
        device: The ``torch.device`` of the network.

    Returns:
        'auto' gives bf16 autocast on CUDA (fp16 on GPUs without bf16) and on CPUs with native
        bf16 instructions (:func:`native_bf16_cpu`; about 2x the float32 forward pass of the
        'learned' network on 2 cores), float32 on other CPUs. 'bf16' on a GPU without bf16
        gives fp16.

    Raises:
        ConfigError: If the name is unknown.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return "fp32"
    if device.type == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "bf16" or native_bf16_cpu():
        return "bf16"
    return "fp32"


def autocast(device: Any, precision: str) -> Any:
    """Autocast context for a resolved ``precision`` ('fp32': no autocast) on ``device``."""
    if precision == "fp32":
        return nullcontext()
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)
