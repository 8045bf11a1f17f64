"""Unsupervised training of the 'learned' networks on patches of the global sample.

Likely changes are left out of the loss (:func:`trim_likely_changes`): a network trained on them
learns to predict them (on a flood, "dark water -> land"), which hides them. Training is bounded
and deterministic on the CPU: at most ``epochs`` epochs of at most 128 patches of 48 x 48 px,
early stopping on a fixed held-out set of patches; after an epoch without improvement the
weights go back to the best so far and the step size halves (:data:`LR_DECAY`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from microchange.features.learned.networks import Architecture, loss_of
from microchange.scoring.thresholds import fpr_threshold, kmeans_threshold

__all__ = ("Block", "draw_patches", "patch_size", "train_network", "trim_likely_changes")

log = logging.getLogger("microchange")

PATCH = 48
"""Side of the square training patches in pixels."""
PATCHES_PER_EPOCH = 128
EVAL_PATCHES = 48
BATCH = 16
LEARNING_RATE = 1e-2
LR_DECAY = 0.5
"""Factor of the step size after an epoch without improvement (the best weights are restored)."""
DAE_NOISE = 0.5
MIN_REL_IMPROVEMENT = 2e-3
TRIM_FPR = 0.01
"""Training leaves out pixels whose difference of standardised bands lies above the upper
``TRIM_FPR`` quantile of a no-change null model fitted on the bulk
(:func:`~microchange.scoring.thresholds.fpr_threshold`)."""

Block = tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.bool_]]


def trim_likely_changes(blocks: Sequence[Block], fpr: float = TRIM_FPR
             ) -> tuple[list[Block], dict[str, Any]]:
    """Blocks whose loss masks leave out the likely-changed pixels.

    The score of the untrained network is the magnitude of the difference of standardised bands.
    A pixel is left out of the loss (not of the network's input) when that magnitude lies above
    the upper ``fpr`` quantile of the no-change null model fitted on the bulk of the magnitudes,
    or when its 3 x 3 mean falls in the upper cluster of a 1-D 2-means of those means. The null
    model alone is widened by changes that cover a large share of the scene (a flood over a
    fifth of a Sentinel-1 tile): the network then learns to predict them, which hides them. The
    cluster test removes them whatever their share; on a pair without change it only removes the
    noisier half of the pixels, and the network still learns the dates' relation from the rest.

    Returns:
        (blocks, summary): the blocks with their masks trimmed; the bounds and the share left out.
    """
    from scipy.ndimage import uniform_filter

    mags = [np.sqrt(np.square(za - zb).sum(0)) for zb, za, _ in blocks]
    values = np.concatenate([m[v] for m, (_, _, v) in zip(mags, blocks, strict=True)])
    if values.size < 2 or not np.any(values > 0):
        return list(blocks), {"fpr": fpr, "bound": None, "cluster": None, "left_out": 0.0}
    bound = fpr_threshold(values, fpr)
    means = [uniform_filter(m, 3, mode="mirror") for m in mags]
    cluster = kmeans_threshold(np.concatenate(
        [m[v] for m, (_, _, v) in zip(means, blocks, strict=True)]))
    out = [(zb, za, v & (m <= bound) & (a <= cluster))
           for m, a, (zb, za, v) in zip(mags, means, blocks, strict=True)]
    kept = sum(int(v.sum()) for _, _, v in out)
    left_out = 1.0 - kept / values.size
    return out, {"fpr": fpr, "bound": round(float(bound), 6), "cluster": round(float(cluster), 6),
                 "left_out": round(left_out, 6)}


def patch_size(blocks: Sequence[Block]) -> int:
    """Side of the training patches: :data:`PATCH`, or the largest block side if smaller."""
    return min(PATCH, max(int(min(v.shape)) for _, _, v in blocks))


def draw_patches(blocks: Sequence[Block], rng: np.random.Generator, n: int, size: int,
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


@contextmanager
def deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic algorithms and one intra-op thread on the CPU for a block (restored after).

    The sums of a convolution's backward pass are split over torch's threads, so their rounding,
    and after a few hundred steps the trained weights, depend on the thread count: a run on two
    cores and one in a Dask worker limited to one thread gave scores 1e-3 apart. Trained on one
    thread, the weights are the same whatever the machine or runner (inference is
    thread-count invariant); it costs ~2 s on a 1024 x 1024 pair on 2 cores.
    """
    if device.type != "cpu":
        yield
        return
    prev = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(prev, warn_only=warn_only)


class _Patches:
    """Patch tensors of the sample on the training device (and the DAE's noise)."""

    def __init__(self, blocks: Sequence[Block], arch: Architecture, seed: int,
                 device: torch.device) -> None:
        self.blocks, self.arch, self.device = blocks, arch, device
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.size = patch_size(blocks)
        self.bands = blocks[0][0].shape[0]

    def draw(self, n: int) -> list[torch.Tensor]:
        """N random patches of both dates and their loss masks, channels-last."""
        arrays = draw_patches(self.blocks, self.rng, n, self.size, self.arch.halo)
        return [torch.from_numpy(x).to(self.device).contiguous(memory_format=torch.channels_last)
                for x in arrays]

    def noise(self, n: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The DAE's input noise of n patches (None for cross-prediction)."""
        if self.arch.objective != "dae":
            return None
        shape = (n, self.bands, self.size, self.size)
        return (DAE_NOISE * torch.randn(shape, generator=self.gen).to(self.device),
                DAE_NOISE * torch.randn(shape, generator=self.gen).to(self.device))


def _epoch(net: nn.Module, arch: Architecture, patches: _Patches, opt: torch.optim.Optimizer,
           per_epoch: int) -> float:
    """One epoch of mini-batches; returns the mean training loss."""
    net.train()
    xb, xa, m = patches.draw(per_epoch)
    total = 0.0
    for i in range(0, per_epoch, BATCH):
        sl = slice(i, i + BATCH)
        loss = loss_of(net, arch, xb[sl], xa[sl], m[sl], patches.noise(xb[sl].shape[0]))
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        total += float(loss.detach()) * xb[sl].shape[0]
    net.eval()
    return total / per_epoch


def train_network(net: nn.Module, arch: Architecture, blocks: Sequence[Block], *, epochs: int,
                  patience: int, seed: int, device: torch.device) -> dict[str, Any]:
    """Fit ``net`` in place, in float32; returns the loss history and a summary."""
    t0 = time.perf_counter()
    patches = _Patches(blocks, arch, seed, device)
    eval_b, eval_a, eval_m = patches.draw(EVAL_PATCHES)
    eval_noise = patches.noise(EVAL_PATCHES)
    # an epoch is ~2 passes over the sample's pixels, within [2 BATCH, PATCHES_PER_EPOCH] patches
    n_valid = sum(int(v.sum()) for _, _, v in blocks)
    per_epoch = int(np.clip(math.ceil(2 * n_valid / patches.size**2), 2 * BATCH,
                            PATCHES_PER_EPOCH))
    opt = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE)
    history: list[float] = []
    train_history: list[float] = []
    best, best_state, wait = math.inf, None, 0
    net.to(device).to(memory_format=torch.channels_last)

    def held_out() -> float:
        with torch.no_grad():
            return float(loss_of(net, arch, eval_b, eval_a, eval_m, eval_noise))

    with deterministic(device):
        net.eval()
        initial = held_out()
        for epoch in range(1, epochs + 1):
            train_history.append(_epoch(net, arch, patches, opt, per_epoch))
            history.append(value := held_out())
            log.info("learned/%s epoch %d/%d: train loss %.5f, held-out loss %.5f (%.1f s)",
                     arch.objective, epoch, epochs, train_history[-1], value,
                     time.perf_counter() - t0)
            if value < best * (1.0 - MIN_REL_IMPROVEMENT):
                best, wait = value, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                continue
            wait += 1
            if wait >= patience:
                log.info("learned/%s: held-out loss flat for %d epochs, stopping at epoch %d",
                         arch.objective, patience, epoch)
                break
            if best_state is not None:  # back to the best weights, with a smaller step
                net.load_state_dict(best_state)
            for group in opt.param_groups:
                group["lr"] *= LR_DECAY
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return {"epochs_run": len(history), "epochs_max": epochs, "patience": patience,
            "initial_loss": initial, "final_loss": history[-1], "best_loss": best,
            "loss_history": history, "train_loss_history": train_history,
            "patch": patches.size, "patches_per_epoch": per_epoch, "batch": BATCH,
            "learning_rate": LEARNING_RATE, "final_learning_rate": opt.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - t0, 3),
            "device": str(device), "precision": "fp32", "seed": seed}
