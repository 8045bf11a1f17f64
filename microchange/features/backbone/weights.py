"""Pretrained backbone weights from a local file, loaded without running code from it."""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from microchange.errors import ConfigError, InputNotFoundError

__all__ = ("load_into", "load_state_dict_file")


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a local state dict without executing any code from the file.

    Args:
        path: File written by ``torch.save(model.state_dict(), path)``; a dict holding the state
            dict under 'state_dict' or 'model' is accepted too, and a 'module.' key prefix
            (DataParallel) is dropped.

    Returns:
        Parameter name -> tensor, on the CPU.

    Raises:
        InputNotFoundError: If the file is missing.
        ConfigError: If the file is unreadable, refused by ``weights_only`` loading
            (it holds objects other than tensors: possibly code), or is not a state dict.
    """
    p = Path(path)
    if not p.is_file():
        raise InputNotFoundError(
            f"weights file {str(path)!r} does not exist: give a local state dict file written by "
            "torch.save(model.state_dict(), path), or no weights for random ones"
        )
    try:
        with warnings.catch_warnings():  # a raw pickle, not torch.save's zip: refused below
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
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


def load_into(module: nn.Module, state: Mapping[str, torch.Tensor], path: str,
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
