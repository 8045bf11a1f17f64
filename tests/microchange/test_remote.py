"""Remote inputs: BEFORE and AFTER given as GDAL ``/vsicurl/`` URLs, read through GDAL only.

A local HTTP server that honours range requests (as GDAL's /vsicurl needs) serves a synthetic
pair; detection on the URLs must give the same change mask as on the local files, record the
URLs unchanged, and derive a stable run id (resume key) from the remote content.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rasterio

from microchange.cli import main as cli_main
from microchange.config import DetectConfig
from microchange.errors import InputError
from microchange.io.datasets import is_remote
from microchange.io.manifest import file_fingerprint
from microchange.pipeline import run_detection
from microchange.synthetic import make_scene, write_scene
from microchange.types import CHANGE_MASK, RUN_MANIFEST

SERVER = Path(__file__).with_name("range_server.py")
CFG = DetectConfig(method="cva", tile_size=128)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(base URL, local folder) of a synthetic pair served over HTTP on 127.0.0.1.

    The server (:mod:`range_server`) runs in a child process: GDAL holds the GIL during some
    HTTP requests, so a server thread of the test process could deadlock.
    """
    folder = tmp_path_factory.mktemp("served")
    write_scene(make_scene(height=200, width=200, seed=5, n_changes=6), folder)
    proc = subprocess.Popen([sys.executable, str(SERVER), str(folder)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}", folder
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _run(out: Path) -> dict[str, Any]:
    return dict(json.loads((out / RUN_MANIFEST).read_text()))



def test_is_remote() -> None:
    assert is_remote("/vsicurl/http://127.0.0.1:8000/before.tif")
    assert is_remote("https://example.org/a.tif")
    assert is_remote(Path("/vsis3/bucket/a.tif"))
    assert not is_remote("/data/before.tif")
    assert not is_remote(Path("relative/before.tif"))


def test_detection_on_vsicurl_urls_matches_the_local_files(
        served: tuple[str, Path], tmp_path: Path) -> None:
    url, folder = served
    before, after = f"/vsicurl/{url}/before.tif", f"/vsicurl/{url}/after.tif"
    run_detection(folder / "before.tif", folder / "after.tif", tmp_path / "local", CFG)
    run_detection(before, after, tmp_path / "remote", CFG)
    assert ((tmp_path / "remote" / CHANGE_MASK).read_bytes()
            == (tmp_path / "local" / CHANGE_MASK).read_bytes())
    run = _run(tmp_path / "remote")
    inputs = run["inputs"]
    assert inputs["before"]["path"] == before
    assert inputs["after"]["path"] == after
    for role, path in (("before", before), ("after", after)):
        files = inputs[role]["files"]
        assert [f["path"] for f in files] == [path]
        assert files[0]["remote"] is True
        assert re.fullmatch(r"[0-9a-f]{64}", files[0]["sha256"])
    json.dumps(run)  # still plain JSON

    run_detection(before, after, tmp_path / "again", CFG)
    assert _run(tmp_path / "again")["run_id"] == run["run_id"]  # stable resume key
    assert _run(tmp_path / "local")["run_id"] != run["run_id"]  # the paths are part of it


def test_remote_fingerprint_follows_the_content(served: tuple[str, Path]) -> None:
    url, folder = served
    before = file_fingerprint(f"/vsicurl/{url}/before.tif")
    assert before == file_fingerprint(f"/vsicurl/{url}/before.tif")
    assert before["sha256"] != file_fingerprint(f"/vsicurl/{url}/after.tif")["sha256"]
    local = file_fingerprint(folder / "before.tif")
    assert local["path"] == str((folder / "before.tif").resolve())
    assert local["bytes"] == (folder / "before.tif").stat().st_size
    assert "remote" not in local


def test_a_missing_remote_file_is_an_input_error_naming_the_url(
        served: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = served
    missing = f"/vsicurl/{url}/nowhere.tif"
    with pytest.raises(InputError) as info:
        run_detection(missing, f"/vsicurl/{url}/after.tif", tmp_path / "out", CFG)
    assert missing in str(info.value)
    assert "BEFORE" in str(info.value)


def test_command_line_on_urls(served: tuple[str, Path], tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    url, _ = served
    out = tmp_path / "cli"
    code = cli_main(["detect", f"/vsicurl/{url}/before.tif", f"/vsicurl/{url}/after.tif",
                     "--out", str(out), "--method", "cva", "-q"])
    assert code == 0, capsys.readouterr().err
    assert (out / CHANGE_MASK).is_file()
    missing = f"/vsicurl/{url}/nowhere.tif"
    code = cli_main(["detect", missing, f"/vsicurl/{url}/after.tif", "--out", str(out / "x"),
                     "-q"])
    assert code == 2
    assert missing in capsys.readouterr().err


def test_gdal_reads_windows_of_the_served_file(served: tuple[str, Path]) -> None:
    url, folder = served
    window = ((10, 20), (30, 50))
    with rasterio.open(f"/vsicurl/{url}/before.tif") as ds, \
            rasterio.open(folder / "before.tif") as local:
        assert (ds.read(window=window) == local.read(window=window)).all()
