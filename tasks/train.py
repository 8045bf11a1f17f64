"""Task of the train-feature-extractor flow (see microchange.training)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefect import task

from microchange import training
from microchange.config import DetectConfig


@task(name="train-extractor")
def train_extractor(before: str, after: str, out: str, config: DetectConfig,
                    more_pairs: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """Train the 'learned' extractor and write its checkpoint. See training.train_extractor."""
    return training.train_extractor(before, after, out, config, more_pairs=more_pairs)
