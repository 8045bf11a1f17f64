import numpy as np
import pytest

from microchange.tiling import crop_core, pad_to_halo, plan_tiles


@pytest.mark.parametrize(("h", "w", "size"), [(100, 100, 32), (65, 130, 64), (7, 5, 512)])
def test_tiles_cover_every_pixel_once(h: int, w: int, size: int) -> None:
    cover = np.zeros((h, w), int)
    tiles = plan_tiles(h, w, tile_size=size, halo=3)
    for t in tiles:
        cover[t.row_off:t.row_off + t.height, t.col_off:t.col_off + t.width] += 1
    assert (cover == 1).all()
    assert [t.tile_id for t in tiles] == list(range(len(tiles)))


def test_halo_is_clipped_and_padded_by_reflection() -> None:
    tiles = plan_tiles(10, 10, tile_size=4, halo=2)
    first = tiles[0]
    assert first.read_bounds(10, 10) == (0, 6, 0, 6)
    assert first.pad_widths(10, 10) == ((2, 0), (2, 0))
    image = np.arange(100, dtype=np.float32).reshape(1, 10, 10)
    r0, r1, c0, c1 = first.read_bounds(10, 10)
    padded = pad_to_halo(image[:, r0:r1, c0:c1], first.pad_widths(10, 10))
    assert padded.shape == (1, 8, 8)
    # reflect without repeating the edge: row -1 is row 1, row -2 is row 2
    assert padded[0, 0, 2] == image[0, 2, 0]
    assert padded[0, 1, 2] == image[0, 1, 0]
    np.testing.assert_array_equal(crop_core(padded, 2), image[:, 0:4, 0:4])


def test_invalid_tiling_is_rejected() -> None:
    with pytest.raises(ValueError, match="tile_size=0"):
        plan_tiles(10, 10, tile_size=0)
