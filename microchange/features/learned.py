"""The 'learned' feature extractor: a compact CNN trained unsupervised on the pair itself.

Both dates are standardised per band with statistics of the global sample, then a small fully
convolutional network (three 3x3 convolutions with 16 channels and ReLU, then a 1x1 output; no
normalisation layers, no strides, no dilation) is trained on patches of that sample. Objectives:

``cross`` (cross-prediction, image regression)
    Two residual networks learn ``f_ab: before -> after`` and ``f_ba: after -> before`` with a
    Huber loss. Most pixels are unchanged, so the mappings absorb what differs everywhere
    (radiometry, season, sensor response, slight blur) while the few changed pixels, which cannot
    be predicted from the other date, stay as residuals; the robust loss keeps them from driving
    the fit. Features are ``before = [f_ab(b), b]`` and ``after = [a, f_ba(a)]``, so CVA of the
    features is ``sqrt(|f_ab(b) - a|^2 + |b - f_ba(a)|^2)`` in standardised units. The last layer
    starts at zero: before training the score equals plain CVA, and training moves it towards a
    better model of "no change".
``cross-cal`` (cross-prediction with calibrated residuals; the SAR default)
    ``cross``, then each direction gets a per-pixel residual scale: a 1x1 head on the last
    hidden layer gives ``s(x)``, the log of the expected squared residual, fitted by maximum
    likelihood on the frozen network (:func:`_fit_scales`). Features divide each residual by
    ``exp(s / 2)``. Textured areas (SAR land next to calm water, with its speckle left after
    filtering) leave larger residuals than smooth ones; divided by their expected size, both have
    the same spread and one global threshold fits the scene (on the Yellow River coastline pair,
    kappa 0.36 with ``cross`` + distance, 0.86 with ``cross-cal``).
``dae`` (denoising autoencoder, deep CVA)
    One encoder-decoder shared by both dates reconstructs clean patches from noisy ones
    (Gaussian noise, std 0.5); the encoder's 8 output channels are each date's features and CVA
    compares them.

**Likely changes are left out of the loss** (:func:`_trimmed`, :data:`TRIM_FPR`): pixels whose
difference of standardised bands lies in the upper 1 % tail of a no-change null model fitted on
the bulk. A network trained on them learns to predict them: on the Bern flood, the after ->
before mapping learned "dark water -> land", which hid the flood and marked the permanent water
(best F1 of that residual alone 0.075; 0.84 with those pixels left out).

Default: ``cross`` for optical, ``cross-cal`` for SAR. Compared at commit faa969b
(``benchmarks/accuracy.py --objective O``, likely changes left out for all), family mean F1 /
kappa: optical with the hybrid scorer cross 0.338 / 0.306, cross-cal 0.317 / 0.285, dae 0.327 /
0.294; SAR with the distance scorer cross 0.713 / 0.705, cross-cal 0.824 / 0.818, dae 0.757 /
0.749 (with cluster: 0.794, 0.811, 0.593 F1). An earlier comparison (13 pairs plus
3 resampled OSCD variants, one configuration per family, Otsu threshold), mean F1 / kappa:
optical cross 0.358 / 0.314, dae 0.337 / 0.290, CVA 0.330 / 0.282; SAR cross 0.661 / 0.651,
dae 0.523 / 0.505, CVA 0.625 / 0.614; heterogeneous (Shuguang) cross 0.452 / 0.412, dae 0.374,
CVA 0.399. Cross-prediction models the nuisance between the two dates of *this* pair, which is
what CVA gets wrong; the shared DAE encoder has no notion of which differences are nuisance, and
on SAR it amplifies speckle texture.

Scorer (``config.METHOD_SCORERS``): ``hybrid`` on optical (PCA-KMeans on 5 x 5 neighbourhoods
of the residual magnitude, or the pixel's own magnitude above its ``auto`` threshold), the
method's own distance + ``auto`` on SAR, where ``cross-cal`` makes that threshold reliable.
Measured with ``benchmarks/accuracy.py`` at commit 47dcbfb (README, *Accuracy*), mean F1 /
kappa: optical 0.338 / 0.306, 0.338-0.360 F1 over seeds 0-2 (CVA 0.297 / 0.273, PCA-KMeans
0.322 / 0.286; cluster 0.344 / 0.314 but it loses changes under 25 px, which hybrid keeps); SAR
0.824 / 0.818, kappa 0.818-0.829 over seeds 0-2 (CVA 0.816, PCA-KMeans 0.812, CVA + density
0.837). With plain ``cross`` and no trimming SAR gave 0.804 (cluster scorer). Otsu alone splits
noise on quiet scenes (36.8 % of a synthetic 2048^2 pair "changed"). With the truth known, the
best single threshold gives mean F1 0.423 (optical) and 0.832 (SAR) against CVA's 0.390 and
0.837: the features rank pixels better than CVA's on optical and a little worse on SAR, where
the gain is a threshold that holds; the gains of the network show most where a nuisance mixes
bands (``benchmarks/figure_learned.py``).

The receptive-field radius (the halo) is 3 px. Dilated layers were dropped: their backward pass
is several times slower on CPU oneDNN. Training is deterministic on the CPU (seeded, deterministic
algorithms) and bounded: at most ``epochs`` epochs of at most 128 patches of 48x48 px, early
stopping on a fixed held-out set of patches (2.9-3.5 s, about 17 epochs, for the 1e6-pixel
sample of a 4096^2 pair on 2 cores). After an epoch without improvement of the held-out loss the weights go back to
the best so far and the step size halves (:data:`LR_DECAY`); ``patience`` such epochs in a row
stop training. With a constant step of 1e-2 the held-out loss jumped by up to 25 % from epoch to
epoch, so the network kept depended on where that noise stopped it: over seeds 0, 1 and 2, SAR
mean kappa was 0.807 / 0.779 / 0.774 and optical mean F1 0.347 / 0.345 / 0.315; with the decay,
0.804 / 0.800 / 0.805 and 0.340 / 0.347 / 0.346 (``benchmarks/accuracy.py --seed N``).
Precision (``DeepConfig.precision``): training always runs in float32. Inference runs under
bfloat16 autocast on CUDA and on CPUs with bf16 instructions (AVX512-BF16, AMX), in float32
elsewhere (:func:`~microchange.features.devices.resolve_precision`). On 2 Zen 4 cores bf16 runs
the forward pass 2.6x faster on one thread (7.2 vs 2.75 MPx/s per 518^2 tile); mean F1 / kappa on
the shared data were unchanged (optical 0.347 / 0.317, SAR 0.813 / 0.807, measured before the
step-size decay) and the demo's masks differ on 5 of 1,048,576 pixels. bf16 *training* was tried:
30 % faster per epoch, but it moved the trained network as much as another seed does (a quiet
SAR pair went from 0.03 % to 0.11 % of pixels marked changed). Either precision is deterministic
on a given CPU.
oneDNN chooses kernels by input shape, so scores can differ by about 1 ulp between tile
sizes (masks identical in the tests). Disabling oneDNN makes them exact but inference about 6x
slower.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn
from torch.nn import functional as F

from microchange.config import DetectConfig
from microchange.errors import ConfigError
from microchange.features import checkpoints
from microchange.features.bands import masked_band_stats
from microchange.features.base import FeatureSample, State
from microchange.features.devices import autocast, resolve_device, resolve_precision, seeded

__all__ = (
    "ARCHITECTURES",
    "DEFAULT_OBJECTIVE",
    "Architecture",
    "LearnedFeatures",
    "learned_extractor",
)

log = logging.getLogger("microchange")

PATCH = 48
"""Side of the square training patches in pixels."""
PATCHES_PER_EPOCH = 128
EVAL_PATCHES = 48
BATCH = 16
LEARNING_RATE = 1e-2
LR_DECAY = 0.5
"""Factor of the step size after an epoch without improvement (the best weights are restored)."""
HUBER_DELTA = 1.0
DAE_NOISE = 0.5
MIN_REL_IMPROVEMENT = 2e-3
TRIM_FPR = 0.01
"""Training leaves out pixels whose difference of standardised bands (the CVA magnitude) lies
above the upper ``TRIM_FPR`` quantile of a no-change null model fitted on the bulk
(:func:`~microchange.scoring.thresholds.fpr_threshold`): likely changes, which a network trained
on them learns to predict (see :func:`_trimmed`)."""
_MAX_PIXELS_PER_FORWARD = 1 << 19
"""Pixels per forward pass on the CPU: one 512-px tile with its halo (activations stay in cache;
measured 3.5 vs 2.8 MPx/s for 16 such tiles at once on 2 cores)."""


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
            after training (:func:`_fit_scales`).
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

DEFAULT_OBJECTIVE: dict[str, str] = {"optical": "cross", "sar": "cross-cal"}
"""Sensor family -> objective used when ``DeepConfig.objective`` is None."""


# -- networks ---------------------------------------------------------------------------------
def _trunk(cin: int, width: int, dilations: Sequence[int], cout: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = cin
    for d in dilations:
        layers += [nn.Conv2d(c, width, 3, padding=d, dilation=d), nn.ReLU(inplace=True)]
        c = width
    layers.append(nn.Conv2d(c, cout, 1))
    return nn.Sequential(*layers)


class _Regressor(nn.Module):
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


class _CrossNet(nn.Module):
    def __init__(self, bands: int, arch: Architecture) -> None:
        super().__init__()
        self.ab = _Regressor(bands, arch)
        self.ba = _Regressor(bands, arch)


class _DaeNet(nn.Module):
    def __init__(self, bands: int, arch: Architecture) -> None:
        super().__init__()
        self.encoder = _trunk(bands, arch.width, arch.dilations, arch.code)
        self.decoder = nn.Sequential(
            nn.ReLU(), nn.Conv2d(arch.code, arch.width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(arch.width, bands, 1),
        )


def _build_net(arch: Architecture, bands: int, seed: int) -> nn.Module:
    with seeded(seed):
        net: nn.Module = (_CrossNet if arch.cross else _DaeNet)(bands, arch)
    return net


def _features(net: nn.Module, arch: Architecture, b: torch.Tensor, a: torch.Tensor
              ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """Channel groups of the features of both dates (stacked by the caller, in one copy).

    Calibrated, each residual is divided by its predicted scale: ``w_ab`` (from the before image)
    multiplies both sides of the before -> after residual, ``w_ba`` (from the after image) both
    sides of the other, so the features of one date also depend on the other date's scale.
    """
    if arch.cross:
        assert isinstance(net, _CrossNet)
        if arch.calibrated:
            pred_a, w_ab = net.ab.scaled(b)
            pred_b, w_ba = net.ba.scaled(a)
            return (pred_a * w_ab, b * w_ba), (a * w_ab, pred_b * w_ba)
        return (net.ab(b), b), (a, net.ba(a))
    assert isinstance(net, _DaeNet)
    return (net.encoder(b),), (net.encoder(a),)


def _stacked(parts: tuple[torch.Tensor, ...]) -> NDArray[np.float32]:
    """(N, sum C, H, W) float32 array of channel groups: one copy, whatever their memory format."""
    n, _, h, w = parts[0].shape
    out = np.empty((n, sum(int(p.shape[1]) for p in parts), h, w), np.float32)
    k = 0
    for p in parts:
        out[:, k:k + p.shape[1]] = p.float().cpu().numpy()
        k += p.shape[1]
    return out


def _masked_huber(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    loss = F.huber_loss(pred, target, reduction="none", delta=HUBER_DELTA).sum(1, keepdim=True)
    return (loss * mask).sum() / mask.sum().clamp(min=1.0)


def _loss(net: nn.Module, arch: Architecture, b: torch.Tensor, a: torch.Tensor,
          mask: torch.Tensor, noise: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    if arch.cross:
        assert isinstance(net, _CrossNet)
        return _masked_huber(net.ab(b), a, mask) + _masked_huber(net.ba(a), b, mask)
    assert isinstance(net, _DaeNet) and noise is not None
    x = torch.cat([b, a])
    m = torch.cat([mask, mask])
    recon = net.decoder(net.encoder(x + torch.cat(noise)))
    return _masked_huber(recon, x, m)


# -- training -------------------------------------------------------------------------------
_Block = tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]]


def _trimmed(blocks: Sequence[_Block], fpr: float = TRIM_FPR
             ) -> tuple[list[_Block], dict[str, Any]]:
    """Blocks whose loss masks leave out the likely-changed pixels.

    A pixel is left out of the loss (not of the network's input) when the magnitude of its
    difference of standardised bands, the score of the untrained network, lies above the upper
    ``fpr`` quantile of the no-change null model fitted on the bulk of those magnitudes. A network
    trained on changed pixels learns to predict them: on the Bern flood the after -> before mapping
    learned "dark water -> land", which hid the flood and marked the permanent water instead (best
    F1 of that direction's residual 0.075 against 0.84 with these pixels left out).

    Returns:
        (blocks, summary): the blocks with their masks trimmed; the bound and the share left out.
    """
    from microchange.scoring.thresholds import fpr_threshold

    mags = [np.sqrt(np.square(za - zb).sum(0)) for zb, za, _ in blocks]
    values = np.concatenate([m[v] for m, (_, _, v) in zip(mags, blocks, strict=True)])
    if values.size < 2 or not np.any(values > 0):
        return list(blocks), {"fpr": fpr, "bound": None, "left_out": 0.0}
    bound = fpr_threshold(values, fpr)
    out = [(zb, za, v & (m <= bound)) for m, (zb, za, v) in zip(mags, blocks, strict=True)]
    left_out = float((values > bound).mean())
    return out, {"fpr": fpr, "bound": round(float(bound), 6), "left_out": round(left_out, 6)}


def _patch_size(blocks: Sequence[_Block]) -> int:
    return min(PATCH, max(int(min(v.shape)) for _, _, v in blocks))


def _draw_patches(blocks: Sequence[_Block], rng: np.random.Generator, n: int, size: int,
                  margin: int) -> tuple[NDArray[np.float32], NDArray[np.float32],
                                        NDArray[np.float32]]:
    """Draw n random (size x size) patches of both dates and their loss masks.

    The loss mask is the validity mask minus ``margin`` px at the patch border, where the
    zero padding of the convolutions would show.
    """
    eligible = [i for i, (_, _, v) in enumerate(blocks) if min(v.shape) >= size]
    weights = np.array([(blocks[i][2].shape[0] - size + 1) * (blocks[i][2].shape[1] - size + 1)
                        * max(float(blocks[i][2].mean()), 1e-3) for i in eligible])
    picks = rng.choice(len(eligible), size=n, p=weights / weights.sum())
    c = blocks[0][0].shape[0]
    xb = np.empty((n, c, size, size), np.float32)
    xa = np.empty_like(xb)
    m = np.zeros((n, 1, size, size), np.float32)
    inner = slice(margin, size - margin) if margin and size > 2 * margin else slice(None)
    for k, j in enumerate(picks.tolist()):
        zb, za, v = blocks[eligible[j]]
        r = int(rng.integers(0, v.shape[0] - size + 1))
        col = int(rng.integers(0, v.shape[1] - size + 1))
        xb[k] = zb[:, r:r + size, col:col + size]
        xa[k] = za[:, r:r + size, col:col + size]
        m[k, 0, inner, inner] = v[r:r + size, col:col + size][inner, inner]
    return xb, xa, m


CAL_PATCHES = 64
"""Patches (of the training size, loss masks as in training) that fit the residual scales."""
MIN_CAL_PIXELS_PER_PARAM = 20
"""Below this many usable pixels per head parameter the scales are not fitted (scale 1)."""


def _log_variance_fit(x: NDArray[np.float64], r2: NDArray[np.float64], *, iters: int = 50
                      ) -> NDArray[np.float64]:
    """Theta minimising mean(r2 * exp(-x @ theta) + x @ theta): Newton's method.

    The negative log-likelihood of squared residuals with a log-linear variance (up to
    constants). Convex in theta; the minimiser makes ``exp(x @ theta)`` the expected ``r2``.
    The last column of ``x`` is the constant 1.
    """
    theta = np.zeros(x.shape[1])
    theta[-1] = math.log(max(float(r2.mean()), 1e-12))

    def loss(t: NDArray[np.float64]) -> float:
        s = x @ t
        return float(np.mean(r2 * np.exp(-s) + s))

    current = loss(theta)
    ridge = 1e-6 * np.eye(x.shape[1])
    for _ in range(iters):
        e = r2 * np.exp(-(x @ theta))
        grad = x.T @ (1.0 - e) / len(e)
        hess = (x * e[:, None]).T @ x / len(e) + ridge
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-4:  # backtracking: the loss must go down
            cand = theta - t * step
            value = loss(cand)
            if value <= current:
                break
            t *= 0.5
        else:
            break
        improved = current - value
        theta, current = cand, value
        if improved < 1e-10 * max(1.0, abs(current)):
            break
    return theta


def _fit_scales(net: nn.Module, blocks: Sequence[_Block], *, halo: int, seed: int,
                device: torch.device) -> dict[str, Any]:
    """Fit each direction's residual scale head on the trained, frozen network.

    ``s(x) = w . h(x) + c`` on the last hidden layer ``h``, by maximum likelihood of the squared
    residuals (:func:`_log_variance_fit`) over the loss-mask pixels of :data:`CAL_PATCHES` patches
    (likely changes already left out). Residuals divided by ``exp(s / 2)`` have about the same
    spread in smooth and in textured areas, so one global threshold fits both.
    """
    assert isinstance(net, _CrossNet)
    rng = np.random.default_rng(seed + 1)
    size = _patch_size(blocks)
    xb, xa, m = (torch.from_numpy(x).to(device)
                 for x in _draw_patches(blocks, rng, CAL_PATCHES, size, halo))
    keep = (m[:, 0] > 0).cpu().numpy()
    out: dict[str, Any] = {"patches": CAL_PATCHES, "pixels": int(keep.sum())}
    usable = sum(int(v.sum()) for _, _, v in blocks)  # distinct pixels (patches may overlap)
    width = net.ab.scale.in_channels if isinstance(net.ab.scale, nn.Conv2d) else 0
    if usable < MIN_CAL_PIXELS_PER_PARAM * (width + 1):
        # too few pixels to fit the heads: they stay at s = 0 (scale 1), plain cross-prediction
        out["skipped"] = f"{usable} usable sample pixels"
        return out
    for name, reg, x, y in (("ab", net.ab, xb, xa), ("ba", net.ba, xa, xb)):
        assert isinstance(reg, _Regressor) and reg.scale is not None
        assert reg.scale.bias is not None
        with torch.no_grad():
            h = reg.hidden(x)
            r2 = (x + reg.body[-1](h) - y).square().sum(1)
        feats = h.permute(0, 2, 3, 1).cpu().numpy()[keep].astype(np.float64)
        design = np.concatenate([feats, np.ones((len(feats), 1))], axis=1)
        theta = _log_variance_fit(design, r2.cpu().numpy()[keep].astype(np.float64))
        s = design @ theta
        with torch.no_grad():
            reg.scale.weight.copy_(torch.from_numpy(theta[:-1]).reshape(reg.scale.weight.shape))
            reg.scale.bias.fill_(float(theta[-1]))
            reg.s_range.copy_(torch.tensor([float(s.min()), float(s.max())]))
        out[name] = {"log_scale_range": [round(float(s.min()) / 2, 4),
                                         round(float(s.max()) / 2, 4)]}
    return out


class _Adam:
    """Adam (Kingma & Ba 2015): step for step what ``torch.optim.Adam`` computes on the CPU.

    Betas 0.9/0.999, eps 1e-8, no weight decay.

    ``torch.optim`` optimizers import ``torch._dynamo`` on first use, about 2.7 s on 2 cores:
    a third of the whole fit at 4096^2. These few lines avoid it.
    """

    def __init__(self, params: Iterator[nn.Parameter], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.params = list(params)
        self.lr, self.betas, self.eps = lr, betas, eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    def zero_grad(self) -> None:
        """Drop the gradients."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter with a gradient."""
        self.t += 1
        b1, b2 = self.betas
        step_size = self.lr / (1 - b1**self.t)
        bc2_sqrt = (1 - b2**self.t) ** 0.5
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            if p.grad is None:
                continue
            m.lerp_(p.grad, 1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            p.addcdiv_(m, (v.sqrt() / bc2_sqrt).add_(self.eps), value=-step_size)


def _set_deterministic(mode: bool, *, warn_only: bool = False) -> None:
    """ATen's deterministic-algorithms flag.

    ``torch.use_deterministic_algorithms`` also sets a flag of ``torch._inductor``, importing the
    compiler (about 2 s on 2 cores); nothing here is compiled, so only ATen's flag is set.
    """
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:  # pragma: no cover - other torch versions
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        setter(mode, warn_only=warn_only)


@contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic algorithms on the CPU for the duration of a block (restored after)."""
    if device.type != "cpu":
        yield
        return
    prev = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    _set_deterministic(True)
    try:
        yield
    finally:
        _set_deterministic(prev, warn_only=warn_only)


def _train(net: nn.Module, arch: Architecture, blocks: Sequence[_Block], *, epochs: int,
           patience: int, seed: int, device: torch.device) -> dict[str, Any]:
    """Fit ``net`` in place, in float32; returns the loss history and a summary."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    size = _patch_size(blocks)
    c = blocks[0][0].shape[0]

    def tensors(arrays: tuple[NDArray[np.float32], ...]) -> list[torch.Tensor]:
        return [torch.from_numpy(x).to(device).contiguous(memory_format=torch.channels_last)
                for x in arrays]

    def noise(n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        if arch.objective != "dae":
            return None
        shape = (n, c, size, size)
        return (DAE_NOISE * torch.randn(shape, generator=gen).to(device),
                DAE_NOISE * torch.randn(shape, generator=gen).to(device))

    eval_b, eval_a, eval_m = tensors(_draw_patches(blocks, rng, EVAL_PATCHES, size, arch.halo))
    eval_noise = noise(EVAL_PATCHES)
    # an epoch is ~2 passes over the sample's pixels, within [2 BATCH, PATCHES_PER_EPOCH] patches
    n_valid = sum(int(v.sum()) for _, _, v in blocks)
    per_epoch = int(np.clip(math.ceil(2 * n_valid / size**2), 2 * BATCH, PATCHES_PER_EPOCH))
    opt = _Adam(net.parameters(), lr=LEARNING_RATE)
    history: list[float] = []
    train_history: list[float] = []
    best, best_state, wait = math.inf, None, 0
    net.to(device).to(memory_format=torch.channels_last)
    with _deterministic(device):
        net.eval()
        with torch.no_grad():
            initial = float(_loss(net, arch, eval_b, eval_a, eval_m, eval_noise))
        for epoch in range(1, epochs + 1):
            net.train()
            xb, xa, m = tensors(_draw_patches(blocks, rng, per_epoch, size, arch.halo))
            total = 0.0
            for i in range(0, per_epoch, BATCH):
                sl = slice(i, i + BATCH)
                loss = _loss(net, arch, xb[sl], xa[sl], m[sl], noise(xb[sl].shape[0]))
                opt.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                total += float(loss.detach()) * xb[sl].shape[0]
            net.eval()
            with torch.no_grad():
                value = float(_loss(net, arch, eval_b, eval_a, eval_m, eval_noise))
            history.append(value)
            train_history.append(total / per_epoch)
            log.info("learned/%s epoch %d/%d: train loss %.5f, held-out loss %.5f (%.1f s)",
                     arch.objective, epoch, epochs, train_history[-1], value,
                     time.perf_counter() - t0)
            if value < best * (1.0 - MIN_REL_IMPROVEMENT):
                best, wait = value, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                wait += 1
                if wait >= patience:
                    log.info("learned/%s: held-out loss flat for %d epochs, stopping at "
                             "epoch %d", arch.objective, patience, epoch)
                    break
                if best_state is not None:  # back to the best weights, with a smaller step
                    net.load_state_dict(best_state)
                opt.lr *= LR_DECAY
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return {"epochs_run": len(history), "epochs_max": epochs, "patience": patience,
            "initial_loss": initial, "final_loss": history[-1], "best_loss": best,
            "loss_history": history, "train_loss_history": train_history, "patch": size,
            "patches_per_epoch": per_epoch, "batch": BATCH,
            "learning_rate": LEARNING_RATE, "final_learning_rate": opt.lr,
            "seconds": round(time.perf_counter() - t0, 3),
            "device": str(device), "precision": "fp32", "seed": seed}


def _ready(net: nn.Module, device: torch.device) -> nn.Module:
    """The network in eval mode, on ``device``, channels_last (inference layout)."""
    return net.to(device).to(memory_format=torch.channels_last).eval()


def _fingerprint(samples: Sequence[FeatureSample]) -> str:
    digest = hashlib.sha256()
    for s in samples:
        for a in (s.before, s.after, s.valid):
            digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()


# -- the extractor ----------------------------------------------------------------------------
class LearnedFeatures:
    """Features of a small CNN trained on the pair itself (or loaded from a checkpoint).

    Args:
        objective: 'cross' (cross-prediction) or 'dae' (denoising autoencoder).
        device: 'auto', 'cpu' or 'cuda'.
        precision: 'auto', 'fp32' or 'bf16'
            (:func:`~microchange.features.devices.resolve_precision`).
        epochs: Maximum training epochs.
        patience: Epochs without improvement of the held-out loss before stopping.
        seed: Seed of weight initialisation and patch sampling.
        checkpoint: A checkpoint to use instead of training (checked against the input).
        preprocess: Preprocessing options of the run (recorded; checked against a checkpoint).
        sensor: Sensor family (recorded in checkpoints).

    Raises:
        ConfigError: If the objective is unknown or the device is not available.
    """

    name = "learned"

    def __init__(self, *, objective: str, device: str = "auto", precision: str = "auto",
                 epochs: int = 30,
                 patience: int = 3, seed: int = 0,
                 checkpoint: checkpoints.Checkpoint | None = None,
                 preprocess: dict[str, Any] | None = None, sensor: str = "optical") -> None:
        if objective not in ARCHITECTURES:
            raise ConfigError(f"unknown objective {objective!r} of the 'learned' method: choose "
                              f"one of {', '.join(sorted(ARCHITECTURES))}")
        self.arch = ARCHITECTURES[objective]
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.epochs, self.patience, self.seed = epochs, patience, seed
        self.checkpoint = checkpoint
        self.preprocess = preprocess or {}
        self.sensor = sensor
        self._net: nn.Module | None = None
        self._mean: NDArray[np.float64] | None = None  # (2, C)
        self._std: NDArray[np.float64] | None = None
        self.training: dict[str, Any] = {}
        self.sample_sha256: str | None = None

    @property
    def halo(self) -> int:
        """Receptive-field radius of the feature network."""
        return self.arch.halo

    @property
    def objective(self) -> str:
        """The training objective."""
        return self.arch.objective

    def _standardise(self, block: FeatureSample,
                     stats: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None,
                     ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Both dates of a block in standard units: with ``stats`` (mean, std), else the fitted."""
        mean, std = stats if stats is not None else (self._mean, self._std)
        assert mean is not None and std is not None
        out = []
        for d, image in enumerate((block.before, block.after)):
            m = mean[d].astype(np.float32)[:, None, None]
            s = std[d].astype(np.float32)[:, None, None]
            z = ((image - m) / s).astype(np.float32, copy=False)
            z[:, ~block.valid] = 0.0
            out.append(z)
        return out[0], out[1]

    def fit(self, samples: Sequence[FeatureSample],
            more: Sequence[Sequence[FeatureSample]] = ()) -> None:
        """Standardise with the sample's statistics, then train (or load the checkpoint).

        Args:
            samples: Prepared sample blocks of the pair being analysed.
            more: Prepared sample blocks of more pairs of the same sensor to train on too (each
                standardised with its own statistics, so every pair enters the network on the
                same scale); ignored when a checkpoint is loaded.

        Raises:
            ConfigError: If a checkpoint does not fit the input (bands, architecture), or a pair
                of ``more`` has another band count.
        """
        self._mean, self._std = self._stats(samples)
        bands = samples[0].before.shape[0]
        for k, group in enumerate(more, start=2):
            if group and group[0].before.shape[0] != bands:
                raise ConfigError(f"training pair {k} has {group[0].before.shape[0]} bands, the "
                                  f"first pair {bands}: train on pairs of one sensor (or select "
                                  "the same bands with --bands)")
        self.sample_sha256 = _fingerprint([s for group in (samples, *more) for s in group])
        if self.checkpoint is not None:
            ckpt = self.checkpoint
            checkpoints.validate(ckpt, bands=bands, architecture=self.arch.describe(),
                                 preprocess=self.preprocess)
            net = _build_net(self.arch, bands, self.seed)
            try:
                net.load_state_dict(ckpt.state_dict)
            except RuntimeError as exc:
                raise ConfigError(f"checkpoint {str(ckpt.path)!r} does not match the "
                                  f"{self.arch.name} network ({str(exc)[:200]}): retrain it with "
                                  "`microchange train`") from exc
            self._net = _ready(net, self.device)
            self.training = dict(ckpt.metadata.get("training") or {})
            log.info("learned/%s: weights from checkpoint %s", self.objective, ckpt.path)
            return
        blocks = [(*self._standardise(s), s.valid) for s in samples if s.valid.any()]
        for group in more:  # each pair in its own standard units
            stats = self._stats(group)
            blocks += [(*self._standardise(s, stats), s.valid) for s in group if s.valid.any()]
        blocks, trim = _trimmed(blocks)
        net = _build_net(self.arch, bands, self.seed)
        self.training = _train(net, self.arch, blocks, epochs=self.epochs,
                               patience=self.patience, seed=self.seed, device=self.device)
        self.training["pairs"] = 1 + len(more)
        self.training["trim"] = trim
        if self.arch.calibrated:
            self.training["calibration"] = _fit_scales(
                net, blocks, halo=self.arch.halo, seed=self.seed, device=self.device)
        self._net = _ready(net, self.device)

    @staticmethod
    def _stats(samples: Sequence[FeatureSample]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(2, C) per-date band means and standard deviations of the valid sample pixels."""
        valids = [s.valid for s in samples]
        mb, sb = masked_band_stats([s.before for s in samples], valids)
        ma, sa = masked_band_stats([s.after for s in samples], valids)
        return np.stack([mb, ma]), np.stack([sb, sa])

    def extract(self, block: FeatureSample) -> FeatureSample:
        """Features of both dates of one block."""
        return self.extract_batch([block])[0]

    def extract_batch(self, blocks: Sequence[FeatureSample]) -> list[FeatureSample]:
        """Features of several blocks, batched through the network (same-shape blocks together).

        Returns:
            One :class:`FeatureSample` per block: (F, H, W) float32 features of both dates,
            0 at invalid pixels.
        """
        if self._net is None:
            raise RuntimeError("LearnedFeatures.extract called before fit/load_state")
        net, dev = self._net, self.device
        out: list[FeatureSample | None] = [None] * len(blocks)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, blk in enumerate(blocks):
            groups.setdefault(blk.before.shape, []).append(i)
        for shape, idx in groups.items():
            per = max(1, _MAX_PIXELS_PER_FORWARD // (shape[1] * shape[2]))
            for start in range(0, len(idx), per):
                chunk = idx[start:start + per]
                zs = [self._standardise(blocks[i]) for i in chunk]
                b = torch.from_numpy(np.stack([z[0] for z in zs])).to(dev)
                a = torch.from_numpy(np.stack([z[1] for z in zs])).to(dev)
                fb, fa = self._forward(net, b, a)
                for k, i in enumerate(chunk):
                    before, after = fb[k], fa[k]
                    before[:, ~blocks[i].valid] = 0.0
                    after[:, ~blocks[i].valid] = 0.0
                    out[i] = FeatureSample(before, after, blocks[i].valid, blocks[i].halo)
        return [o for o in out if o is not None]

    def _forward(self, net: nn.Module, b: torch.Tensor,
                 a: torch.Tensor) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        b = b.contiguous(memory_format=torch.channels_last)
        a = a.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            with autocast(self.device, self.precision):
                fb, fa = _features(net, self.arch, b, a)
            return _stacked(fb), _stacked(fa)

    # -- persistence ----------------------------------------------------------------------------
    def state(self) -> State:
        """Statistics, objective and network weights as named arrays."""
        if self._net is None or self._mean is None or self._std is None:
            return {}
        st: State = {"objective": np.array(self.objective), "mean": self._mean,
                     "std": self._std, "bands": np.array(self._mean.shape[1]),
                     "training": np.array(json.dumps(self.training)),
                     "sample_sha256": np.array(self.sample_sha256 or "")}
        for k, v in self._net.state_dict().items():
            st[f"net.{k}"] = v.detach().cpu().numpy()
        return st

    def load_state(self, state: State) -> None:
        """Restore what :meth:`state` saved (rebuilds the network on this device)."""
        objective = str(state["objective"])
        if objective != self.objective:
            raise ConfigError(f"fitted state is for objective {objective!r}, not "
                              f"{self.objective!r}: re-run the fit stage")
        self._mean = np.asarray(state["mean"], dtype=np.float64)
        self._std = np.asarray(state["std"], dtype=np.float64)
        self.training = json.loads(str(state["training"])) if "training" in state else {}
        self.sample_sha256 = str(state["sample_sha256"]) if "sample_sha256" in state else None
        net = _build_net(self.arch, int(state["bands"]), self.seed)
        net.load_state_dict({k[4:]: torch.from_numpy(np.array(v)) for k, v in state.items()
                             if k.startswith("net.")})
        self._net = _ready(net, self.device)

    def checkpoint_payload(self, *, inputs: Sequence[dict[str, Any]] = ()
                           ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Weights and metadata for :func:`microchange.features.checkpoints.save`.

        Args:
            inputs: Fingerprints (path, bytes, sha256) of the files trained on.

        Returns:
            (state_dict, metadata).
        """
        from microchange.io.manifest import library_versions

        if self._net is None or self._mean is None or self._std is None:
            raise RuntimeError("checkpoint_payload called before fit")
        versions = library_versions()
        meta = {
            "architecture": self.arch.describe(),
            "objective": self.objective,
            "bands": int(self._mean.shape[1]),
            "sensor": self.sensor,
            "preprocess": dict(self.preprocess),
            "normalisation": {"mean": self._mean.tolist(), "std": self._std.tolist(),
                              "dates": ["before", "after"]},
            "data": {"sample_sha256": self.sample_sha256, "inputs": list(inputs)},
            "training": json.loads(json.dumps(self.training)),
            "versions": {k: versions[k] for k in ("microchange", "torch", "numpy", "python")
                         if k in versions},
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        return dict(self._net.state_dict()), meta


def learned_extractor(config: DetectConfig) -> LearnedFeatures:
    """Build the 'learned' extractor of a run: objective per sensor, checkpoint if given.

    Args:
        config: Run parameters (``deep.*``, ``seed``, ``sensor``, preprocessing).

    Returns:
        An unfitted :class:`LearnedFeatures`.

    Raises:
        ConfigError: If the checkpoint cannot be read safely, its objective differs from an
            explicit ``deep.objective``, the objective is unknown or the device is missing.
    """
    deep = config.deep
    ckpt = checkpoints.load(deep.model) if deep.model else None
    objective = deep.objective
    if ckpt is not None:
        trained = ckpt.metadata.get("objective")
        if objective is not None and objective != trained:
            raise ConfigError(f"checkpoint {deep.model!r} was trained with objective "
                              f"{trained!r}, but --objective {objective!r} was given: drop "
                              "--objective or train a checkpoint with that objective")
        if trained not in ARCHITECTURES:
            raise ConfigError(f"checkpoint {deep.model!r} has unknown objective {trained!r} "
                              f"(known: {', '.join(sorted(ARCHITECTURES))}): retrain it with "
                              "`microchange train`")
        objective = str(trained)
    if objective is None:
        objective = DEFAULT_OBJECTIVE[config.sensor]
    return LearnedFeatures(objective=objective, device=deep.device, precision=deep.precision,
                           epochs=deep.epochs,
                           patience=deep.patience, seed=config.seed, checkpoint=ckpt,
                           preprocess=config.resolved_preprocess().model_dump(),
                           sensor=config.sensor)
