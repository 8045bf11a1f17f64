"""No data loss under faults: a kill at any stage, a full disk, a folder that cannot be written.

A run killed with SIGKILL (plan, fit, scoring, mosaic, tables, run.json, the publish renames)
leaves every final name with the earlier run's bytes or, all together, the new run's; the next
run completes with outputs byte-identical to an uninterrupted run. The kill comes from a hook
in the child script below (test-only: production code has none). A full disk and a folder that
cannot be written are one clear message (exit 1 and 2), no traceback, no temporary file.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from microchange.cli import main
from microchange.config import DetectConfig
from microchange.io import publish
from microchange.pipeline import finalise, run_detection
from microchange.synthetic import make_scene, write_scene
from microchange.types import (
    CHANGE_MASK,
    CHANGE_SCORE,
    CHANGES_TABLE,
    OUTPUT_NAMES,
    RUN_MANIFEST,
    STAGING_DIR,
    TILES_TABLE,
)

DATA_OUTPUTS = (CHANGE_MASK, CHANGE_SCORE, TILES_TABLE, CHANGES_TABLE)  # run.json has timings
NEW = ["--method", "cva", "--tile-size", "32", "--threads", "1", "-q"]
OLD = ["--method", "cva", "--tile-size", "48", "--smoothing-sigma", "0", "--threads", "1", "-q"]

CHILD = r'''
import os, signal, sys
from pathlib import Path
from microchange.cli import main
from microchange.io import publish
from microchange.pipeline import finalise, fit, plan, score

stage, nth = sys.argv[1], int(sys.argv[2])
calls = {"n": 0}


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def hook(module, name, partial=None):
    """Kill the process at the nth call of module.name (after writing half a file if asked)."""
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == nth:
            if partial is not None:
                Path(partial(args)).write_bytes(b"II*\x00" + b"\x00" * 64)
            die()
        return real(*args, **kwargs)

    setattr(module, name, wrapper)


HOOKS = {
    "plan": (plan, "_resume", None),                        # staging made, no plan.json
    "fit": (fit, "fit_threshold", None),                    # detector fitted, nothing saved
    "scoring": (score, "make_mask", None),                  # some tiles done
    "mosaic": (finalise, "assemble_cog", lambda a: a[2]),   # half a COG under its temp name
    "tables": (finalise, "write_changes_table", lambda a: a[0]),
    "manifest": (finalise, "_manifest", None),
    "publish": (publish, "_move", None),                    # nth rename of the publish
    "cleanup": (finalise, "remove_staging", None),          # published, staging not removed
}
module, name, partial = HOOKS[stage]
hook(module, name, partial)
sys.exit(main(["detect", *sys.argv[3:]]))
'''

# (stage, nth call): the publish renames are journal, 4 data files, run.json (1 + 5 calls)
KILLS = [("plan", 1), ("fit", 1), ("scoring", 5), ("mosaic", 2), ("tables", 1), ("manifest", 1),
         ("publish", 1), ("publish", 2), ("publish", 4), ("publish", 6), ("cleanup", 1)]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "microchange.cli", "detect", *args]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The inputs, a folder with an earlier run's outputs, and a clean run of the new one."""
    root = tmp_path_factory.mktemp("faults")
    paths = write_scene(make_scene(height=96, width=112, seed=5, n_changes=5), root / "in")
    pair = [str(paths["before"]), str(paths["after"])]
    assert main(["detect", *pair, "--out", str(root / "old"), *OLD]) == 0
    assert main(["detect", *pair, "--out", str(root / "clean"), *NEW]) == 0
    old = {n: (root / "old" / n).read_bytes() for n in OUTPUT_NAMES}
    new = {n: (root / "clean" / n).read_bytes() for n in DATA_OUTPUTS}
    assert all(old[n] != new[n] for n in DATA_OUTPUTS)  # so a mix would show
    child = root / "child.py"
    child.write_text(CHILD)
    return {"pair": pair, "old_dir": root / "old", "old": old, "new": new, "child": child}


