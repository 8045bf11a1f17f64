"""Device and CPU-thread choice for torch (no GPU needed)."""

import threading

import pytest
import torch

from microchange.errors import ConfigError
from microchange.features import devices
from microchange.features.devices import (
    cpu_threads,
    resolve_device,
    resolve_precision,
    sharing_cpus,
)
from microchange.parallel import available_cpus


def test_omp_num_threads_bounds_the_cpus(monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert available_cpus() == 6 and cpu_threads() == 6


def test_threads_sharing_the_cpus_each_get_their_share(monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    seen: dict[str, tuple[int, int]] = {}

    def work(name: str) -> None:
        with sharing_cpus(2):
            seen[name] = (cpu_threads(), torch.get_num_threads())

    outer = torch.get_num_threads()
    threads = [threading.Thread(target=work, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"a": (2, 2), "b": (2, 2)}
    assert cpu_threads() == 4 and torch.get_num_threads() == outer
    with sharing_cpus(8):  # more workers than CPUs: one thread each, never zero
        assert cpu_threads() == 1


def test_cuda_without_a_gpu_is_a_config_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ConfigError, match="no CUDA GPU is available here: use --device cpu"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path) -> None:
    with_bf16 = tmp_path / "zen4"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    amx = tmp_path / "spr"
    amx.write_text("flags\t\t: avx2 amx_bf16 amx_tile\n")
    without = tmp_path / "skylake"
    without.write_text("flags\t\t: fpu avx2 avx512f avx512bw\n")
    assert devices.native_bf16_cpu(str(with_bf16)) and devices.native_bf16_cpu(str(amx))
    assert not devices.native_bf16_cpu(str(without))
    assert not devices.native_bf16_cpu(str(tmp_path / "missing"))


@pytest.mark.parametrize(("asked", "native", "expected"), [
    ("auto", True, "bf16"), ("auto", False, "fp32"), ("fp32", True, "fp32"),
    ("bf16", False, "bf16"),
])
def test_precision_on_the_cpu(monkeypatch, asked, native, expected) -> None:
    monkeypatch.setattr(devices, "native_bf16_cpu", lambda: native)
    assert resolve_precision(asked, torch.device("cpu")) == expected


def test_unknown_precision_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown precision 'fp8'.*auto, fp32, bf16"):
        resolve_precision("fp8", torch.device("cpu"))
