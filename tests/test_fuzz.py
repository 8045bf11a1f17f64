"""Fuzzing: a damaged GeoTIFF makes ``microchange detect`` exit 0 or 2, never 1, never hang.

Hypothesis mutates the header (IFD, tag values, GeoTIFF keys) or the pixel bytes of a small valid
GeoTIFF (tiled or striped), or cuts it short, and hands it to the command as BEFORE or AFTER.
The runs go to one worker process (the command's imports are paid once; a crash or a hang of
GDAL cannot take pytest down): each must answer within a time limit with exit code 0 (outputs
written) or 2 (one message, no traceback). Derandomized, so CI sees the same examples each run.
"""

from __future__ import annotations

import json
import selectors
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = 250
"""About 0.1 s each on 2 cores: the whole test takes ~25 s."""
TIMEOUT_S = 30.0
"""A run that takes longer than this hangs (a good one takes ~0.1 s)."""

WORKER = r"""
import json, os, sys, tempfile
results = os.fdopen(os.dup(1), "w")
from microchange.cli import main
for line in sys.stdin:
    argv = json.loads(line)
    with tempfile.TemporaryFile() as cap:
        saved = os.dup(1), os.dup(2)
        os.dup2(cap.fileno(), 1)
        os.dup2(cap.fileno(), 2)  # GDAL writes some messages straight to fd 2
        try:
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code
            except BaseException:  # escaped main(): print it, report it
                import traceback
                traceback.print_exc()
                code = "escaped"
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        cap.seek(0)
        text = cap.read().decode(errors="replace")
    results.write(json.dumps({"code": code, "output": text[-4000:]}) + "\n")
    results.flush()
"""


class Worker:
    """One process running ``microchange`` commands in turn, each with a time limit."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", WORKER], cwd=self.cwd, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def run(self, argv: list[str]) -> dict[str, Any]:
        """``{"code": exit code, "output": stdout and stderr}``; code 'hang' or 'crash'."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(argv) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:  # the worker died
            ready, line = True, ""
        else:
            with selectors.DefaultSelector() as sel:
                sel.register(self.proc.stdout, selectors.EVENT_READ)
                ready = bool(sel.select(TIMEOUT_S))
            line = self.proc.stdout.readline() if ready else None
        if line:
            result: dict[str, Any] = json.loads(line)
            return result
        self.close()  # hung or died: the next example gets a new worker
        self.proc = self._start()
        return {"code": "hang" if line is None else "crash", "output": ""}

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def _write(path: Path, data: np.ndarray, *, tiled: bool) -> None:
    count, height, width = data.shape
    profile: dict[str, Any] = {"driver": "GTiff", "width": width, "height": height,
                               "count": count, "dtype": data.dtype, "crs": "EPSG:32633",
                               "transform": Affine(10, 0, 500_000, 0, -10, 4_000_000)}
    if tiled:
        profile.update(tiled=True, blockxsize=16, blockysize=16)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)


def _header_size(path: Path) -> int:
    """Bytes before the first block of pixels: the IFD, the tag values, the GeoTIFF keys."""
    with rasterio.open(path) as ds:
        return int(ds.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(0)
    before = rng.normal(1000, 100, (3, 24, 24)).astype("uint16")
    after = before.copy()
    after[:, 5:9, 5:9] += 500
    _write(d / "before.tif", before, tiled=True)
    _write(d / "after.tif", after, tiled=True)
    _write(d / "striped.tif", before, tiled=False)
    return d


@pytest.fixture(scope="module")
def worker(fuzz_dir: Path) -> Iterator[Worker]:
    w = Worker(fuzz_dir)
    yield w
    w.close()


SPECIAL = [b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\xff\xff\xff\x7f", b"\x00\x00\x01\x00",
           b"\x01\x00\x00\x00"]
"""4-byte values that break sizes, counts and offsets: 0, -1, 2^31 - 1, 65536, 1."""


def _mutate(data: st.DataObject, raw: bytes, header: int) -> tuple[bytes, str]:
    kind = data.draw(st.sampled_from(["header", "header-word", "body", "truncate"]), label="kind")
    out = bytearray(raw)
    if kind == "header":
        for pos, value in data.draw(st.lists(st.tuples(st.integers(0, header - 1),
                                                       st.integers(0, 255)),
                                             min_size=1, max_size=4), label="edits"):
            out[pos] = value
    elif kind == "header-word":
        pos = data.draw(st.integers(0, header - 4), label="pos")
        out[pos:pos + 4] = data.draw(st.sampled_from(SPECIAL), label="word")
    elif kind == "body":
        for pos, value in data.draw(st.lists(st.tuples(st.integers(header, len(raw) - 1),
                                                       st.integers(0, 255)),
                                             min_size=1, max_size=16), label="edits"):
            out[pos] = value
    else:
        out = out[:data.draw(st.integers(0, len(raw) - 1), label="length")]
    return bytes(out), kind


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow], print_blob=True)
@given(data=st.data())
def test_damaged_geotiff_exits_0_or_2_with_a_message(fuzz_dir: Path, worker: Worker,
                                                     data: st.DataObject) -> None:
    source = data.draw(st.sampled_from(["before.tif", "striped.tif"]), label="source")
    raw = (fuzz_dir / source).read_bytes()
    damaged, kind = _mutate(data, raw, _header_size(fuzz_dir / source))
    (fuzz_dir / "damaged.tif").write_bytes(damaged)
    role = data.draw(st.sampled_from(["BEFORE", "AFTER"]), label="role")
    pair = (["damaged.tif", "after.tif"] if role == "BEFORE" else ["before.tif", "damaged.tif"])
    out = fuzz_dir / "out"
    shutil.rmtree(out, ignore_errors=True)
    result = worker.run(["detect", *pair, "--out", str(out), "--method", "cva",
                         "--tile-size", "32", "-q"])
    code, output = result["code"], result["output"]
    if code not in (0, 2):  # keep the file to reproduce it
        shutil.copy(fuzz_dir / "damaged.tif", fuzz_dir / f"failed-{kind}-{role}.tif")
    assert code in (0, 2), f"{kind} damage of {source} as {role}: exit {code!r}\n{output}"
    assert "Traceback" not in output, output
    if code == 2:
        assert "microchange: error:" in output and "damaged.tif" in output, output
    else:
        assert (out / "change_mask.tif").is_file() and (out / "run.json").is_file()


def test_worker_reports_a_hang_or_a_crash_and_recovers(fuzz_dir: Path, monkeypatch) -> None:
    """The guard works: a worker that does not answer in time, or dies, is replaced."""
    w = Worker(fuzz_dir)
    try:
        monkeypatch.setattr(sys.modules[__name__], "TIMEOUT_S", 0.001)
        assert w.run(["methods"])["code"] == "hang"  # its imports alone take longer
        monkeypatch.setattr(sys.modules[__name__], "TIMEOUT_S", 60.0)
        w.proc.kill()
        w.proc.wait()
        assert w.run(["methods"])["code"] == "crash"
        assert w.run(["methods"])["code"] == 0
    finally:
        w.close()
