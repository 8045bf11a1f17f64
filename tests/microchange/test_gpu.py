"""CUDA code paths of the CNN methods (marked ``gpu``: off by default, run with ``-m gpu``).

The same runs on the CPU are the reference: on CUDA the networks run under bf16 autocast, so
scores are close to, not equal with, the CPU's; masks must agree on almost every pixel and both
must find the planted changes.
"""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

torch = pytest.importorskip("torch")

from microchange.config import DeepConfig, DetectConfig
from microchange.pipeline import run_detection
from microchange.synthetic import make_scene, write_scene

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    scene = make_scene(height=384, width=320, n_changes=25, seed=3)
    return write_scene(scene, tmp_path_factory.mktemp("gpu")), scene.truth.astype(bool)


def _read(path):
    with rasterio.open(path) as src:
        return src.read(1)


@pytest.mark.parametrize("method", ["backbone", "learned"])
def test_cuda_matches_cpu_and_finds_changes(scene, tmp_path, method) -> None:
    files, truth = scene
    outs = {}
    for device in ("cpu", "cuda"):
        cfg = DetectConfig(method=method, tile_size=128, deep=DeepConfig(device=device, epochs=5))
        summary = run_detection(files["before"], files["after"], tmp_path / device, cfg)
        assert summary["counts"]["changed_px"] > 0
        outs[device] = (_read(tmp_path / device / "change_mask.tif"),
                        _read(tmp_path / device / "change_score.tif"))
    (mask_cpu, score_cpu), (mask_gpu, score_gpu) = outs["cpu"], outs["cuda"]
    corr = np.corrcoef(score_cpu.ravel(), score_gpu.ravel())[0, 1]
    assert corr > 0.95, corr
    assert (mask_cpu == mask_gpu).mean() > 0.98
    for mask in (mask_cpu, mask_gpu):  # both find most of the planted change
        assert (mask[truth] == 1).mean() > 0.3


def test_cuda_tiles_agree(scene, tmp_path) -> None:
    files, _ = scene
    masks = []
    for tile in (64, 128):
        cfg = DetectConfig(method="backbone", tile_size=tile, deep=DeepConfig(device="cuda"))
        run_detection(files["before"], files["after"], tmp_path / str(tile), cfg)
        masks.append(_read(tmp_path / str(tile) / "change_mask.tif"))
    assert (masks[0] == masks[1]).mean() > 0.999
