"""Deep change vector analysis: features of a truncated ImageNet-style CNN (``backbone``).

Deep CVA (Saha, Bovolo & Bruzzone 2019, IEEE TGRS 57(6)) compares both dates in the feature
space of a CNN: layers of a truncated backbone are upsampled to pixel resolution, combined, and
the change vector between the dates is scored. :class:`BackboneFeatures` standardises each band
of each date with statistics of the global sample, adapts the first convolution to any band
count (the mean RGB filter, scaled), folds BatchNorm into the convolutions, standardises each
chosen layer and projects it onto the principal axes of the sample's change vectors (one 1x1
convolution per layer), and sums the upsampled layers coarse to fine. Blocks are padded so the
network input starts on a multiple of the total stride, so features do not depend on the tile
size (which must be a multiple of that stride). Weights come from a local file or, with none,
from ``torch.manual_seed(seed)``; nothing is ever fitted in the network itself.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as nnf
from numpy.typing import NDArray

from microchange.config import Backbone, choices
from microchange.errors import BandMismatchError, ConfigError, NoOverlapError, NotFittedError
from microchange.features.backbone.trunk import (
    DEFAULT_LAYERS,
    RESNET_LAYERS,
    VGG_STAGES,
    Trunk,
    geometry,
    layer_width,
    sample_bilinear,
    upsample,
    upsample_crop,
)
from microchange.features.backbone.weights import load_into, load_state_dict_file
from microchange.features.bands import masked_band_stats
from microchange.features.devices import autocast, resolve_device, resolve_precision, seeded
from microchange.tiling import crop_core
from microchange.types import PairArrays, State

__all__ = ("BACKBONES", "BackboneFeatures")

BACKBONES = choices(Backbone)
"""Backbones accepted by :class:`BackboneFeatures`."""

_BATCH_PIXELS = 512 * 512
"""Pixels of one image at the nominal tile size: blocks smaller than a tile (the fit's sample
blocks) are batched up to ``batch_size`` images of this many pixels per forward pass, since
per-call overheads dominate on small blocks."""


def _groups(blocks: Sequence[PairArrays]) -> list[list[int]]:
    """Indexes of the blocks grouped by (shape, halo), in first-seen order: one batch each."""
    groups: dict[tuple[tuple[int, ...], int], list[int]] = {}
    for i, b in enumerate(blocks):
        groups.setdefault((b.valid.shape, b.halo), []).append(i)
    return list(groups.values())


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
        allowed = tuple(VGG_STAGES) if backbone == "vgg16" else RESNET_LAYERS
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
        order = allowed if backbone == "vgg16" else RESNET_LAYERS
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
        self._template: Trunk | None = self._make_template()  # checks the weights file now
        self._strides, self._halo = geometry(self._template)
        self._widths = [layer_width(self._template, name) for name in self.layers]
        self._trunk: Trunk | None = None  # built for the band count seen in fit/load_state
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
    def _make_template(self) -> Trunk:
        """The 3-band network on the CPU: loaded weights, or random ones from the seed."""
        with seeded(self.seed):
            trunk = Trunk(self.backbone, self.layers)
        if self._state_dict is not None:
            assert self.weights is not None
            load_into(trunk.net, self._state_dict, self.weights, self.backbone)
        return trunk.eval().requires_grad_(False)

    def _build(self, n_bands: int) -> Trunk:
        """The network for N bands: first convolution adapted, BatchNorm folded, on the device."""
        trunk = self._template if self._template is not None else self._make_template()
        self._template = None  # consumed: adapted and fused in place
        trunk.adapt_input(n_bands)
        trunk.eval().requires_grad_(False)
        trunk.fuse_batchnorm()
        trunk.to(self.device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        return trunk

    def _ensure_bands(self, n_bands: int) -> Trunk:
        if self._trunk is None or self._trunk.first_conv().in_channels != n_bands:
            self._trunk = None
            self._trunk = self._build(n_bands)
        return self._trunk

    @contextlib.contextmanager
    def _compute(self) -> Iterator[None]:
        """inference_mode, autocast to the resolved precision (float32: none)."""
        with torch.inference_mode(), autocast(self.device, self.precision):
            yield

    def _inputs(self, blocks: Sequence[PairArrays]) -> tuple[torch.Tensor, int]:
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
            return torch.cat([upsample_crop(y, size // y.shape[-2], rows, cols) for y in heads],
                             dim=1)
        heads.sort(key=lambda t: t.shape[-2])  # coarse to fine (deterministic: distinct sizes)
        total = heads[0]
        for y in heads[1:]:
            total = upsample(total, y.shape[-2] // total.shape[-2]).add_(y)
        return upsample_crop(total, size // total.shape[-2], rows, cols)

    def _blocks_per_forward(self, h: int, w: int) -> int:
        """Blocks of (h, w) px (two images each) per forward pass."""
        return max(1, self.batch_size // 2, self.batch_size * _BATCH_PIXELS // (2 * h * w))

    def _features(self, blocks: Sequence[PairArrays]) -> list[NDArray[np.float32]]:
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
    def fit(self, samples: Sequence[PairArrays]) -> None:
        """Fit band statistics, feature statistics and the projection on the global sample.

        Args:
            samples: Prepared blocks spread over the whole raster; ``before``/``after`` are
                (N, H, W) float32 bands; ``halo`` must be at least :attr:`halo`.

        Raises:
            ConfigError: If a block's halo is smaller than :attr:`halo`.
            NoOverlapError: If the sample holds no valid pixel.
        """
        short = [s.halo for s in samples if s.halo < self.halo]
        if short:
            raise ConfigError(
                f"sample blocks have halo {short[0]} < {self.halo} needed by {self.backbone} "
                f"{self.layers}: read blocks with halo >= {self.halo}"
            )
        if not samples:
            raise NoOverlapError("no sample block to fit the backbone features on: the inputs hold "
                                 "no valid pixel where both overlap")
        cores = [crop_core(s.valid, s.halo) for s in samples]
        valids = [np.asarray(v, dtype=bool) for v in cores]
        stats = [masked_band_stats([np.asarray(crop_core(getattr(s, date), s.halo), np.float32)
                                    for s in samples], valids)
                 for date in ("before", "after")]
        self._band_mean = np.stack([m for m, _ in stats])
        self._band_std = np.stack([sd for _, sd in stats])
        self._n_bands = int(self._band_mean.shape[1])
        self._ensure_bands(self._n_bands)
        xb, xa = self._sample_features(samples, cores, self._subsample(cores))
        self._fit_head(xb, xa)

    def _subsample(self, cores: Sequence[NDArray[np.generic]]) -> dict[int, NDArray[np.int64]]:
        """Block -> core pixels whose features fit the statistics: spread blocks, subsampled."""
        counts = np.array([int(np.asarray(v).sum()) for v in cores])
        total = int(counts.sum())
        if total == 0:
            raise NoOverlapError("no valid pixel in the sample: the inputs hold only nodata")
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
        return chosen

    def _sample_features(self, samples: Sequence[PairArrays],
                         cores: Sequence[NDArray[np.generic]],
                         chosen: dict[int, NDArray[np.int64]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, F) layer features of the chosen pixels at BEFORE and at AFTER."""
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
                    maps = self._ensure_bands(int(x.shape[1]))(x)
                    for date, dest in ((0, fb), (1, fa)):  # image 2b: before, 2b + 1: after
                        dest.append(torch.cat([sample_bilinear(
                            m, 2 * block_of + date, rows, cols, x.shape[-2] // m.shape[-2])
                            for m in maps]).T.cpu())  # (k, F)
        return torch.cat(fb), torch.cat(fa)  # (n, F) float64

    def _fit_head(self, xb: torch.Tensor, xa: torch.Tensor) -> None:
        """Feature standardisation and the projection onto the change vectors' main axes."""
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

    def extract(self, block: PairArrays) -> PairArrays:
        """Features of both dates of one block: (K, H, W) float32 each, 0 at invalid pixels."""
        return self.extract_batch([block])[0]

    def extract_batch(self, blocks: Sequence[PairArrays]) -> list[PairArrays]:
        """Features of several blocks; blocks of one shape go through the network together."""
        if self._band_mean is None or not self._head:
            raise NotFittedError("BackboneFeatures.extract called before fit/load_state")
        out: list[PairArrays | None] = [None] * len(blocks)
        for idx in _groups(blocks):
            feats = self._features([blocks[i] for i in idx])
            for i, f in zip(idx, feats, strict=True):
                out[i] = PairArrays(f[0], f[1], blocks[i].valid, blocks[i].halo)
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
