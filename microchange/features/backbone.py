"""Features of a truncated ImageNet-style CNN: the feature space of deep CVA.

Deep change vector analysis (Saha, Bovolo & Bruzzone 2019, "Unsupervised deep change vector
analysis for multiple-change detection in VHR images", IEEE TGRS 57(6)) compares both dates in the
feature space of a CNN: several layers of a truncated backbone are upsampled back to pixel
resolution, concatenated, and the change vector between the dates is scored (here by
:class:`~microchange.scoring.distance.CvaScorer`).

What :class:`BackboneFeatures` does, in order:

1. **Input scaling.** Band values arrive preprocessed (float32). Each band of each date is
   standardised with a mean and std fitted on the global sample, so the network sees ~N(0, 1)
   inputs and a global gain/offset between the acquisitions is removed, as in CVA on bands
   (:class:`~microchange.features.bands.BandFeatures`). Pooling both dates instead leaves that
   difference in every pixel (an earlier measurement found it much lowered ROC-AUC); with
   per-date scaling and the default layers, ROC-AUC is 0.983 on Taizhou and 0.939 on OSCD
   Rennes (``benchmarks/accuracy.py``, 2026-11-28). Invalid pixels are set to 0 (the mean) before the
   network and their features to 0 after it (fill before, re-mask after).
2. **Any band count.** The backbone's first convolution takes 3 bands. With N == 3 bands it is used
   as is (in the input's band order); otherwise it is replaced by an N-band convolution whose
   filter for every band is the mean of the RGB filters scaled by 3/N: a scene that looks the same
   in every band then gives the first layer the response the 3-band network gives a grey image.
3. **Layers.** The network is cut after the deepest chosen layer (eval mode, BatchNorm folded
   into the convolutions). Each chosen layer's maps are standardised per feature (mean/std fitted
   on the global sample, both dates pooled, on pixel-resolution values) and, by default, projected
   onto the ``n_features`` principal axes of the sample's standardised change vectors (the axes
   that keep most of the squared CVA norm; this bounds memory: the detector holds the features of
   every sample block while fitting). Both steps are linear, so they run as one 1x1 convolution at
   each layer's own resolution; the projected layers are then upsampled bilinearly and summed
   coarse to fine, and the sum is upsampled to pixel resolution. With ``n_features=None`` every
   standardised feature is kept: each layer is upsampled and they are concatenated.
4. **Tile-size invariance.** ``halo`` covers the receptive field of the deepest layer plus one
   stride for the bilinear upsampling, rounded up to a multiple of the total stride S. Every
   block is padded at its start so that the network input begins on a raster row/column that is
   a multiple of S (this needs tile offsets that are multiples of S: the tile size must be one),
   and at its end to a multiple of S. The outer ``halo`` ring of each block, whose receptive
   field leaves the block, is not computed and holds 0 (no later stage may use it).

Determinism: the network, head and upsampling run in the resolved precision
(``DeepConfig.precision``: bf16 autocast on CUDA and on CPUs with bf16 instructions, 1.4x the
float32 speed of resnet18 on 2 Zen 4 cores with the same mean F1 / kappa on the shared data;
float32 elsewhere). The convolutions (oneDNN, left on) gave the same values for a pixel for every
block shape and batch tried (disabling oneDNN halves the speed and is not needed);
``F.interpolate`` does not (its vectorised loop rounds some outputs differently, ~5e-7,
depending on the width), so upsampling is done with plain multiplies and adds
(:func:`_upsample`). Scores are byte-identical for any tile size and batch on a given CPU
(tests/microchange/test_backbone.py). CUDA results are close to, not bit-equal with, the CPU's.
Network weights are never fitted: they come from the ``weights`` file or, with
``weights=None``, from ``torch.manual_seed(seed)``.
"""

from __future__ import annotations

import contextlib
import math
import pickle
import re
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as nnf
from numpy.typing import NDArray
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from microchange.errors import BandMismatchError, ConfigError
from microchange.features.bands import masked_band_stats
from microchange.features.base import FeatureSample, State
from microchange.features.devices import autocast, resolve_device, resolve_precision, seeded
from microchange.tiling import crop_core

__all__ = ("BACKBONES", "DEFAULT_LAYERS", "BackboneFeatures", "load_state_dict_file")

BACKBONES = ("resnet18", "resnet34", "resnet50", "vgg16")
"""Backbones accepted by :class:`BackboneFeatures`."""

DEFAULT_LAYERS: dict[str, tuple[str, ...]] = {
    "resnet18": ("conv1", "layer1"),
    "resnet34": ("conv1", "layer1"),
    "resnet50": ("conv1", "layer1"),
    "vgg16": ("stage1", "stage2"),
}
"""Layers used when ``layers`` is None: the two shallowest stages (strides 2 and 4; vgg16 1 and
2). With random weights (the default: nothing is downloaded) shallow layers score best on the
shared benchmark: resnet18 mean ROC-AUC over OSCD Rennes, Taizhou, Bern and San Francisco is
0.978 for conv1+layer1, 0.956 for layer1, 0.939 for layer1+layer2 (0.983 for conv1 alone, hardly
deep; measured 2026-11-28 with the sensor defaults). With pretrained weights deeper layers may pay off: pass ``layers``."""

