"""The networks of the 'learned' extractor, their features and their training loss.

Three 3x3 convolutions of 16 channels with ReLU, then a 1x1 output: no normalisation layers, no
strides, no dilation (receptive-field radius 3 px). ``cross`` and ``cross-cal`` train two residual
regressors (before -> after, after -> before) whose last layer starts at zero, so an untrained
network scores like CVA; ``dae`` trains one encoder-decoder shared by both dates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.nn import functional as F

from microchange.features.devices import seeded

__all__ = (
    "ARCHITECTURES",
    "DEFAULT_OBJECTIVE",
    "Architecture",
    "CrossNet",
    "DaeNet",
    "Regressor",
    "build_net",
    "feature_groups",
    "loss_of",
    "stack_groups",
)

HUBER_DELTA = 1.0


@dataclass(frozen=True)
class Architecture:
    """Shape of the network of one objective.

    Attributes:
        name: Architecture name recorded in checkpoints.
        objective: 'cross', 'cross-cal' or 'dae'.
        width: Channels of the hidden layers.
        dilations: Dilation of each 3x3 layer (their sum is the receptive-field radius).
        code: Feature channels of the DAE encoder (0 for 'cross').
        calibrated: Cross-prediction whose residuals are divided by a per-pixel scale fitted
            after training (:func:`fit_scales`).
    """

    name: str
    objective: str
    width: int = 16
    dilations: tuple[int, ...] = (1, 1, 1)
    code: int = 0
    calibrated: bool = False

    @property
    def cross(self) -> bool:
        """Whether the objective is cross-prediction (plain or calibrated)."""
        return self.objective.startswith("cross")

    @property
    def halo(self) -> int:
        """Receptive-field radius of the feature network in pixels."""
        return sum(self.dilations)

    def describe(self) -> dict[str, Any]:
        """JSON-like description (checkpoint metadata; compared when loading)."""
        return {"name": self.name, "objective": self.objective, "width": self.width,
                "dilations": list(self.dilations), "layers": len(self.dilations) + 1,
                "code": self.code, "halo": self.halo, "calibrated": self.calibrated}


ARCHITECTURES: dict[str, Architecture] = {
    "cross": Architecture("cross-residual-cnn", "cross"),
    "cross-cal": Architecture("cross-residual-cnn-calibrated", "cross-cal", calibrated=True),
    "dae": Architecture("dae-cnn", "dae", code=8),
}
"""Objective name -> architecture."""

DEFAULT_OBJECTIVE = "cross"
"""Objective used when ``DeepConfig.objective`` is None and no checkpoint sets one (every sensor
family: ``cross-cal`` residuals are heavy-tailed, which misleads the clustering of the scorer)."""


def _trunk(cin: int, width: int, dilations: Sequence[int], cout: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = cin
    for d in dilations:
        layers += [nn.Conv2d(c, width, 3, padding=d, dilation=d), nn.ReLU(inplace=True)]
        c = width
    layers.append(nn.Conv2d(c, cout, 1))
    return nn.Sequential(*layers)


class Regressor(nn.Module):
    """x + g(x); g's last layer starts at zero (identity mapping before training).

    Calibrated, it also has a 1x1 head on g's last hidden layer giving the log of the expected
    squared residual ``s(x)``, clamped to the range seen when it was fitted (``s_range``).
    """

    s_range: torch.Tensor  # (2,) buffer of the calibrated: bounds of s(x) over the fit

    def __init__(self, bands: int, arch: Architecture) -> None:
        super().__init__()
        self.body = _trunk(bands, arch.width, arch.dilations, bands)
        last = self.body[-1]
        assert isinstance(last, nn.Conv2d)
        nn.init.zeros_(last.weight)
        if last.bias is not None:
            nn.init.zeros_(last.bias)
        self.scale: nn.Conv2d | None = None
        if arch.calibrated:
            self.scale = nn.Conv2d(arch.width, 1, 1)
            assert self.scale.bias is not None
            nn.init.zeros_(self.scale.weight)
            nn.init.zeros_(self.scale.bias)
            self.scale.requires_grad_(False)  # fitted after training, not by gradient
            self.register_buffer("s_range", torch.zeros(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The prediction of the other date: x + g(x)."""
        return x + self.body(x)  # type: ignore[no-any-return]

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """Activations of g's last hidden layer."""
        return self.body[:-1](x)  # type: ignore[no-any-return]

    def scaled(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(prediction, 1 / residual scale): the scale is ``exp(s(x) / 2)``."""
        assert self.scale is not None
        h = self.hidden(x)
        pred = x + self.body[-1](h)
        lo, hi = self.s_range.tolist()
        return pred, torch.exp(-0.5 * self.scale(h).clamp(lo, hi))


class CrossNet(nn.Module):
    """Cross-prediction: ``ab`` maps before -> after, ``ba`` after -> before."""

    def __init__(self, bands: int, arch: Architecture) -> None:
        super().__init__()
        self.ab = Regressor(bands, arch)
        self.ba = Regressor(bands, arch)


class DaeNet(nn.Module):
    """Denoising autoencoder shared by both dates; the encoder's codes are the features."""

    def __init__(self, bands: int, arch: Architecture) -> None:
        super().__init__()
        self.encoder = _trunk(bands, arch.width, arch.dilations, arch.code)
        self.decoder = nn.Sequential(
            nn.ReLU(), nn.Conv2d(arch.code, arch.width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(arch.width, bands, 1),
        )


def build_net(arch: Architecture, bands: int, seed: int) -> nn.Module:
    """The untrained network of an architecture for ``bands`` bands, seeded."""
    with seeded(seed):
        net: nn.Module = (CrossNet if arch.cross else DaeNet)(bands, arch)
    return net


def feature_groups(net: nn.Module, arch: Architecture, b: torch.Tensor, a: torch.Tensor
              ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Channel groups of the features of both dates (stacked by the caller, in one copy).

    Calibrated, each residual is divided by its predicted scale: ``w_ab`` (from the before image)
    multiplies both sides of the before -> after residual, ``w_ba`` (from the after image) both
    sides of the other, so the features of one date also depend on the other date's scale.
    """
    if arch.cross:
        assert isinstance(net, CrossNet)
        if arch.calibrated:
            pred_a, w_ab = net.ab.scaled(b)
            pred_b, w_ba = net.ba.scaled(a)
            return (pred_a * w_ab, b * w_ba), (a * w_ab, pred_b * w_ba)
        return (net.ab(b), b), (a, net.ba(a))
    assert isinstance(net, DaeNet)
    return (net.encoder(b),), (net.encoder(a),)


def stack_groups(parts: tuple[torch.Tensor, ...]) -> NDArray[np.float32]:
    """(N, sum C, H, W) float32 array of channel groups: one copy, whatever their memory format."""
    n, _, h, w = parts[0].shape
    out = np.empty((n, sum(int(p.shape[1]) for p in parts), h, w), np.float32)
    k = 0
    for p in parts:
        out[:, k:k + p.shape[1]] = p.float().cpu().numpy()
        k += p.shape[1]
    return out


def masked_huber(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    loss = F.huber_loss(pred, target, reduction="none", delta=HUBER_DELTA).sum(1, keepdim=True)
    return (loss * mask).sum() / mask.sum().clamp(min=1.0)


def loss_of(net: nn.Module, arch: Architecture, b: torch.Tensor, a: torch.Tensor,
          mask: torch.Tensor, noise: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Training loss of a batch: masked Huber of both predictions, or of the reconstruction."""
    if arch.cross:
        assert isinstance(net, CrossNet)
        return masked_huber(net.ab(b), a, mask) + masked_huber(net.ba(a), b, mask)
    assert isinstance(net, DaeNet) and noise is not None
    x = torch.cat([b, a])
    m = torch.cat([mask, mask])
    recon = net.decoder(net.encoder(x + torch.cat(noise)))
    return masked_huber(recon, x, m)