def _state(out: Path, runs: dict) -> str:
    """'old', 'new' or 'publishing' (no run.json, journal there); fails on anything else."""
    names = sorted(p.name for p in out.iterdir())
    assert set(names) <= {*OUTPUT_NAMES, STAGING_DIR}, names  # no temporary file outside staging
    files = {n: (out / n).read_bytes() for n in OUTPUT_NAMES if (out / n).exists()}
    for n, data in files.items():  # never a partial file under a final name
        if n != RUN_MANIFEST:
            assert data in (runs["old"][n], runs["new"][n]), n
    pending = publish.pending_publishes(out)
    if RUN_MANIFEST not in files:
        assert pending, "no run.json and no publish journal: the folder lost its outputs"
        return "publishing"
    assert len(files) == len(OUTPUT_NAMES)
    if files[RUN_MANIFEST] == runs["old"][RUN_MANIFEST]:
        assert files == runs["old"] and not pending
        return "old"
    assert {n: files[n] for n in DATA_OUTPUTS} == runs["new"]
    return "new"


@pytest.mark.parametrize(("stage", "nth"), KILLS, ids=[f"{s}-{n}" for s, n in KILLS])
def test_a_run_killed_at_any_stage_leaves_old_or_new_outputs_and_reruns_identically(
        runs, tmp_path, stage, nth) -> None:
    out = tmp_path / "out"
    shutil.copytree(runs["old_dir"], out)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(runs["child"]), stage, str(nth), *runs["pair"],
                           "--out", str(out), *NEW], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == -9, proc.stderr[-2000:]  # killed where the hook says
    state = _state(out, runs)
    expected = {"publish-1": "old", "publish-6": "publishing", "cleanup-1": "new"}
    assert state == expected.get(f"{stage}-{nth}", "publishing" if stage == "publish" else "old")

    if state == "publishing":  # what any microchange command does first in that folder
        assert publish.complete_publish(out, keep="none of them")
        assert _state(out, runs) == "new" and not (out / STAGING_DIR).exists()
    assert main(["detect", *runs["pair"], "--out", str(out), *NEW]) == 0
    assert {n: (out / n).read_bytes() for n in DATA_OUTPUTS} == runs["new"]
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)  # staging removed


def test_the_next_run_completes_a_publish_cut_short_and_resumes_from_it(runs, tmp_path) -> None:
    """Killed after two renames: the rerun finishes the publish, then reuses the staged run."""
    out = tmp_path / "out"
    shutil.copytree(runs["old_dir"], out)
    subprocess.run([sys.executable, str(runs["child"]), "publish", "3", *runs["pair"],
                    "--out", str(out), *NEW], capture_output=True, timeout=300, check=False)
    assert _state(out, runs) == "publishing"
    assert main(["detect", *runs["pair"], "--out", str(out), *NEW]) == 0
    assert {n: (out / n).read_bytes() for n in DATA_OUTPUTS} == runs["new"]
    resume = json.loads((out / RUN_MANIFEST).read_text())["resume"]
    assert resume["attempt"] == 2 and resume["fit_reused"] and resume["tiles_reused"] == 12


def _disk_full(path: Path, *args, **kwargs) -> None:
    Path(path).write_bytes(b"half a file")
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


@pytest.mark.parametrize("where", ["tile", "mosaic"])
def test_a_full_disk_is_one_clear_message_and_the_rerun_resumes(
        runs, tmp_path, monkeypatch, capsys, where) -> None:
    out = tmp_path / "out"
    shutil.copytree(runs["old_dir"], out)
    if where == "tile":  # the 4th tile's mask, written in full under its temporary name
        real = Path.replace

        def replace(self, target):
            if Path(target).name == "mask_000003.tif":
                raise OSError(errno.ENOSPC, "No space left on device", str(self))
            return real(self, target)

        monkeypatch.setattr(Path, "replace", replace)
    else:
        monkeypatch.setattr(finalise, "assemble_cog", lambda parts, grid, dst, **kw:
                            _disk_full(dst))
    code = main(["detect", *runs["pair"], "--out", str(out), *NEW])
    err = capsys.readouterr().err
    assert code == 1
    assert "no space left on the disk of the output folder" in err and str(out) in err
    assert "free some space there or give another --out" in err and "resumes" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert {n: (out / n).read_bytes() for n in OUTPUT_NAMES} == runs["old"]  # untouched
    (staging,) = (out / STAGING_DIR).iterdir()  # kept to resume, without temporary files
    assert not [p for p in staging.rglob("*") if p.name.endswith(".tmp")]
    assert not list((staging / publish.STAGED_DIR).glob("*"))
    monkeypatch.undo()
    assert main(["detect", *runs["pair"], "--out", str(out), *NEW]) == 0
    assert {n: (out / n).read_bytes() for n in DATA_OUTPUTS} == runs["new"]
    resume = json.loads((out / RUN_MANIFEST).read_text())["resume"]
    assert resume["attempt"] == 2 and resume["fit_reused"]


