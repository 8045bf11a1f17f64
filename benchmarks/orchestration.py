"""What orchestration costs and gains: Dask vs the plain command line, workers, resume.

Usage: ``.venv/bin/python benchmarks/orchestration.py [--large 8192] [--small 4096] [--work DIR]``

Every figure is the wall time of one ``microchange detect`` command in a fresh process, from
start to exit (imports, Dask's worker start-up and every stage included: what a user waits for),
with the default method, on the synthetic pairs of ``benchmarks/throughput.py`` (cached):

* **overhead** at ``--large`` px a side: ``--runner local`` (the plain CLI) and ``--runner dask
  --workers 2`` (the stages in the command's process, the sample and the tiles on a two-worker
  LocalCluster, no Prefect API), side by side; the ratio is dask / local;
* **workers** at ``--small``: ``--runner dask`` with 1 and 2 workers; the speed-up is 1 / 2;
* **resume** at ``--small``: a local run killed with SIGKILL when half of its tiles are finished,
  then run again; the rerun's time against an uninterrupted run's, and the tiles and fit it
  reused (``run.json`` ``resume``).

Reports, never asserts; writes ``benchmarks/results/orchestration.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results import write_result
from benchmarks.throughput import ensure_pair

CLI = [str(Path(sys.executable).parent / "microchange"), "detect"]
STAGING = ".microchange-staging"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)  # as a user's shell
    env.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="prefect-home-"))
    env.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    return env


def _detect(before: Path, after: Path, out: Path, *extra: str) -> float:
    """Wall time of one detect command (fresh process); raises if it fails."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run([*CLI, str(before), str(after), "--out", str(out), "-q", *extra],
                   env=_env(), check=True)
    return time.perf_counter() - t0


def _killed_at_half(before: Path, after: Path, out: Path) -> tuple[float, int, int]:
    """Start a local run, SIGKILL it once half of its tiles are done; (seconds, done, total)."""
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([*CLI, str(before), str(after), "--out", str(out), "-q"], env=_env())
    total = 0
    try:
        while proc.poll() is None:
            plans = list(out.glob(f"{STAGING}/*/plan.json"))
            if plans and not total:
                total = len(json.loads(plans[0].read_text())["tiles"])
            done = len(list(out.glob(f"{STAGING}/*/parts/tile_*.json")))
            if total and done >= total / 2:
                break
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = len(list(out.glob(f"{STAGING}/*/parts/tile_*.json")))
    return time.perf_counter() - t0, done, total


def _row(what: str, size: int, runner: str, seconds: float, **extra: Any) -> dict[str, Any]:
    row = {"measure": what, "size": f"{size}^2", "runner": runner, "seconds": round(seconds, 1),
           "MPx/s": round(size * size / seconds / 1e6, 2)}
    row.update(extra)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    """Measure and record the three comparisons."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=int, default=8192)
    parser.add_argument("--small", type=int, default=4096)
    parser.add_argument("--work", type=Path, default=Path("out/bench/orchestration"))
    args = parser.parse_args()
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []

    big_b, big_a = ensure_pair(args.large)
    local = _detect(big_b, big_a, work / "large-local")
    rows.append(_row("overhead", args.large, "local (plain CLI)", local))
    dask2 = _detect(big_b, big_a, work / "large-dask", "--runner", "dask", "--workers", "2")
    rows.append(_row("overhead", args.large, "dask, 2 workers", dask2,
                     ratio=f"{dask2 / local:.2f}x the plain CLI"))

    b, a = ensure_pair(args.small)
    one = _detect(b, a, work / "small-dask1", "--runner", "dask", "--workers", "1")
    rows.append(_row("workers", args.small, "dask, 1 worker", one))
    two = _detect(b, a, work / "small-dask2", "--runner", "dask", "--workers", "2")
    rows.append(_row("workers", args.small, "dask, 2 workers", two,
                     ratio=f"speed-up {one / two:.2f}x over 1 worker"))

    full = _detect(b, a, work / "small-local")
    rows.append(_row("resume", args.small, "local, uninterrupted", full))
    killed, done, total = _killed_at_half(b, a, work / "small-resume")
    rows.append(_row("resume", args.small, "local, killed at half", killed,
                     ratio=f"{done} of {total} tiles finished"))
    resumed = _detect_resume(b, a, work / "small-resume")
    reuse = json.loads((work / "small-resume" / "run.json").read_text())["resume"]
    same = all((work / "small-resume" / n).read_bytes() == (work / "small-local" / n).read_bytes()
               for n in ("change_mask.tif", "change_score.tif"))
    rows.append(_row("resume", args.small, "local, rerun after the kill", resumed,
                     ratio=f"saves {full - resumed:.1f} s ({100 * (1 - resumed / full):.0f} %) "
                           f"vs uninterrupted; fit reused: {reuse['fit_reused']}, tiles reused: "
                           f"{reuse['tiles_reused']}; rasters identical: {same}"))
    write_result("orchestration", "Orchestration: Dask against the plain command line, workers, "
                 "resume", [{
                     "caption": "Wall time of one `microchange detect` (fresh process, default "
                                "method, start to exit)",
                     "columns": ["measure", "size", "runner", "seconds", "MPx/s", "ratio"],
                     "rows": rows}],
                 notes=f"{os.cpu_count()} CPUs. 'dask' runs the detect-changes flow on a "
                       "temporary Prefect API with its tile batches on a LocalCluster.")


def _detect_resume(before: Path, after: Path, out: Path) -> float:
    """Wall time of the rerun into the folder of a killed run (its staging is kept)."""
    t0 = time.perf_counter()
    subprocess.run([*CLI, str(before), str(after), "--out", str(out), "-q"], env=_env(),
                   check=True)
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
