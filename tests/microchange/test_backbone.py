"""The 'backbone' method: deep CVA on a torchvision CNN (random or local weights, no download)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from microchange.config import DeepConfig, DetectConfig
from microchange.detector import build_detector
from microchange.errors import ConfigError
from microchange.features.backbone import BackboneFeatures
from microchange.pipeline import run_detection
from microchange.types import PairArrays

LIGHT = ("layer1",)  # stride 4, halo 28: fast unit tests


def _block(bands: int, core: int, halo: int, seed: int = 0, shift: float = 0.0) -> PairArrays:
    rng = np.random.default_rng(seed)
    size = core + 2 * halo
    before = rng.normal(100, 10, (bands, size, size)).astype(np.float32)
    after = (before + rng.normal(0, 1, before.shape) + shift).astype(np.float32)
    valid = np.ones((size, size), bool)
    return PairArrays(before, after, valid, halo)


def _fitted(bands: int = 4, **kwargs) -> tuple[BackboneFeatures, PairArrays]:
    ext = BackboneFeatures("resnet18", kwargs.pop("layers", LIGHT), device="cpu", **kwargs)
    block = _block(bands, 32, ext.halo)
    ext.fit([block])
    return ext, block


def test_geometry_of_default_layers() -> None:
    ext = BackboneFeatures(device="cpu")
    assert ext.layers == ("conv1", "layer1") and ext.stride == 4
    # layer1 receptive field 43 px (radius 21) + one stride 4 (+1.5 centre shift), rounded up
    assert ext.halo == 28
    deep = BackboneFeatures(layers=("layer2", "layer1"), device="cpu")
    assert deep.layers == ("layer1", "layer2") and deep.stride == 8
    # layer2 receptive field 99 px (radius 49) + one stride 8 (+3.5), rounded up to 8
    assert deep.halo == 64
    vgg = BackboneFeatures("vgg16", device="cpu")
    assert vgg.stride == 2 and vgg.halo % 2 == 0 and vgg.halo >= 8 + 2


def test_feature_shapes_dtype_and_mask() -> None:
    ext, fitted = _fitted(n_features=8)
    # a block seen in the fit and a copy of it give the same features
    from_fit = ext.extract(fitted)
    fresh = ext.extract(PairArrays(fitted.before.copy(), fitted.after.copy(),
                                      fitted.valid.copy(), fitted.halo))
    assert np.array_equal(from_fit.before, fresh.before)
    assert np.array_equal(from_fit.after, fresh.after)
    block = _block(4, 32, ext.halo, seed=9)
    block.valid[:5, :] = False
    out = ext.extract(block)
    size = block.valid.shape
    assert out.before.shape == out.after.shape == (8, *size)
    assert out.before.dtype == out.after.dtype == np.float32
    assert np.isfinite(out.before).all()
    assert (out.before[:, :5] == 0).all() and (out.after[:, :5] == 0).all()
    # the outer halo ring (receptive field outside the block) is not computed: 0
    assert (out.before[:, :, -ext.halo:] == 0).all() and (out.after[:, -ext.halo:] == 0).all()
    assert out.halo == block.halo and out.valid is block.valid
    # standardised features: ~zero mean, unit scale on the core
    core = out.before[:, block.halo:-block.halo, block.halo:-block.halo]
    assert 0.1 < float(core.std()) < 10


def test_extract_batch_groups_shapes_and_matches_extract() -> None:
    ext, block = _fitted(n_features=None)
    other = _block(4, 20, ext.halo, seed=3)
    third = _block(4, 32, ext.halo, seed=5)
    batch = ext.extract_batch([block, other, third])
    assert [b.before.shape[1:] for b in batch] == [block.valid.shape, other.valid.shape,
                                                  third.valid.shape]
    assert batch[0].before.shape[0] == 64  # layer1 of resnet18, no projection
    for b, single in zip(batch, (block, other, third), strict=True):
        ref = ext.extract(single)
        assert np.array_equal(b.before, ref.before) and np.array_equal(b.after, ref.after)


@pytest.mark.parametrize("bands", [1, 3, 4, 13])
def test_any_band_count(bands: int) -> None:
    ext, block = _fitted(bands)
    assert ext._trunk.first_conv().in_channels == bands
    trunk = BackboneFeatures("resnet18", LIGHT, device="cpu")._template  # 3 bands, same seed
    ref = trunk.first_conv().weight.clone()
    assert ref.shape[1] == 3
    trunk.adapt_input(bands)
    conv = trunk.first_conv()
    if bands == 3:
        assert torch.equal(conv.weight, ref)
    else:  # mean RGB filter, repeated per band, scaled by 3/N
        expected = ref.mean(dim=1, keepdim=True) * (3 / bands)
        for b in range(bands):
            torch.testing.assert_close(conv.weight[:, b:b + 1], expected)
    out = ext.extract(block)
    assert np.isfinite(out.before).all() and out.before.shape[1:] == block.valid.shape


@pytest.mark.parametrize(("backbone", "layers"), [
    ("resnet18", None), ("vgg16", ("stage1", "stage2")), ("resnet50", ("conv1",))])
def test_block_features_do_not_depend_on_the_tiling(backbone: str, layers) -> None:
    # block offsets below are multiples of 8, the largest stride used here
    ext = BackboneFeatures(backbone, layers, device="cpu", n_features=4)
    halo = ext.halo + 3  # e.g. a smoothing halo before the extractor: blocks start off-stride
    rng = np.random.default_rng(1)
    raster = rng.normal(size=(2, 3, 48 + 2 * halo + 16, 48 + 2 * halo + 16)).astype(np.float32)

    def block(r: int, c: int, h: int, w: int) -> PairArrays:  # core at raster (r, c)
        b = raster[:, :, r - halo + halo:r + h + halo + halo, c - halo + halo:c + w + halo + halo]
        return PairArrays(b[0].copy(), b[1].copy(), np.ones(b.shape[-2:], bool), halo)

    ext.fit([block(0, 0, 48, 48)])
    whole = ext.extract(block(0, 0, 48, 48))
    cut = (slice(halo, -halo), slice(halo, -halo))
    for r, c, h, w in ((0, 0, 24, 24), (24, 0, 24, 24), (0, 24, 24, 24), (24, 24, 20, 12),
                       (16, 8, 16, 28)):
        part = ext.extract(block(r, c, h, w))
        got = part.before[(slice(None), *cut)]
        want = whole.before[:, halo + r:halo + r + h, halo + c:halo + c + w]
        if backbone == "vgg16":
            # oneDNN picks vgg16's full-resolution 3x3 kernels by input shape: one float32
            # rounding step apart (seen: 4e-6 on unit-scale features), not bit-equal
            np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
        else:
            np.testing.assert_array_equal(got, want)


def test_state_round_trip_without_pickle(tmp_path: Path) -> None:
    ext, block = _fitted(seed=7, n_features=8)
    path = tmp_path / "state.npz"
    np.savez(path, **ext.state())
    with np.load(path, allow_pickle=False) as data:
        state = {k: data[k] for k in data.files}
    assert int(state["seed"]) == 7
    fresh = BackboneFeatures("resnet18", LIGHT, device="cpu")  # seed 0: rebuilt from the state
    fresh.load_state(state)
    a, b = ext.extract(block), fresh.extract(block)
    assert np.array_equal(a.before, b.before) and np.array_equal(a.after, b.after)
    other = BackboneFeatures("resnet18", ("layer1", "layer2"), device="cpu")
    with pytest.raises(ConfigError, match="fitted state is for"):
        other.load_state(state)


def test_weights_file_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(123)
    net = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)
    loaded = BackboneFeatures("resnet18", LIGHT, weights=path, device="cpu")
    assert torch.equal(loaded._template.first_conv().weight, net.conv1.weight)
    random_ext, block = _fitted(3)
    loaded.fit([block])
    assert not np.allclose(loaded.extract(block).before, random_ext.extract(block).before)
    # DataParallel prefixes and {'state_dict': ...} wrappers are accepted
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, wrapped)
    again = BackboneFeatures("resnet18", LIGHT, weights=wrapped, device="cpu")
    assert torch.equal(again._template.first_conv().weight, net.conv1.weight)


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_checkpoint_with_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.zeros(1), "x": _Payload(marker)}, path)
    with pytest.raises(ConfigError, match=r"evil\.pth.*not a plain state dict"):
        BackboneFeatures("resnet18", LIGHT, weights=path, device="cpu")
    assert not marker.exists()


def test_bad_weights_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.pth.*does not exist"):
        BackboneFeatures(weights=tmp_path / "missing.pth", device="cpu")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ConfigError, match=r"junk\.pth.*cannot be read"):
        BackboneFeatures(weights=junk, device="cpu")
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(ConfigError, match=r"list\.pth.*does not hold a state dict"):
        BackboneFeatures(weights=listed, device="cpu")
    other = tmp_path / "other.pth"
    torch.save({"foo.weight": torch.zeros(3)}, other)
    with pytest.raises(ConfigError, match=r"other\.pth.*none of the resnet18 parameters"):
        BackboneFeatures(weights=other, device="cpu")
    sd = torchvision.models.resnet18(weights=None).state_dict()
    sd["layer1.0.conv1.weight"] = torch.zeros(64, 64, 5, 5)
    shaped = tmp_path / "shaped.pth"
    torch.save(sd, shaped)
    with pytest.raises(ConfigError, match=r"shaped\.pth.*shape mismatch.*layer1\.0\.conv1"):
        BackboneFeatures(weights=shaped, device="cpu")
    del sd["layer1.0.conv1.weight"]
    partial = tmp_path / "partial.pth"
    torch.save(sd, partial)
    with pytest.raises(ConfigError, match=r"partial\.pth.*lacks 1"):
        BackboneFeatures(weights=partial, device="cpu")
    vgg = tmp_path / "vgg.pth"  # a resnet file for vgg16
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), vgg)
    with pytest.raises(ConfigError, match=r"vgg\.pth.*none of the vgg16 parameters"):
        BackboneFeatures("vgg16", weights=vgg, device="cpu")


def test_bad_options() -> None:
    with pytest.raises(ConfigError, match="invalid layers"):
        BackboneFeatures("resnet18", ("stage2",), device="cpu")
    with pytest.raises(ConfigError, match="unknown backbone"):
        BackboneFeatures("alexnet", device="cpu")
    with pytest.raises(ConfigError, match=r"tile_size 100 is not a multiple of the backbone's "
                                          r"stride 8: use e\.g\. 512"):
        build_detector(DetectConfig(method="backbone", tile_size=100,
                                    deep=DeepConfig(layers=("layer2",))))


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_cuda_without_gpu_is_a_config_error(planted_pair, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        build_detector(DetectConfig(method="backbone", deep=DeepConfig(device="cuda")))
    from microchange.cli import main

    before, after, _ = planted_pair
    code = main(["detect", str(before), str(after), "--out", str(tmp_path / "o"),
                 "--method", "backbone", "--device", "cuda"])
    assert code == 2


def test_cva_and_import_do_not_load_torch() -> None:
    code = ("import sys, microchange, microchange.pipeline, microchange.cli\n"
            "from microchange.config import DetectConfig\n"
            "from microchange.detector import build_detector\n"
            "build_detector(DetectConfig(method='cva'))\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


@pytest.mark.parametrize("layers", [LIGHT, pytest.param(None, marks=pytest.mark.slow)])
def test_pipeline_tile_size_invariant_deterministic_and_finds_changes(planted_pair, tmp_path: Path,
                                                                       layers) -> None:
    before, after, truth = planted_pair  # 150 x 170: not a multiple of any tile size below
    scores, masks, raw = {}, {}, {}
    runs = (("t64", 64, None), ("t64-again", 64, None), ("t64-1", 64, 1), ("whole", 256, 1))
    for name, tile, threads in runs:
        cfg = DetectConfig(method="backbone", tile_size=tile, batch_tiles=3,
                           deep=DeepConfig(device="cpu", layers=layers))
        out = tmp_path / name
        run_detection(before, after, out, cfg, threads=threads)
        raw[name] = (out / "change_score.tif").read_bytes()
        scores[name], masks[name] = _read(out / "change_score.tif"), _read(out / "change_mask.tif")
    # deterministic, byte for byte, with tiles scored on several threads (each builds its random
    # weights from the seed: devices.seeded() keeps their draws from interleaving)
    assert raw["t64"] == raw["t64-again"]
    # tile-size invariant, exactly, at one thread count (oneDNN convolutions give identical
    # values for any shape)
    np.testing.assert_array_equal(scores["whole"], scores["t64-1"])
    np.testing.assert_array_equal(masks["whole"], masks["t64-1"])
    # torch's intra-op thread count (all CPUs for one scoring thread, a share each for several)
    # moves scores by a few float32 steps
    np.testing.assert_allclose(scores["t64"], scores["t64-1"], rtol=1e-5, atol=0)
    np.testing.assert_array_equal(masks["t64"], masks["t64-1"])
    s = scores["t64"]
    assert np.isfinite(s).all()
    assert s[truth].mean() > 3 * s[~truth].mean()
    assert masks["t64"][truth].mean() > 0.9