def test_permission_denied_on_the_output_folder_exits_2_with_the_fix(
        runs, tmp_path, monkeypatch, capsys) -> None:
    """Injected (tests may run as root, for whom a read-only folder is writable)."""
    out = tmp_path / "out"
    shutil.copytree(runs["old_dir"], out)

    def denied(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(finalise, "write_tiles_table", denied)
    code = main(["detect", *runs["pair"], "--out", str(out), *NEW])
    err = capsys.readouterr().err
    assert code == 2
    assert f"the output folder {str(out)!r} is not writable" in err
    assert "give an --out you can write to, or make it writable" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)  # staging removed too
    assert {n: (out / n).read_bytes() for n in OUTPUT_NAMES} == runs["old"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders: the "
                    "injected test above covers the message")
def test_a_read_only_output_folder_exits_2(runs, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    shutil.copytree(runs["old_dir"], out)
    out.chmod(0o555)
    try:
        code = main(["detect", *runs["pair"], "--out", str(out), *NEW])
    finally:
        out.chmod(0o755)
    err = capsys.readouterr().err
    assert code == 2 and "is not writable" in err and str(out) in err
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)


def test_a_crash_inside_the_library_keeps_the_old_outputs_and_no_temporary_file(
        runs, tmp_path, monkeypatch) -> None:
    """An exception (not a kill) while the COGs are made: the partial files are removed."""
    out = tmp_path / "out"
    shutil.copytree(runs["old_dir"], out)
    monkeypatch.setattr(finalise, "write_changes_table", lambda path, *a: (
        Path(path).write_bytes(b"partial"), 1 / 0))
    with pytest.raises(ZeroDivisionError):
        run_detection(*runs["pair"], out, DetectConfig(method="cva", tile_size=32), threads=1)
    assert {n: (out / n).read_bytes() for n in OUTPUT_NAMES} == runs["old"]
    (staging,) = (out / STAGING_DIR).iterdir()
    assert not list((staging / publish.STAGED_DIR).iterdir())


def test_a_rename_that_fails_is_completed_by_a_retry_of_the_finalise_task(
        runs, tmp_path, monkeypatch) -> None:
    """An I/O error (not a kill) in the middle of the publish: the retry publishes all five."""
    out = tmp_path / "out"
    shutil.copytree(runs["old_dir"], out)
    real, calls = publish._move, {"n": 0}

    def flaky(src: Path, dst: Path) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.EIO, "Input/output error", str(dst))
        real(src, dst)

    monkeypatch.setattr(publish, "_move", flaky)
    with pytest.raises(OSError, match="Input/output error"):
        run_detection(*runs["pair"], out, DetectConfig(method="cva", tile_size=32), threads=1)
    assert _state(out, runs) == "publishing"
    monkeypatch.setattr(publish, "_move", real)
    (staging,) = (out / STAGING_DIR).iterdir()
    # the task's retry completes the publish before it rewrites the staged files, so a
    # failure while rewriting them cannot put half a COG into the pending publish
    monkeypatch.setattr(finalise, "assemble_cog", lambda parts, grid, dst, **kw:
                        _disk_full(dst))
    with pytest.raises(OSError, match="no space left"):
        finalise.finalise_detection(staging / "plan.json")
    assert _state(out, runs) == "new"
    monkeypatch.undo()
    finalise.finalise_detection(staging / "plan.json")  # the next retry
    assert _state(out, runs) == "new"
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_NAMES)
