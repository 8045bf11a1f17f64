"""Tile batches and their grouping into scoring tasks."""

from pathlib import Path

import pytest

from microchange.config import DetectConfig
from microchange.pipeline import plan_detection, tile_batches


@pytest.fixture
def plan(planted_pair, tmp_path: Path) -> str:
    before, after, _ = planted_pair  # 150 x 170 px: 3 x 3 tiles of 64 px
    return plan_detection(before, after, tmp_path / "out",
                          DetectConfig(method="cva", tile_size=64, batch_tiles=2))


def test_batches_hold_batch_tiles_tiles_in_tile_order(plan: str) -> None:
    batches = tile_batches(plan)
    assert [len(b) for b in batches] == [2, 2, 2, 2, 1]
    assert [t for b in batches for t in b] == list(range(9))


@pytest.mark.parametrize(("groups", "sizes"), [(1, [9]), (2, [4, 5]), (3, [2, 4, 3]),
                                               (5, [2, 2, 2, 2, 1]), (50, [2, 2, 2, 2, 1])])
def test_groups_are_whole_batches_balanced_and_cover_every_tile_once(
        plan: str, groups: int, sizes: list[int]) -> None:
    grouped = tile_batches(plan, groups=groups)
    assert [len(g) for g in grouped] == sizes
    assert [t for g in grouped for t in g] == list(range(9))


def test_groups_must_be_positive(plan: str) -> None:
    with pytest.raises(ValueError, match="groups must be >= 1"):
        tile_batches(plan, groups=0)
