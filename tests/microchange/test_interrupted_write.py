"""A tile whose process died while writing its parts is scored again, never read half-written.

What a Dask worker killed mid-task leaves behind: one part written, the next one half-written
under its temporary name, no ``tile_N.json``. The task that distributed runs again elsewhere
must not take the tile for done nor trip over the leftovers.
"""

from pathlib import Path

import pytest

from microchange.config import DetectConfig
from microchange.pipeline import run_detection, score
from microchange.types import CHANGE_MASK, CHANGE_SCORE, STAGING_DIR


class Died(BaseException):
    """The process died (not an Exception: nothing may catch it on the way out)."""


def test_a_tile_killed_while_writing_its_mask_is_scored_again(planted_pair, tmp_path: Path,
                                                              monkeypatch) -> None:
    before, after, _ = planted_pair
    cfg = DetectConfig(method="cva", tile_size=32, batch_tiles=1)
    run_detection(before, after, tmp_path / "clean", cfg, threads=1)

    real = score.write_part
    victim = 7

    def dies_mid_write(path: Path, *args, **kwargs) -> None:
        if path.name == f"mask_{victim:06d}.tif":
            path.with_name(f".{path.name}.999.1.tmp").write_bytes(b"II*\x00" + b"\x00" * 50)
            raise Died
        real(path, *args, **kwargs)

    monkeypatch.setattr(score, "write_part", dies_mid_write)
    out = tmp_path / "out"
    with pytest.raises(Died):
        run_detection(before, after, out, cfg, threads=1)
    (staging,) = (out / STAGING_DIR).iterdir()
    parts = staging / "parts"
    assert (parts / f"score_{victim:06d}.tif").exists()
    assert not (parts / f"mask_{victim:06d}.tif").exists()  # only its temporary name
    assert not (parts / f"tile_{victim:06d}.json").exists()  # so: not done

    monkeypatch.setattr(score, "write_part", real)
    run_detection(before, after, out, cfg, threads=1)
    for name in (CHANGE_MASK, CHANGE_SCORE):
        assert (out / name).read_bytes() == (tmp_path / "clean" / name).read_bytes(), name