_RESNET_LAYERS = ("conv1", "layer1", "layer2", "layer3", "layer4")
# vgg16 ``features`` index of the last ReLU of each convolution stage (before its max-pool).
_VGG_STAGES = {"stage1": 3, "stage2": 8, "stage3": 15, "stage4": 22, "stage5": 29}


# -- weights ---------------------------------------------------------------------------------
def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a local state dict without executing any code from the file.

    Args:
        path: File written by ``torch.save(model.state_dict(), path)``; a dict holding the state
            dict under 'state_dict' or 'model' is accepted too, and a 'module.' key prefix
            (DataParallel) is dropped.

    Returns:
        Parameter name -> tensor, on the CPU.

    Raises:
        ConfigError: If the file is missing, unreadable, refused by ``weights_only`` loading
            (it holds objects other than tensors: possibly code), or is not a state dict.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"weights file {str(path)!r} does not exist: give a local state dict file written by "
            "torch.save(model.state_dict(), path), or no weights for random ones"
        )
    try:
        obj = torch.load(p, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        found = re.search(r"WeightsUnpickler error:\s*(.+?)(?: was not an allowed|\n\n|$)",
                          str(exc), re.DOTALL)
        detail = found.group(1).strip() if found else str(exc).strip()[:200]
        if "Unsupported global" in detail:
            raise ConfigError(
                f"weights file {str(path)!r} is not a plain state dict: it holds objects other "
                f"than tensors ({detail}), which are never loaded (they could run code): save "
                "only model.state_dict()"
            ) from None
        raise ConfigError(
            f"weights file {str(path)!r} cannot be read as a torch state dict ({detail}): give "
            "a file written by torch.save(model.state_dict(), path)"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
        raise ConfigError(
            f"weights file {str(path)!r} cannot be read as a torch state dict "
            f"({type(exc).__name__}: {exc})"
        ) from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise ConfigError(
            f"weights file {str(path)!r} does not hold a state dict (a mapping of parameter "
            f"names to tensors) but {type(obj).__name__}: save model.state_dict()"
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_into(module: nn.Module, state: Mapping[str, torch.Tensor], path: str,
               backbone: str) -> None:
    """Copy the needed entries of ``state`` into ``module``; ConfigError naming what is wrong."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    if len(missing) == len(expected):
        raise ConfigError(
            f"weights file {path!r} holds none of the {backbone} parameters "
            f"(e.g. {next(iter(expected))!r}; the file has e.g. {next(iter(state))!r}): "
            f"give a torchvision {backbone} state dict"
        )
    if missing:
        raise ConfigError(
            f"weights file {path!r} lacks {len(missing)} {backbone} parameter(s), e.g. "
            f"{missing[:3]}: give a complete torchvision {backbone} state dict"
        )
    bad = [f"{k}: {tuple(state[k].shape)} instead of {tuple(v.shape)}"
           for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        raise ConfigError(
            f"weights file {path!r} does not fit {backbone}: {len(bad)} shape mismatch(es), e.g. "
            f"{'; '.join(bad[:3])} (3-band torchvision {backbone} weights are expected)"
        )
    module.load_state_dict({k: state[k] for k in expected}, strict=True)


# -- network ---------------------------------------------------------------------------------
class _Trunk(nn.Module):
    """A backbone cut after its deepest tapped layer; returns the tapped maps in order."""

    def __init__(self, backbone: str, layers: tuple[str, ...]) -> None:
        super().__init__()
        import torchvision

        self.backbone = backbone
        self.layers = layers
        self.net: Any  # torchvision modules: dynamic attributes
        if backbone == "vgg16":
            last = max(_VGG_STAGES[name] for name in layers)
            feats = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
            self.net = nn.Module()
            self.net.features = nn.Sequential(*list(feats.children())[: last + 1])
            for m in self.net.modules():  # torchvision VGG's own initialisation
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.constant_(m.bias, 0)
            self._taps = {_VGG_STAGES[name]: name for name in layers}
        else:
            net = getattr(torchvision.models, backbone)(weights=None)
            deepest = max(_RESNET_LAYERS.index(name) for name in layers)
            for name in ("fc", "avgpool", *_RESNET_LAYERS[deepest + 1:]):
                delattr(net, name)
            self.net = net

    def first_conv(self) -> nn.Conv2d:
        """The 3-band input convolution."""
        conv = self.net.features[0] if self.backbone == "vgg16" else self.net.conv1
        assert isinstance(conv, nn.Conv2d)
        return conv

    def adapt_input(self, n_bands: int) -> None:
        """Replace the first convolution by an N-band one: mean RGB filter x 3/N per band."""
        old = self.first_conv()
        if old.in_channels == n_bands:
            return
        # skip_init: no draw from torch's global generator (every weight is set below), which
        # another scoring thread may be using under devices.seeded()
        new = nn.utils.skip_init(  # type: ignore[no-untyped-call]
            nn.Conv2d, n_bands, old.out_channels, old.kernel_size, stride=old.stride,
            padding=old.padding, dilation=old.dilation, bias=old.bias is not None)
        with torch.no_grad():
            w = old.weight.mean(dim=1, keepdim=True) * (3.0 / n_bands)
            new.weight.copy_(w.repeat(1, n_bands, 1, 1))
            if old.bias is not None and new.bias is not None:
                new.bias.copy_(old.bias)
        if self.backbone == "vgg16":
            self.net.features[0] = new
        else:
            self.net.conv1 = new

    def fuse_batchnorm(self) -> None:
        """Fold every eval-mode BatchNorm into the convolution before it (resnets; faster)."""
        if self.backbone == "vgg16":
            return
        pairs = [(self.net, "conv1", "bn1")]
        for name in _RESNET_LAYERS[1:]:
            for block in getattr(self.net, name, []):
                pairs += [(block, f"conv{i}", f"bn{i}") for i in (1, 2, 3)
                          if hasattr(block, f"conv{i}")]
                if block.downsample is not None:
                    pairs.append((block.downsample, "0", "1"))
        for parent, conv, bn in pairs:
            fused = fuse_conv_bn_eval(getattr(parent, conv), getattr(parent, bn))
            setattr(parent, conv, fused)
            setattr(parent, bn, nn.Identity())

    def ordered_ops(self) -> list[tuple[str | None, list[nn.Module]]]:
        """(tap name or None, convolutions/pools in forward order) for each stage."""
        if self.backbone == "vgg16":
            return [(self._taps.get(i), [m]) for i, m in enumerate(self.net.features)]
        out: list[tuple[str | None, list[nn.Module]]] = [
            ("conv1", [self.net.conv1]), (None, [self.net.maxpool])]
        for name in _RESNET_LAYERS[1:]:
            if hasattr(self.net, name):
                ops: list[nn.Module] = [
                    m for block in getattr(self.net, name) for m in block.children()
                    if isinstance(m, nn.Conv2d)]
                out.append((name, ops))
        return out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, N, H, W) -> one (B, C_l, H / s_l, W / s_l) map per tapped layer, in tap order."""
        found: dict[str, torch.Tensor] = {}
        if self.backbone == "vgg16":
            for i, m in enumerate(self.net.features):
                x = m(x)
                if i in self._taps:
                    found[self._taps[i]] = x
        else:
            n = self.net
            x = n.relu(n.bn1(n.conv1(x)))
            found["conv1"] = x
            x = n.maxpool(x)
            for name in _RESNET_LAYERS[1:]:
                if not hasattr(n, name):  # cut after the deepest tapped layer
                    break
                x = getattr(n, name)(x)
                found[name] = x
        return [found[name] for name in self.layers]


def _geometry(trunk: _Trunk) -> tuple[dict[str, int], int]:
    """Stride of each tapped layer and the halo each output pixel needs (pixels)."""
    rf, jump, offset = 1.0, 1, 0.0
    strides: dict[str, int] = {}
    need = 0.0
    for tap, ops in trunk.ordered_ops():
        for m in ops:
            if isinstance(m, nn.Conv2d | nn.MaxPool2d):
                k, s, p, d = (v if isinstance(v, int) else int(v[0])
                              for v in (m.kernel_size, m.stride, m.padding, m.dilation))
                offset += jump * (d * (k - 1) / 2 - p)
                rf += (k - 1) * d * jump
                jump *= int(s)
        if tap in trunk.layers:
            strides[tap] = jump
            # bilinear upsampling reads cells whose centres lie within one stride (plus the
            # centre's shift from the cell middle) of the pixel; each reads rf/2 around it
            need = max(need, jump + abs(offset - (jump - 1) / 2) + (rf - 1) / 2)
        if len(strides) == len(trunk.layers):
            break
    stride = max(strides.values())
    return strides, math.ceil(need / stride) * stride


def _layer_width(trunk: _Trunk, layer: str) -> int:
    """Feature maps of one tapped layer."""
    if trunk.backbone == "vgg16":
        convs = [m for m in list(trunk.net.features)[: _VGG_STAGES[layer] + 1]
                 if isinstance(m, nn.Conv2d)]
        return int(convs[-1].out_channels)
    if layer == "conv1":
        return int(trunk.net.conv1.out_channels)
    block = list(getattr(trunk.net, layer))[-1]
    last = [m for m in block.children() if isinstance(m, nn.Conv2d)][-1]
    return int(last.out_channels)


def _upsample_axis(y: torch.Tensor, scale: int, dim: int) -> torch.Tensor:
    """Bilinear (align_corners=False) x``scale`` along one axis, as exact elementwise ops.

    ``F.interpolate`` rounds an output pixel slightly differently depending on where it falls
    in its vectorised loop, i.e. on the block's shape. Here output ``scale * j + q`` is
    ``y[j + d0] * (1 - lam) + y[j + d0 + 1] * lam`` with ``d0``, ``lam`` fixed per phase ``q``: a
    multiply and an add, each exactly rounded, so every tile computes the same bits (edges
    repeat the border value, as ``interpolate`` clamps).
    """
    n = y.shape[dim]
    padded = torch.cat([y.narrow(dim, 0, 1), y, y.narrow(dim, n - 1, 1)], dim=dim)
    shape = list(y.shape)
    shape.insert(dim + 1, scale)
    out = torch.empty(shape, dtype=y.dtype, device=y.device)
    for q in range(scale):
        src = (q + 0.5) / scale - 0.5
        d0 = math.floor(src)
        lam = src - d0
        phase = out.select(dim + 1, q)
        torch.mul(padded.narrow(dim, 1 + d0, n), 1.0 - lam, out=phase)
        phase.add_(padded.narrow(dim, 2 + d0, n) * lam)
    shape = list(y.shape)
    shape[dim] = n * scale
    return out.view(shape)


def _upsample(y: torch.Tensor, scale: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, h * scale, w * scale), bilinear, identical for any crop."""
    if scale == 1:
        return y
    return _upsample_axis(_upsample_axis(y, scale, 3), scale, 2)


def _upsample_crop(y: torch.Tensor, scale: int, rows: tuple[int, int],
                   cols: tuple[int, int]) -> torch.Tensor:
    """Rows ``rows`` and columns ``cols`` of ``_upsample(y, scale)``, bit for bit.

    Only the cells those pixels need (plus one on each side) are upsampled.
    """
    (r0, r1), (c0, c1) = rows, cols
    if scale == 1:
        return y[..., r0:r1, c0:c1]
    h, w = y.shape[-2:]
    a0, a1 = max(0, r0 // scale - 1), min(h, (r1 - 1) // scale + 2)
    b0, b1 = max(0, c0 // scale - 1), min(w, (c1 - 1) // scale + 2)
    up = _upsample(y[..., a0:a1, b0:b1], scale)
    return up[..., r0 - a0 * scale:r1 - a0 * scale, c0 - b0 * scale:c1 - b0 * scale]


def _sample_bilinear(fmap: torch.Tensor, images: NDArray[np.int64], rows: NDArray[np.int64],
                     cols: NDArray[np.int64], scale: int) -> torch.Tensor:
    """Bilinear values of (B, C, h, w) maps at pixels of the x``scale`` grid: (C, k) float64.

    Point ``p`` is pixel (``rows[p]``, ``cols[p]``) of image ``images[p]``: the interpolation of
    :func:`_upsample`, evaluated only where the fit samples pixels.
    """
    h, w = fmap.shape[-2:]
    flat = fmap.transpose(0, 1).reshape(fmap.shape[1], -1).double()  # (C, B * h * w)

    def axis(p: NDArray[np.int64], n: int) -> tuple[NDArray[np.int64], NDArray[np.int64],
                                                     torch.Tensor]:
        src = np.clip((p + 0.5) / scale - 0.5, 0.0, None)
        i0 = np.minimum(np.floor(src).astype(np.int64), n - 1)
        lam = torch.from_numpy(src - i0).to(fmap.device)
        return i0, np.minimum(i0 + 1, n - 1), lam

    r0, r1, lr = axis(rows, h)
    c0, c1, lc = axis(cols, w)
    base = images * (h * w)

    def at(r: NDArray[np.int64], c: NDArray[np.int64]) -> torch.Tensor:
        return flat[:, torch.from_numpy(base + r * w + c).to(fmap.device)]

    top = at(r0, c0) * (1 - lc) + at(r0, c1) * lc
    bottom = at(r1, c0) * (1 - lc) + at(r1, c1) * lc
    return top * (1 - lr) + bottom * lr


_BATCH_PIXELS = 512 * 512
"""Pixels of one image at the nominal tile size: blocks smaller than a tile (the fit's sample
blocks) are batched up to ``batch_size`` images of this many pixels per forward pass, since
per-call overheads dominate on small blocks."""


def _groups(blocks: Sequence[FeatureSample]) -> list[list[int]]:
    """Indexes of the blocks grouped by (shape, halo), in first-seen order: one batch each."""
    groups: dict[tuple[tuple[int, ...], int], list[int]] = {}
    for i, b in enumerate(blocks):
        groups.setdefault((b.valid.shape, b.halo), []).append(i)
    return list(groups.values())


# -- extractor -------------------------------------------------------------------------------
class BackboneFeatures:
    """Per-pixel features from chosen layers of a torchvision CNN (deep CVA, DCVA).

    Args:
        backbone: One of :data:`BACKBONES`.
        layers: Layers to combine; resnets: 'conv1', 'layer1'..'layer4'; vgg16: 'stage1'..
            'stage5' (last ReLU of each convolution stage). None: :data:`DEFAULT_LAYERS`.
        weights: Local state dict of the torchvision backbone (3-band, e.g. ImageNet); None
            builds random weights from ``seed``. Loaded with ``weights_only=True``: a file that
            holds anything but tensors is refused, never executed.
        device: 'auto', 'cpu' or 'cuda' ('cuda:N').
        precision: 'auto', 'fp32' or 'bf16'
            (:func:`~microchange.features.devices.resolve_precision`).
        batch_size: Images (one date of one block each) per forward pass; None: 4 on the CPU
            (bounds memory; larger batches are not faster there), 16 on CUDA. Blocks smaller
            than a 512 px tile are batched up to the same pixel count.
        seed: Seed of the random weights (``weights=None``) and of the fit's pixel subsample.
        n_features: Features kept: the change vectors are projected onto this many principal
            axes of the sample's change vectors (bounds memory and the scorer's work); None keeps
            every standardised feature. In an earlier measurement on six benchmark pairs
            (128 features), 16 kept 68-86 % of the squared change norm and gave the
            same ROC-AUC (within 0.004) and an equal or higher PR-AUC (up to +0.06) than all
            128.
        fit_pixels: Pixels (both dates pooled) used to fit the feature statistics.

    Raises:
        ConfigError: Unknown backbone or layer, CUDA asked for without a GPU, or a bad
            weights file (the message names the file and what is wrong).
    """

    name = "backbone"

    def __init__(
        self,
        backbone: str = "resnet18",
        layers: Sequence[str] | None = None,
        weights: str | Path | None = None,
        device: str = "auto",
        *,
        precision: str = "auto",
        batch_size: int | None = None,
        seed: int = 0,
        n_features: int | None = 16,
        fit_pixels: int = 200_000,
    ) -> None:
        if backbone not in BACKBONES:
            raise ConfigError(
                f"unknown backbone {backbone!r}: choose one of {', '.join(BACKBONES)}"
            )
        allowed = tuple(_VGG_STAGES) if backbone == "vgg16" else _RESNET_LAYERS
        chosen = tuple(layers) if layers else DEFAULT_LAYERS[backbone]
        bad = [name for name in chosen if name not in allowed]
        if bad or len(set(chosen)) != len(chosen):
            raise ConfigError(
                f"invalid layers {chosen!r} for {backbone}: choose distinct names among "
                f"{', '.join(allowed)}"
            )
        if ((batch_size is not None and batch_size < 1)
                or (n_features is not None and n_features < 1) or fit_pixels < 1000):
            raise ConfigError(
                f"batch_size={batch_size!r}, n_features={n_features!r}, fit_pixels="
                f"{fit_pixels!r}: need batch_size >= 1, n_features >= 1 or None, "
                "fit_pixels >= 1000"
            )
        order = allowed if backbone == "vgg16" else _RESNET_LAYERS
        self.backbone = backbone
        self.layers = tuple(sorted(chosen, key=order.index))
        self.weights = None if weights is None else str(weights)
        self.device = resolve_device(device)  # on the CPU: sets torch's threads
        self.precision = resolve_precision(precision, self.device)
        self.batch_size = batch_size or (16 if self.device.type == "cuda" else 4)
        self.seed = seed
        self.n_features = n_features
        self.fit_pixels = fit_pixels
        self._state_dict = None if self.weights is None else load_state_dict_file(self.weights)
        self._template: _Trunk | None = self._make_template()  # checks the weights file now
        self._strides, self._halo = _geometry(self._template)
        self._widths = [_layer_width(self._template, name) for name in self.layers]
        self._trunk: _Trunk | None = None  # built for the band count seen in fit/load_state
        self._n_bands: int | None = None
        self._band_mean: NDArray[np.float64] | None = None  # (2, N): per date
        self._band_std: NDArray[np.float64] | None = None
        self._feat_mean: NDArray[np.float64] | None = None  # (F,)
        self._feat_std: NDArray[np.float64] | None = None
        self._proj: NDArray[np.float64] | None = None  # (K, F) or None (identity)
        self._head: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        self.kept_energy = 1.0
        """Share of the sample's squared change-vector norm kept by the projection (after fit)."""

    # -- geometry ----------------------------------------------------------------------------
    @property
    def stride(self) -> int:
        """Total stride S of the deepest layer: tile offsets must be multiples of it."""
        return max(self._strides.values())

    @property
    def halo(self) -> int:
        """Receptive-field radius of the deepest layer + one stride (a multiple of the stride)."""
        return self._halo

    # -- network -----------------------------------------------------------------------------
    def _make_template(self) -> _Trunk:
        """The 3-band network on the CPU: loaded weights, or random ones from the seed."""
        with seeded(self.seed):
            trunk = _Trunk(self.backbone, self.layers)
        if self._state_dict is not None:
            assert self.weights is not None
            _load_into(trunk.net, self._state_dict, self.weights, self.backbone)
        return trunk.eval().requires_grad_(False)

    def _build(self, n_bands: int) -> _Trunk:
        """The network for N bands: first convolution adapted, BatchNorm folded, on the device."""
        trunk = self._template if self._template is not None else self._make_template()
        self._template = None  # consumed: adapted and fused in place
        trunk.adapt_input(n_bands)
        trunk.eval().requires_grad_(False)
        trunk.fuse_batchnorm()
        trunk.to(self.device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        return trunk

    def _ensure_bands(self, n_bands: int) -> _Trunk:
        if self._trunk is None or self._trunk.first_conv().in_channels != n_bands:
            self._trunk = None
            self._trunk = self._build(n_bands)
        return self._trunk

    @contextlib.contextmanager
    def _compute(self) -> Iterator[None]:
        """inference_mode, autocast to the resolved precision (float32: none)."""
        with torch.inference_mode(), autocast(self.device, self.precision):
            yield

    def _inputs(self, blocks: Sequence[FeatureSample]) -> tuple[torch.Tensor, int]:
        """Standardised, filled, stride-aligned batch (2B, N, H', W') and the start padding."""
        assert self._band_mean is not None and self._band_std is not None
        s = self.stride
        halo = blocks[0].halo
        h, w = blocks[0].valid.shape
        lead = (-halo) % s  # the core starts on a multiple of s, so the block at -halo
        hp = -(-(lead + h) // s) * s
        wp = -(-(lead + w) // s) * s
        mean = self._band_mean.astype(np.float32)[:, :, None, None]
        std = self._band_std.astype(np.float32)[:, :, None, None]
        n = mean.shape[1]
        x = np.zeros((2 * len(blocks), n, hp, wp), np.float32)
        for i, b in enumerate(blocks):
            for j, image in enumerate((b.before, b.after)):
                if image.shape[0] != n:
                    raise BandMismatchError(
                        f"block has {image.shape[0]} bands but the backbone features were fitted "
                        f"on {n}: use the same bands for fit and extract"
                    )
                z = (image - mean[j]) / std[j]
                z[:, ~b.valid] = 0.0
                x[2 * i + j, :, lead:lead + h, lead:lead + w] = z
        t = torch.from_numpy(x).to(self.device).contiguous(memory_format=torch.channels_last)
        return t, lead

    def _run(self, x: torch.Tensor, rows: tuple[int, int], cols: tuple[int, int]
             ) -> torch.Tensor:
        """Network, per-layer head, upsampling: (2B, K, r1 - r0, c1 - c0) features.

        Only rows ``rows`` and columns ``cols`` of the (padded) input are produced at pixel
        resolution. With a projection the layers are summed coarse to fine: the deepest layer's
        projected maps are upsampled to the next layer's resolution and added to its projected
        maps, and so on; only the sum is upsampled to pixel resolution. Without one, each layer is
        upsampled and they are concatenated.
        """
        size = x.shape[-2]
        maps = self._ensure_bands(int(x.shape[1]))(x)
        heads = []
        for fmap, (weight, bias) in zip(maps, self._head, strict=True):
            y = fmap.contiguous()  # NCHW at layer resolution: cheap, and the output follows
            if weight.ndim == 1:  # no projection: per-feature scale and shift
                assert bias is not None
                y = y * weight[:, None, None].to(y.dtype) + bias[:, None, None].to(y.dtype)
            else:
                y = nnf.conv2d(y, weight.to(y.dtype), None if bias is None else bias.to(y.dtype))
            heads.append(y)
        if self._proj is None:
            return torch.cat([_upsample_crop(y, size // y.shape[-2], rows, cols) for y in heads],
                             dim=1)
        heads.sort(key=lambda t: t.shape[-2])  # coarse to fine (deterministic: distinct sizes)
        total = heads[0]
        for y in heads[1:]:
            total = _upsample(total, y.shape[-2] // total.shape[-2]).add_(y)
        return _upsample_crop(total, size // total.shape[-2], rows, cols)

    def _blocks_per_forward(self, h: int, w: int) -> int:
        """Blocks of (h, w) px (two images each) per forward pass."""
        return max(1, self.batch_size // 2, self.batch_size * _BATCH_PIXELS // (2 * h * w))

    def _features(self, blocks: Sequence[FeatureSample]) -> list[NDArray[np.float32]]:
        """(2, F, H, W) float32 features (before, after) of same-shape, same-halo blocks.

        The outer ring of :attr:`halo` pixels, whose receptive field leaves the block (so no
        consumer may use it), is not computed and holds 0. :meth:`_blocks_per_forward` blocks (two
        images each) go through the network at once.
        """
        h, w = blocks[0].valid.shape
        mr = self.halo if h > 2 * self.halo else 0
        mc = self.halo if w > 2 * self.halo else 0
        per = self._blocks_per_forward(h, w)
        res: list[NDArray[np.float32]] = []
        with self._compute():
            for start in range(0, len(blocks), per):
                chunk = blocks[start:start + per]
                x, lead = self._inputs(chunk)
                y = self._run(x, (lead + mr, lead + h - mr), (lead + mc, lead + w - mc))
                full = np.zeros((2 * len(chunk), y.shape[1], h, w), np.float32)
                full[:, :, mr:h - mr, mc:w - mc] = y.float().cpu().numpy()
                for b, f in zip(chunk, full.reshape(len(chunk), 2, -1, h, w), strict=True):
                    if not b.valid.all():
                        f[:, :, ~b.valid] = 0.0
                    res.append(f)
        return res

    def network_forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The bare network on a prepared batch, as extraction runs it (for benchmarks).

        Args:
            x: (B, N, H, W) float32 tensor on :attr:`device`; the first convolution is adapted
                to N bands if needed.

        Returns:
            One (B, C_l, H / s_l, W / s_l) map per layer, in layer order.
        """
        trunk = self._ensure_bands(int(x.shape[1]))
        with self._compute():
            maps: list[torch.Tensor] = trunk(x.contiguous(memory_format=torch.channels_last))
        return maps

    # -- fit / extract -----------------------------------------------------------------------
    def fit(self, samples: Sequence[FeatureSample]) -> None:
        """Fit band statistics, feature statistics and the projection on the global sample.

        Args:
            samples: Prepared blocks spread over the whole raster; ``before``/``after`` are
                (N, H, W) float32 bands; ``halo`` must be at least :attr:`halo`.

        Raises:
            ConfigError: If a block's halo is smaller than :attr:`halo`.
            ValueError: If the sample holds no valid pixel.
        """
        short = [s.halo for s in samples if s.halo < self.halo]
        if short:
            raise ConfigError(
                f"sample blocks have halo {short[0]} < {self.halo} needed by {self.backbone} "
                f"{self.layers}: read blocks with halo >= {self.halo}"
            )
        if not samples:
            raise ValueError("no sample block to fit the backbone features on")
        cores = [crop_core(s.valid, s.halo) for s in samples]
        valids = [np.asarray(v, dtype=bool) for v in cores]
        stats = [masked_band_stats([np.asarray(crop_core(getattr(s, date), s.halo), np.float32)
                                    for s in samples], valids)
                 for date in ("before", "after")]
        self._band_mean = np.stack([m for m, _ in stats])
        self._band_std = np.stack([sd for _, sd in stats])
        self._n_bands = int(self._band_mean.shape[1])
        self._ensure_bands(self._n_bands)
        # feature statistics on an evenly spread subset of blocks, pixels subsampled
        counts = np.array([int(v.sum()) for v in cores])
        total = int(counts.sum())
        if total == 0:
            raise ValueError("no valid pixel in the sample: the inputs hold only nodata")
        per_date = max(1, self.fit_pixels // 2)
        rng = np.random.default_rng(self.seed)
        use = np.flatnonzero(counts)
        if total > 2 * per_date:  # evenly spread blocks holding ~2x the pixels, then subsample
            keep = min(len(use), math.ceil(2 * per_date / counts[use].mean()))
            use = np.unique(use[np.linspace(0, len(use) - 1, keep).round().astype(int)])
        take_frac = min(1.0, per_date / max(1, int(counts[use].sum())))
        chosen: dict[int, NDArray[np.int64]] = {}
        for i in use.tolist():
            pix = np.flatnonzero(cores[i])
            k = max(1, round(len(pix) * take_frac))
            chosen[i] = np.sort(rng.choice(pix, size=k, replace=False)) if k < len(pix) else pix
        fb: list[torch.Tensor] = []
        fa: list[torch.Tensor] = []
        keys = list(chosen)
        for group in _groups([samples[i] for i in keys]):
            ids = [keys[j] for j in group]
            per = self._blocks_per_forward(*samples[ids[0]].valid.shape)
            for start in range(0, len(ids), per):
                chunk = ids[start:start + per]
                x, lead = self._inputs([samples[i] for i in chunk])
                width = cores[chunk[0]].shape[1]
                pix = np.concatenate([chosen[i] for i in chunk])
                block_of = np.repeat(np.arange(len(chunk)), [len(chosen[i]) for i in chunk])
                rows = pix // width + samples[chunk[0]].halo + lead
                cols = pix % width + samples[chunk[0]].halo + lead
                with self._compute():
                    maps = self._ensure_bands(self._n_bands)(x)
                    for date, dest in ((0, fb), (1, fa)):  # image 2b: before, 2b + 1: after
                        dest.append(torch.cat([_sample_bilinear(
                            m, 2 * block_of + date, rows, cols, x.shape[-2] // m.shape[-2])
                            for m in maps]).T.cpu())  # (k, F)
        xb, xa = torch.cat(fb), torch.cat(fa)  # (n, F) float64
        both = torch.cat([xb, xa])
        mean_t = both.mean(dim=0)
        std_t = both.std(dim=0, correction=0)
        fmean = mean_t.numpy()
        fstd = np.maximum(std_t.numpy(), np.maximum(1e-6 * np.abs(fmean), 1e-12))
        self._feat_mean, self._feat_std = fmean, fstd
        n_feat = fmean.shape[0]
        if self.n_features is None or self.n_features >= n_feat:
            self._proj = None
            self.kept_energy = 1.0
        else:
            d = (xa - xb) / torch.from_numpy(fstd)
            moment = (d.T @ d / max(1, d.shape[0])).numpy()
            vals, vecs = np.linalg.eigh(moment)
            order = np.argsort(vals)[::-1][: self.n_features]
            self.kept_energy = float(vals[order].sum() / max(vals.sum(), 1e-300))
            proj = vecs[:, order].T
            signs = np.sign(proj[np.arange(len(proj)), np.abs(proj).argmax(axis=1)])
            self._proj = proj * signs[:, None]
        self._make_head()

    def _make_head(self) -> None:
        """Per-layer (weight, bias) tensors folding standardisation (and projection)."""
        assert self._feat_mean is not None and self._feat_std is not None
        trunk_maps = self._widths
        if sum(trunk_maps) != self._feat_mean.shape[0]:
            raise ConfigError(
                f"fitted state has {self._feat_mean.shape[0]} features but {self.backbone} "
                f"{self.layers} gives {sum(trunk_maps)}: the state belongs to another backbone"
            )
        scale = 1.0 / self._feat_std
        shift = -self._feat_mean * scale
        head: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        start = 0
        for li, c in enumerate(trunk_maps):
            sl = slice(start, start + c)
            start += c
            if self._proj is None:
                w = torch.from_numpy(scale[sl].astype(np.float32))
                b: torch.Tensor | None = torch.from_numpy(shift[sl].astype(np.float32))
            else:
                wk = self._proj[:, sl] * scale[sl][None, :]
                w = torch.from_numpy(wk.astype(np.float32)[:, :, None, None].copy())
                b = (torch.from_numpy((self._proj @ shift).astype(np.float32)) if li == 0
                     else None)
            head.append((w.to(self.device), None if b is None else b.to(self.device)))
        self._head = head

    def extract(self, block: FeatureSample) -> FeatureSample:
        """Features of both dates of one block: (K, H, W) float32 each, 0 at invalid pixels."""
        return self.extract_batch([block])[0]

    def extract_batch(self, blocks: Sequence[FeatureSample]) -> list[FeatureSample]:
        """Features of several blocks; blocks of one shape go through the network together."""
        if self._band_mean is None or not self._head:
            raise RuntimeError("BackboneFeatures.extract called before fit/load_state")
        out: list[FeatureSample | None] = [None] * len(blocks)
        for idx in _groups(blocks):
            feats = self._features([blocks[i] for i in idx])
            for i, f in zip(idx, feats, strict=True):
                out[i] = FeatureSample(f[0], f[1], blocks[i].valid, blocks[i].halo)
        return [o for o in out if o is not None]

    # -- state -------------------------------------------------------------------------------
    def state(self) -> State:
        """Fitted statistics (band and feature mean/std, projection) and the weights' seed."""
        if self._band_mean is None or self._feat_mean is None:
            return {}
        st: State = {
            "seed": np.asarray(self.seed, np.int64),
            "backbone": np.asarray(f"{self.backbone}:{','.join(self.layers)}"),
            "band_mean": self._band_mean, "band_std": np.asarray(self._band_std),
            "feat_mean": self._feat_mean, "feat_std": np.asarray(self._feat_std),
        }
        if self._proj is not None:
            st["projection"] = self._proj
        return st

    def load_state(self, state: State) -> None:
        """Restore what :meth:`state` saved (rebuilding random weights if the seed differs).

        Raises:
            ConfigError: If the state was fitted for another backbone or other layers.
        """
        ident = str(np.asarray(state["backbone"]))
        mine = f"{self.backbone}:{','.join(self.layers)}"
        if ident != mine:
            raise ConfigError(f"fitted state is for {ident!r}, not {mine!r}: fit again")
        seed = int(np.asarray(state["seed"]))
        if seed != self.seed:  # random weights of another seed: rebuilt on first use
            self.seed = seed
            self._template = self._trunk = None
        self._band_mean = np.asarray(state["band_mean"], np.float64)
        self._band_std = np.asarray(state["band_std"], np.float64)
        self._n_bands = int(self._band_mean.shape[-1])
        self._ensure_bands(self._n_bands)
        self._feat_mean = np.asarray(state["feat_mean"], np.float64)
        self._feat_std = np.asarray(state["feat_std"], np.float64)
        self._proj = (np.asarray(state["projection"], np.float64) if "projection" in state
                      else None)
        self._make_head()

