"""Calibrated residuals of ``cross-cal``: a per-pixel residual scale fitted after training.

Each direction gets a 1x1 head on its last hidden layer giving ``s(x)``, the log of the expected
squared residual, fitted by maximum likelihood (Newton's method; convex) on the frozen network.
Residuals divided by ``exp(s / 2)`` have about the same spread in smooth and textured areas
(SAR land next to calm water), so one global threshold fits both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from microchange.features.learned.networks import CrossNet, Regressor
from microchange.features.learned.training import Block, draw_patches, patch_size

__all__ = ("fit_scales", "log_variance_fit")

CAL_PATCHES = 64
"""Patches (of the training size, loss masks as in training) that fit the residual scales."""
MIN_CAL_PIXELS_PER_PARAM = 20
"""Below this many usable pixels per head parameter the scales are not fitted (scale 1)."""


def log_variance_fit(x: NDArray[np.float64], r2: NDArray[np.float64], *, iters: int = 50
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


def fit_scales(net: nn.Module, blocks: Sequence[Block], *, halo: int, seed: int,
                device: torch.device) -> dict[str, Any]:
    """Fit each direction's residual scale head on the trained, frozen network.

    ``s(x) = w . h(x) + c`` on the last hidden layer ``h``, by maximum likelihood of the squared
    residuals (:func:`log_variance_fit`) over the loss-mask pixels of :data:`CAL_PATCHES` patches
    (likely changes already left out). Residuals divided by ``exp(s / 2)`` have about the same
    spread in smooth and in textured areas, so one global threshold fits both.
    """
    assert isinstance(net, CrossNet)
    rng = np.random.default_rng(seed + 1)
    size = patch_size(blocks)
    xb, xa, m = (torch.from_numpy(x).to(device)
                 for x in draw_patches(blocks, rng, CAL_PATCHES, size, halo))
    keep = (m[:, 0] > 0).cpu().numpy()
    out: dict[str, Any] = {"patches": CAL_PATCHES, "pixels": int(keep.sum())}
    usable = sum(int(v.sum()) for _, _, v in blocks)  # distinct pixels (patches may overlap)
    width = net.ab.scale.in_channels if isinstance(net.ab.scale, nn.Conv2d) else 0
    if usable < MIN_CAL_PIXELS_PER_PARAM * (width + 1):
        # too few pixels to fit the heads: they stay at s = 0 (scale 1), plain cross-prediction
        out["skipped"] = f"{usable} usable sample pixels"
        return out
    for name, reg, x, y in (("ab", net.ab, xb, xa), ("ba", net.ba, xa, xb)):
        assert isinstance(reg, Regressor) and reg.scale is not None
        assert reg.scale.bias is not None
        with torch.no_grad():
            h = reg.hidden(x)
            r2 = (x + reg.body[-1](h) - y).square().sum(1)
        feats = h.permute(0, 2, 3, 1).cpu().numpy()[keep].astype(np.float64)
        design = np.concatenate([feats, np.ones((len(feats), 1))], axis=1)
        theta = log_variance_fit(design, r2.cpu().numpy()[keep].astype(np.float64))
        s = design @ theta
        with torch.no_grad():
            reg.scale.weight.copy_(torch.from_numpy(theta[:-1]).reshape(reg.scale.weight.shape))
            reg.scale.bias.fill_(float(theta[-1]))
            reg.s_range.copy_(torch.tensor([float(s.min()), float(s.max())]))
        out[name] = {"log_scale_range": [round(float(s.min()) / 2, 4),
                                         round(float(s.max()) / 2, 4)]}
    return out
