"""The 'learned' feature extractor: a compact CNN trained unsupervised on the pair itself.

Both dates are standardised per band with statistics of the global sample, then a small network
(:mod:`~microchange.features.learned.networks`) is trained on patches of that sample without
labels (:mod:`~microchange.features.learned.training`), or loaded from a checkpoint of
``microchange train``. Objectives: ``cross`` (cross-prediction: two residual regressors learn
before -> after and after -> before; what they cannot predict is change), ``cross-cal`` (the same
with residuals divided by a fitted per-pixel scale, :mod:`~microchange.features.learned.calibration`)
and ``dae`` (a denoising autoencoder shared by both dates; deep CVA of its codes). Default:
``cross`` on every sensor family. Inference runs under bfloat16 autocast where the
hardware has it (:func:`~microchange.features.devices.resolve_precision`); training always runs in
float32. The docs page *Deep features* compares the objectives.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from microchange.config import DetectConfig
from microchange.errors import ConfigError, NotFittedError
from microchange.features import checkpoints
from microchange.features.bands import masked_band_stats
from microchange.features.devices import autocast, resolve_device, resolve_precision
from microchange.features.learned.calibration import fit_scales
from microchange.features.learned.networks import (
    ARCHITECTURES,
    DEFAULT_OBJECTIVE,
    build_net,
    feature_groups,
    stack_groups,
)
from microchange.features.learned.training import train_network, trim_likely_changes
from microchange.io.manifest import library_versions
from microchange.types import PairArrays, State

__all__ = ("LearnedFeatures", "learned_extractor")

log = logging.getLogger("microchange")

_MAX_PIXELS_PER_FORWARD = 1 << 19
"""Pixels per forward pass on the CPU: one 512-px tile with its halo (activations stay in cache;
faster than several tiles at once on 2 cores)."""


def ready(net: nn.Module, device: torch.device) -> nn.Module:
    """The network in eval mode, on ``device``, channels_last (inference layout)."""
    return net.to(device).to(memory_format=torch.channels_last).eval()


def fingerprint(samples: Sequence[PairArrays]) -> str:
    digest = hashlib.sha256()
    for s in samples:
        for a in (s.before, s.after, s.valid):
            digest.update(np.ascontiguousarray(a).tobytes())
    return digest.hexdigest()


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

    def _standardise(self, block: PairArrays,
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

    def fit(self, samples: Sequence[PairArrays],
            more: Sequence[Sequence[PairArrays]] = ()) -> None:
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
        self.sample_sha256 = fingerprint([s for group in (samples, *more) for s in group])
        if self.checkpoint is not None:
            ckpt = self.checkpoint
            checkpoints.validate(ckpt, bands=bands, architecture=self.arch.describe(),
                                 preprocess=self.preprocess)
            net = build_net(self.arch, bands, self.seed)
            try:
                net.load_state_dict(ckpt.state_dict)
            except RuntimeError as exc:
                raise ConfigError(f"checkpoint {str(ckpt.path)!r} does not match the "
                                  f"{self.arch.name} network ({str(exc)[:200]}): retrain it with "
                                  "`microchange train`") from exc
            self._net = ready(net, self.device)
            self.training = dict(ckpt.metadata.get("training") or {})
            log.info("learned/%s: weights from checkpoint %s", self.objective, ckpt.path)
            return
        blocks = [(*self._standardise(s), s.valid) for s in samples if s.valid.any()]
        for group in more:  # each pair in its own standard units
            stats = self._stats(group)
            blocks += [(*self._standardise(s, stats), s.valid) for s in group if s.valid.any()]
        blocks, trim = trim_likely_changes(blocks)
        net = build_net(self.arch, bands, self.seed)
        self.training = train_network(net, self.arch, blocks, epochs=self.epochs,
                               patience=self.patience, seed=self.seed, device=self.device)
        self.training["pairs"] = 1 + len(more)
        self.training["trim"] = trim
        if self.arch.calibrated:
            self.training["calibration"] = fit_scales(
                net, blocks, halo=self.arch.halo, seed=self.seed, device=self.device)
        self._net = ready(net, self.device)

    @staticmethod
    def _stats(samples: Sequence[PairArrays]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(2, C) per-date band means and standard deviations of the valid sample pixels."""
        valids = [s.valid for s in samples]
        mb, sb = masked_band_stats([s.before for s in samples], valids)
        ma, sa = masked_band_stats([s.after for s in samples], valids)
        return np.stack([mb, ma]), np.stack([sb, sa])

    def extract(self, block: PairArrays) -> PairArrays:
        """Features of both dates of one block."""
        return self.extract_batch([block])[0]

    def extract_batch(self, blocks: Sequence[PairArrays]) -> list[PairArrays]:
        """Features of several blocks, batched through the network (same-shape blocks together).

        Returns:
            One :class:`PairArrays` per block: (F, H, W) float32 features of both dates,
            0 at invalid pixels.
        """
        if self._net is None:
            raise NotFittedError("LearnedFeatures.extract called before fit/load_state")
        net, dev = self._net, self.device
        out: list[PairArrays | None] = [None] * len(blocks)
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
                    out[i] = PairArrays(before, after, blocks[i].valid, blocks[i].halo)
        return [o for o in out if o is not None]

    def _forward(self, net: nn.Module, b: torch.Tensor,
                 a: torch.Tensor) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        b = b.contiguous(memory_format=torch.channels_last)
        a = a.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            with autocast(self.device, self.precision):
                fb, fa = feature_groups(net, self.arch, b, a)
            return stack_groups(fb), stack_groups(fa)

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
        net = build_net(self.arch, int(state["bands"]), self.seed)
        net.load_state_dict({k[4:]: torch.from_numpy(np.array(v)) for k, v in state.items()
                             if k.startswith("net.")})
        self._net = ready(net, self.device)

    def checkpoint_payload(self, *, inputs: Sequence[dict[str, Any]] = ()
                           ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Weights and metadata for :func:`microchange.features.checkpoints.save`.

        Args:
            inputs: Fingerprints (path, bytes, sha256) of the files trained on.

        Returns:
            (state_dict, metadata).
        """
        if self._net is None or self._mean is None or self._std is None:
            raise NotFittedError("checkpoint_payload called before fit")
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
    objective: str | None = deep.objective
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
        objective = DEFAULT_OBJECTIVE
    return LearnedFeatures(objective=objective, device=deep.device, precision=deep.precision,
                           epochs=deep.epochs,
                           patience=deep.patience, seed=config.seed, checkpoint=ckpt,
                           preprocess=config.preprocess.model_dump(),
                           sensor=config.sensor)
