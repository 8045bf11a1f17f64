"""Checkpoints of the 'learned' feature extractor: weights plus the metadata to check them.

A checkpoint is one ``torch.save`` file holding a plain dict: ``format``, ``format_version``,
``state_dict`` (name -> tensor) and ``metadata`` (JSON-like: architecture, band count,
normalisation statistics, objective, training-data fingerprint, versions, creation date, loss).
It is read back with ``torch.load(weights_only=True)`` only, so a file that carries any other
Python object is refused before anything in it runs. Files are written under a temporary name and
renamed when complete.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from microchange.errors import ConfigError, InputNotFoundError, OutputError

__all__ = ("FORMAT", "FORMAT_VERSION", "Checkpoint", "load", "save", "validate")

FORMAT = "microchange-learned-extractor"
FORMAT_VERSION = 1
_FIX = "retrain it with `microchange train BEFORE AFTER --out MODEL.ckpt`"


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read from disk.

    Attributes:
        path: The file it was read from.
        state_dict: Parameter name -> CPU tensor.
        metadata: Architecture, bands, normalisation, objective, data fingerprint, versions,
            creation date, training summary.
    """

    path: Path
    state_dict: dict[str, Any]
    metadata: dict[str, Any]


def save(path: str | os.PathLike[str], state_dict: Mapping[str, Any],
         metadata: Mapping[str, Any]) -> Path:
    """Write a checkpoint atomically (temporary file, then rename).

    Args:
        path: Destination file (conventionally ``*.ckpt``); its folder is created if missing.
        state_dict: Parameter name -> tensor (moved to the CPU before saving).
        metadata: JSON-like metadata (dicts, lists, str, int, float, bool, None only).

    Returns:
        The path written.

    Raises:
        OutputError: If the file cannot be written.
    """
    import torch

    dest = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "state_dict": {k: v.detach().to("cpu").clone() for k, v in state_dict.items()},
        "metadata": dict(metadata),
    }
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        torch.save(payload, tmp)
        tmp.replace(dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write checkpoint {str(dest)!r} ({exc}): choose a writable "
                          "--out path") from exc
    return dest


def load(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint safely: tensors and plain metadata only, on the CPU.

    Args:
        path: File written by :func:`save` (``microchange train``).

    Returns:
        The checkpoint.

    Raises:
        InputNotFoundError: If the file is missing.
        ConfigError: If the file is corrupt, not a microchange checkpoint, or holds
            Python objects other than tensors and plain values (nothing in it is executed).
    """
    import pickle
    import zipfile

    import torch

    p = Path(path)
    if not p.is_file():
        what = "is a folder" if p.is_dir() else "does not exist"
        raise InputNotFoundError(f"checkpoint {str(p)!r} {what}: give the file written by "
                          "`microchange train BEFORE AFTER --out MODEL.ckpt`, or omit --model to "
                          "train on the pair itself")
    if not zipfile.is_zipfile(p):  # torch.save writes a zip archive
        raise ConfigError(f"cannot read checkpoint {str(p)!r}: it is not a torch checkpoint "
                          f"(corrupt, truncated or another format); {_FIX}")
    try:
        obj = torch.load(p, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"checkpoint {str(p)!r} was refused: it holds Python objects other than tensors and "
            f"plain values, which are never loaded ({first[:200]}). Use only checkpoints written "
            f"by `microchange train`; {_FIX}"
        ) from exc
    except Exception as exc:  # torch raises RuntimeError, EOFError, zipfile errors, ...
        raise ConfigError(f"cannot read checkpoint {str(p)!r} ({type(exc).__name__}: "
                          f"{str(exc)[:200]}): the file is corrupt or not a torch file; "
                          f"{_FIX}") from exc
    if not (isinstance(obj, dict) and obj.get("format") == FORMAT):
        raise ConfigError(f"checkpoint {str(p)!r} is not a microchange learned-extractor "
                          f"checkpoint (no format {FORMAT!r}): {_FIX}")
    version = obj.get("format_version")
    if version != FORMAT_VERSION:
        raise ConfigError(f"checkpoint {str(p)!r} has format version {version!r}; this "
                          f"microchange reads version {FORMAT_VERSION}: {_FIX}")
    state, meta = obj.get("state_dict"), obj.get("metadata")
    if not (isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
            and isinstance(meta, dict)):
        raise ConfigError(f"checkpoint {str(p)!r} is malformed (state_dict/metadata missing): "
                          f"{_FIX}")
    return Checkpoint(p, state, meta)


def validate(ckpt: Checkpoint, *, bands: int, architecture: Mapping[str, Any],
             preprocess: Mapping[str, Any] | None = None) -> None:
    """Check that a checkpoint fits the input it is about to be applied to.

    Args:
        ckpt: The checkpoint.
        bands: Bands of the input (after ``--bands``).
        architecture: Architecture the extractor would build (name, objective, width,
            dilations, ...); every key must match the checkpoint's.
        preprocess: Preprocessing of this run; a different log transform is an error (the
            network saw other value ranges).

    Raises:
        ConfigError: Naming the checkpoint file, the mismatch and the fix.
    """
    meta = ckpt.metadata
    name = str(ckpt.path)
    trained = meta.get("bands")
    if trained != bands:
        raise ConfigError(
            f"checkpoint {name!r} was trained on {trained} band(s) but the input has {bands}: "
            f"select the same bands with --bands (e.g. --bands "
            f"{','.join(str(i + 1) for i in range(int(trained or 1)))}) or train a model on "
            f"this input with `microchange train BEFORE AFTER --out MODEL.ckpt`"
        )
    arch = meta.get("architecture") or {}
    diff = {k: (arch.get(k), v) for k, v in architecture.items() if arch.get(k) != v}
    if diff:
        text = ", ".join(f"{k}: checkpoint {a!r} vs expected {b!r}" for k, (a, b) in diff.items())
        raise ConfigError(
            f"checkpoint {name!r} has another architecture ({text}): it was written by another "
            f"version or objective; drop --objective to use the checkpoint's own, or {_FIX}"
        )
    trained_pre = meta.get("preprocess") or {}
    if preprocess is not None and "log_transform" in trained_pre and (
            bool(trained_pre["log_transform"]) != bool(preprocess.get("log_transform"))):
        raise ConfigError(
            f"checkpoint {name!r} was trained with log_transform="
            f"{trained_pre['log_transform']} but this run uses log_transform="
            f"{preprocess.get('log_transform')}: use the same --sensor "
            f"({meta.get('sensor')!r}) or --log-transform setting as for training"
        )
