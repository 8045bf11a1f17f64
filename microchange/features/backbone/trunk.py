"""The truncated torchvision network of 'backbone' and the upsampling of its feature maps.

Upsampling is done with plain multiplies and adds rather than ``F.interpolate``, whose
vectorised loop rounds some outputs differently depending on the width: scores are then the
same for any tile size and batch on a given CPU.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ("DEFAULT_LAYERS", "RESNET_LAYERS", "VGG_STAGES", "Trunk", "geometry", "layer_width", "sample_bilinear", "upsample",
           "upsample_crop")

DEFAULT_LAYERS: dict[str, tuple[str, ...]] = {
    "resnet18": ("conv1", "layer1"),
    "resnet34": ("conv1", "layer1"),
    "resnet50": ("conv1", "layer1"),
    "vgg16": ("stage1", "stage2"),
}
"""Layers used when ``layers`` is None: the two shallowest stages (strides 2 and 4; vgg16 1 and
2), which score best with random weights (docs: *Deep features*). With pretrained weights deeper
layers may pay off: pass ``layers``."""

RESNET_LAYERS = ("conv1", "layer1", "layer2", "layer3", "layer4")
# vgg16 ``features`` index of the last ReLU of each convolution stage (before its max-pool).
VGG_STAGES = {"stage1": 3, "stage2": 8, "stage3": 15, "stage4": 22, "stage5": 29}


class Trunk(nn.Module):
    """A backbone cut after its deepest tapped layer; returns the tapped maps in order."""

    def __init__(self, backbone: str, layers: tuple[str, ...]) -> None:
        super().__init__()
        import torchvision

        self.backbone = backbone
        self.layers = layers
        self.net: Any  # torchvision modules: dynamic attributes
        if backbone == "vgg16":
            last = max(VGG_STAGES[name] for name in layers)
            feats = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
            self.net = nn.Module()
            self.net.features = nn.Sequential(*list(feats.children())[: last + 1])
            for m in self.net.modules():  # torchvision VGG's own initialisation
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.constant_(m.bias, 0)
            self._taps = {VGG_STAGES[name]: name for name in layers}
        else:
            net = getattr(torchvision.models, backbone)(weights=None)
            deepest = max(RESNET_LAYERS.index(name) for name in layers)
            for name in ("fc", "avgpool", *RESNET_LAYERS[deepest + 1:]):
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
        for name in RESNET_LAYERS[1:]:
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
        for name in RESNET_LAYERS[1:]:
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
            for name in RESNET_LAYERS[1:]:
                if not hasattr(n, name):  # cut after the deepest tapped layer
                    break
                x = getattr(n, name)(x)
                found[name] = x
        return [found[name] for name in self.layers]


def geometry(trunk: Trunk) -> tuple[dict[str, int], int]:
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


def layer_width(trunk: Trunk, layer: str) -> int:
    """Feature maps of one tapped layer."""
    if trunk.backbone == "vgg16":
        convs = [m for m in list(trunk.net.features)[: VGG_STAGES[layer] + 1]
                 if isinstance(m, nn.Conv2d)]
        return int(convs[-1].out_channels)
    if layer == "conv1":
        return int(trunk.net.conv1.out_channels)
    block = list(getattr(trunk.net, layer))[-1]
    last = [m for m in block.children() if isinstance(m, nn.Conv2d)][-1]
    return int(last.out_channels)


def __upsample_axis(y: torch.Tensor, scale: int, dim: int) -> torch.Tensor:
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


def upsample(y: torch.Tensor, scale: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, C, h * scale, w * scale), bilinear, identical for any crop."""
    if scale == 1:
        return y
    return __upsample_axis(__upsample_axis(y, scale, 3), scale, 2)


def upsample_crop(y: torch.Tensor, scale: int, rows: tuple[int, int],
                   cols: tuple[int, int]) -> torch.Tensor:
    """Rows ``rows`` and columns ``cols`` of ``upsample(y, scale)``, bit for bit.

    Only the cells those pixels need (plus one on each side) are upsampled.
    """
    (r0, r1), (c0, c1) = rows, cols
    if scale == 1:
        return y[..., r0:r1, c0:c1]
    h, w = y.shape[-2:]
    a0, a1 = max(0, r0 // scale - 1), min(h, (r1 - 1) // scale + 2)
    b0, b1 = max(0, c0 // scale - 1), min(w, (c1 - 1) // scale + 2)
    up = upsample(y[..., a0:a1, b0:b1], scale)
    return up[..., r0 - a0 * scale:r1 - a0 * scale, c0 - b0 * scale:c1 - b0 * scale]


def sample_bilinear(fmap: torch.Tensor, images: NDArray[np.int64], rows: NDArray[np.int64],
                     cols: NDArray[np.int64], scale: int) -> torch.Tensor:
    """Bilinear values of (B, C, h, w) maps at pixels of the x``scale`` grid: (C, k) float64.

    Point ``p`` is pixel (``rows[p]``, ``cols[p]``) of image ``images[p]``: the interpolation of
    :func:`upsample`, evaluated only where the fit samples pixels.
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
