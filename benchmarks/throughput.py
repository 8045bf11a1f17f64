"""Throughput and peak memory of each method against the I/O floor, for growing raster sizes.

Usage: ``.venv/bin/python benchmarks/throughput.py [--sizes 1024,2048,4096,8192]
[--methods cva,pca-kmeans] [--work DIR]`` (``default`` in ``--methods``: the optical default)

Inputs: synthetic 4-band uint16 pairs of N x N px (:func:`microchange.synthetic.make_scene`),
written once as tiled (256 px), DEFLATE-compressed GeoTIFFs (the defaults of
:func:`~microchange.synthetic.write_scene`) and cached in ``$MICROCHANGE_BENCH_CACHE`` (default
``~/.cache/microchange/bench``). Up to 2048 px a side the scene is made whole (seed 0); larger
pairs repeat the 2048 x 2048 scene 2 x 2 or 4 x 4 times, written window by window (making an
8192^2 scene whole would take ~4 GB). Copies keep the per-pixel content, the share of changed
pixels and the fitted statistics of the 2048^2 pair, so the rows for 2048, 4096 and 8192 differ
only in size; independent scenes per block would not do: each has its own random per-band gain
and offset, which global standardisation turns into whole blocks of "change".

Each measurement runs in a fresh Python process, which reports its own wall time and peak RSS
(``VmHWM`` of ``/proc/self/status``), so the peak is per run and starts from a bare interpreter:

* **pipeline**: :func:`microchange.pipeline.run_detection` with ``DetectConfig(method=m)``
  (defaults: 512-px tiles, optical preprocessing), timed around the call (imports excluded: the
  method's detector is built once before the clock starts, so the lazy import of torch by CNN
  methods, ~1.8 s on 2 cores, is not counted; a command-line run pays it once).
  The peak is also split by stage, without changing the code path: the peak is reset (``5`` into
  ``/proc/self/clear_refs``) and read again from the progress callback, giving *fit* (plan + fit +
  the first batch of tiles), *score* (the other tiles) and *finalise* (COGs, regions, tables).
* **floor**: the I/O the pipeline cannot avoid: read both inputs window by window (512 px, all
  bands, native dtype), write a float32 and a uint8 tiled GTiff (ZSTD level 1, 512 px blocks) and
  copy each to a COG with the options of :func:`microchange.io.cog.assemble_cog` (ZSTD level 1,
  ``NUM_THREADS=ALL_CPUS``, overviews). The float32 band is ``after - before`` of band 1 and the
  mask ``score > 0``, so both compress like real outputs.
* **features** (only methods whose feature extractor is not the plain band z-scores, i.e. CNN
  methods): the bare forward pass, ``extractor.extract_batch`` (else ``extract`` per tile), on
  the same 512-px tiles with their halo in the pipeline's batches, after fitting, with the
  pipeline's parallelism (one batch per CPU thread, torch's threads shared); reading and
  preprocessing are not timed. *train s* is the training on the pair inside the fit stage
  (``run.json`` ``features.training.seconds``).

``--gdal-cache MB`` sets ``GDAL_CACHEMAX`` for every measured run; by default GDAL keeps up to 5 %
of the RAM of decoded blocks, which shows up in the peak RSS of large rasters.

Prints a Markdown table with the ratio pipeline/floor and writes it to ``out/bench/throughput.md``
(and ``.json``), then per method the peak RSS of each size and the ratio of the largest size's
to the smallest's (memory must stay flat as rasters grow). Reports, never asserts. ``regions``
(connected changed regions found) drives the cost of the finalise stage; ``load 1m`` is the
machine's load average when the run ended: timings taken while other work shares the cores are
slower by about load / cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.results import write_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GEN_BLOCK = 2048
FLOOR_TILE = 512
COLUMNS = ("size", "method", "seconds", "MPx/s", "peak RSS MiB", "floor s", "floor MPx/s",
           "floor RSS MiB", "pipeline/floor", "peak fit/score/finalise MiB", "regions",
           "features s", "train s", "pipeline/features", "load 1m")


# -- memory probes ---------------------------------------------------------------------------
def _status_kib(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    m = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(m.group(1)) if m else -1


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _mib(kib: int) -> float:
    return round(kib / 1024, 1)


# -- inputs ----------------------------------------------------------------------------------
def cache_root() -> Path:
    """Folder of the cached input pairs."""
    return Path(os.environ.get("MICROCHANGE_BENCH_CACHE", "~/.cache/microchange/bench")).expanduser()


def _encode(block: Any) -> Any:
    import numpy as np

    return np.clip(np.rint(block.astype(np.float64) * 10000.0), 0, 65535).astype("uint16")


def _write_tiled_pair(size: int, folder: Path) -> None:
    """size^2 px pair made of copies of the GEN_BLOCK^2 scene (seed 0), written block by block."""
    import rasterio
    from rasterio.windows import Window

    from microchange.synthetic import make_scene

    scene = make_scene(height=GEN_BLOCK, width=GEN_BLOCK, bands=4, seed=0)
    blocks = {"before": _encode(scene.before), "after": _encode(scene.after)}
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 4, "dtype": "uint16",
               "crs": scene.crs, "transform": scene.transform, "tiled": True,
               "blockxsize": 256, "blockysize": 256, "compress": "deflate", "predictor": 2,
               "BIGTIFF": "IF_SAFER"}
    del scene
    for name, block in blocks.items():
        tmp = folder / f".{name}.tif.tmp"
        with rasterio.open(tmp, "w", **profile) as dst:
            for r0 in range(0, size, GEN_BLOCK):
                for c0 in range(0, size, GEN_BLOCK):
                    h, w = min(GEN_BLOCK, size - r0), min(GEN_BLOCK, size - c0)
                    dst.write(block[:, :h, :w], window=Window(c0, r0, w, h))
        tmp.replace(folder / f"{name}.tif")


def ensure_pair(size: int) -> tuple[Path, Path]:
    """The cached (before, after) pair of size^2 px, made on first use."""
    folder = cache_root() / f"pair_{size}"
    before, after = folder / "before.tif", folder / "after.tif"
    if before.exists() and after.exists():
        return before, after
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if size <= GEN_BLOCK:
        from microchange.synthetic import make_scene, write_scene

        scene = make_scene(height=size, width=size, bands=4, seed=0)
        tmp = Path(tempfile.mkdtemp(dir=folder))
        paths = write_scene(scene, tmp)
        for k in ("before", "after"):
            paths[k].replace(folder / f"{k}.tif")
        shutil.rmtree(tmp)
    else:
        _write_tiled_pair(size, folder)
    print(f"made {size}^2 pair in {time.perf_counter() - t0:.1f} s under {folder}",
          file=sys.stderr)
    return before, after


# -- children (each in a fresh process) ------------------------------------------------------
def child_pipeline(before: str, after: str, out: str, method: str) -> dict[str, Any]:
    from microchange.config import DetectConfig
    from microchange.detector import build_detector
    from microchange.pipeline import run_detection

    build_detector(DetectConfig(method=method))  # imports the method's modules (torch) untimed

    base = _status_kib("VmRSS")
    can_reset = _reset_peak()
    peaks: dict[str, int] = {}
    phase = ["fit"]

    def _progress(done: int, total: int) -> None:
        if not can_reset:
            return
        if phase[0] == "fit":  # plan + fit + the first batch of tiles are over
            peaks["fit"] = _status_kib("VmHWM")
            _reset_peak()
            phase[0] = "score"
        if done == total:
            peaks["score"] = max(peaks.get("score", 0), _status_kib("VmHWM"))
            _reset_peak()
            phase[0] = "finalise"

    t0 = time.perf_counter()
    summary = run_detection(before, after, out, DetectConfig(method=method), progress=_progress)
    seconds = time.perf_counter() - t0
    peaks[phase[0]] = max(peaks.get(phase[0], 0), _status_kib("VmHWM"))
    stage_peaks = {k: _mib(v) for k, v in peaks.items()}
    run = json.loads((Path(out) / "run.json").read_text())
    return {"seconds": seconds, "peak_kib": max(peaks.values()), "base_kib": base,
            "load_1m": os.getloadavg()[0],
            "stage_peak_mib": stage_peaks if can_reset else {},
            "timings": summary["timings"], "regions": run["counts"]["regions"],
            "changed_fraction": run["counts"]["changed_fraction"],
            "train_s": (run.get("features", {}).get("training") or {}).get("seconds")}


def child_floor(before: str, after: str, out: str) -> dict[str, Any]:
    import numpy as np
    import rasterio
    import rasterio.shutil
    from rasterio.windows import Window

    from microchange.tiling import plan_tiles

    base = _status_kib("VmRSS")
    _reset_peak()
    t0 = time.perf_counter()
    outp = Path(out)
    outp.mkdir(parents=True, exist_ok=True)
    with rasterio.open(before) as b, rasterio.open(after) as a:
        prof = {"driver": "GTiff", "width": b.width, "height": b.height, "count": 1,
                "crs": b.crs, "transform": b.transform, "tiled": True,
                "blockxsize": FLOOR_TILE, "blockysize": FLOOR_TILE, "compress": "zstd",
                "zstd_level": 1, "num_threads": "all_cpus", "BIGTIFF": "IF_SAFER"}
        with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"), \
                rasterio.open(outp / "score.tif", "w", dtype="float32", nodata=float("nan"),
                              **prof) as fs, \
                rasterio.open(outp / "mask.tif", "w", dtype="uint8", nodata=255, **prof) as fm:
            for t in plan_tiles(b.height, b.width, tile_size=FLOOR_TILE):
                w = Window(t.col_off, t.row_off, t.width, t.height)
                xb, xa = b.read(window=w), a.read(window=w)
                score = xa[0].astype(np.float32) - xb[0].astype(np.float32)
                fs.write(score, 1, window=w)
                fm.write((score > 0).astype(np.uint8), 1, window=w)
    t_read_write = time.perf_counter() - t0
    for name, resampling in (("score", "AVERAGE"), ("mask", "NEAREST")):
        with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS", GDAL_CACHEMAX=256):
            rasterio.shutil.copy(str(outp / f"{name}.tif"), str(outp / f"{name}_cog.tif"),
                                 driver="COG", COMPRESS="ZSTD", LEVEL=1, NUM_THREADS="ALL_CPUS",
                                 BLOCKSIZE=512, OVERVIEWS="AUTO",
                                 OVERVIEW_RESAMPLING=resampling, BIGTIFF="IF_SAFER")
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "read_write_s": t_read_write, "cog_s": seconds - t_read_write,
            "peak_kib": _status_kib("VmHWM"), "base_kib": base}


def child_features(before: str, after: str, out: str, method: str) -> dict[str, Any]:
    from microchange.config import DetectConfig
    from microchange.detector import build_detector
    from microchange.features.bands import BandFeatures
    from microchange.features.devices import sharing_cpus
    from microchange.parallel import available_cpus, ordered_map
    from microchange.pipeline import fit_detection, plan_detection
    from microchange.pipeline.records import Plan

    cfg = DetectConfig(method=method)
    if isinstance(build_detector(cfg).extractor, BandFeatures):
        return {"seconds": None}  # no network: the feature floor is the I/O floor
    plan_path = plan_detection(before, after, out, cfg)
    fit_detection(plan_path)
    plan = Plan.load(plan_path)
    det = plan.detector()
    tiles_all = plan.tile_list()
    _reset_peak()
    seconds = 0.0
    batch = max(1, cfg.batch_tiles)
    threads = available_cpus()  # as the pipeline: one batch per thread, torch's threads shared
    batch_fn = getattr(det.extractor, "extract_batch", None)

    def forward(prepared: list[Any]) -> None:
        with sharing_cpus(threads):
            if batch_fn is not None:
                batch_fn(prepared)
            else:
                for p in prepared:
                    det.extractor.extract(p)

    with plan.reader() as pair:
        step = batch * threads
        for start in range(0, len(tiles_all), step):
            tiles = tiles_all[start:start + step]
            prepared = [det.preprocess.apply(pair.read_tile(t)) for t in tiles]
            batches = [prepared[i:i + batch] for i in range(0, len(prepared), batch)]
            t0 = time.perf_counter()
            ordered_map(forward, batches, threads)
            seconds += time.perf_counter() - t0
    return {"seconds": seconds, "peak_kib": _status_kib("VmHWM")}


def _run_child(kind: str, *args: str, gdal_cache: int | None = None) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, *args]
    env = dict(os.environ)
    if gdal_cache is not None:
        env["GDAL_CACHEMAX"] = str(gdal_cache)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} run failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


# -- report ----------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def _method_names(spec: str) -> list[str]:
    """Methods of ``--methods``; ``default`` is the optical family's default method."""
    from microchange.config import DetectConfig

    default = DetectConfig().resolved_method()[0]
    names = [default if m == "default" else m for m in spec.split(",")]
    return list(dict.fromkeys(names))


def memory_table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Peak RSS of each method at each size and the ratio largest size / smallest size."""
    sizes = sorted({r["size"] for r in rows})
    ratio = f"{sizes[-1]}/{sizes[0]}"
    columns = ["method", *(f"{s} MiB" for s in sizes), ratio]
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        peak = {r["size"]: r["peak RSS MiB"] for r in rows if r["method"] == method}
        row: dict[str, Any] = {"method": method, **{f"{s} MiB": peak.get(s) for s in sizes}}
        row[ratio] = (round(peak[sizes[-1]] / peak[sizes[0]], 3)
                      if sizes[0] in peak and sizes[-1] in peak else None)
        out.append(row)
    return {"caption": f"Peak RSS of the whole run against raster size (ratio {ratio})",
            "columns": columns, "rows": out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1024,2048,4096,8192", help="comma-separated sides")
    parser.add_argument("--methods", default="cva,pca-kmeans",
                        help="comma-separated methods ('default': the optical default)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp folder)")
    parser.add_argument("--report", default="out/bench", help="folder of throughput.md/.json")
    parser.add_argument("--gdal-cache", type=int, default=None,
                        help="GDAL_CACHEMAX in MB for every measured run (default: GDAL's own, "
                             "5%% of RAM)")
    parser.add_argument("--no-results", action="store_true",
                        help="do not write benchmarks/results/throughput.json")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("child_args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        fn = {"pipeline": child_pipeline, "floor": child_floor, "features": child_features}
        print(json.dumps(fn[args.child](*args.child_args)))  # type: ignore[operator]
        return 0

    sizes = [int(s) for s in args.sizes.split(",")]
    gc = args.gdal_cache
    methods = _method_names(args.methods)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="mc-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    raw: list[dict[str, Any]] = []
    for size in sizes:
        before, after = ensure_pair(size)
        mpx = size * size / 1e6
        scratch = work / f"floor_{size}"
        floor = _run_child("floor", str(before), str(after), str(scratch), gdal_cache=gc)
        shutil.rmtree(scratch, ignore_errors=True)
        print(f"{size}: floor {floor['seconds']:.1f} s "
              f"(read+write {floor['read_write_s']:.1f}, COG {floor['cog_s']:.1f}), "
              f"peak {_mib(floor['peak_kib'])} MiB", file=sys.stderr)
        for method in methods:
            scratch = work / f"{method}_{size}"
            pipe = _run_child("pipeline", str(before), str(after), str(scratch), method,
                              gdal_cache=gc)
            shutil.rmtree(scratch, ignore_errors=True)
            feat = _run_child("features", str(before), str(after), str(scratch), method,
                              gdal_cache=gc)
            shutil.rmtree(scratch, ignore_errors=True)
            stages = pipe["stage_peak_mib"]
            row = {
                "size": size, "method": method, "seconds": pipe["seconds"],
                "MPx/s": mpx / pipe["seconds"], "peak RSS MiB": _mib(pipe["peak_kib"]),
                "floor s": floor["seconds"], "floor MPx/s": mpx / floor["seconds"],
                "floor RSS MiB": _mib(floor["peak_kib"]),
                "pipeline/floor": pipe["seconds"] / floor["seconds"],
                "peak fit/score/finalise MiB": "/".join(
                    f"{stages[k]:.0f}" if k in stages else "-"
                    for k in ("fit", "score", "finalise")),
                "regions": pipe["regions"],
                "load 1m": pipe["load_1m"],
                "features s": feat["seconds"],
                "train s": pipe["train_s"],
                "pipeline/features": (pipe["seconds"] / feat["seconds"]
                                      if feat["seconds"] else None),
            }
            rows.append(row)
            raw.append({"size": size, "method": method, "pipeline": pipe, "floor": floor,
                        "features": feat})
            print(f"{size} {method}: {pipe['seconds']:.1f} s, peak {row['peak RSS MiB']} MiB "
                  f"(stages {stages}), timings {pipe['timings']}, regions {pipe['regions']}",
                  file=sys.stderr)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |" for r in rows]
    memory = memory_table(rows)
    lines += ["", "| " + " | ".join(memory["columns"]) + " |", "|" + "---|" * len(memory["columns"])]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in memory["columns"]) + " |"
              for r in memory["rows"]]
    table = "\n".join(lines)
    print(table)
    for r in memory["rows"]:
        peaks = ", ".join(f"{c[:-4]}: {_fmt(r[c])}" for c in memory["columns"][1:-1])
        ratio = memory["columns"][-1]
        print(f"{r['method']}: peak RSS MiB {peaks}; {ratio} = {_fmt(r[ratio])}",
              file=sys.stderr)
    report = Path(args.report)
    report.mkdir(parents=True, exist_ok=True)
    (report / "throughput.md").write_text(table + "\n")
    (report / "throughput.json").write_text(json.dumps(raw, indent=1) + "\n")
    if not args.no_results:
        path = write_result(
            "throughput", "Throughput and peak memory against the I/O floor",
            [{"caption": "Synthetic 4-band uint16 pairs of N x N px, 512 px tiles; floor = "
              "reading both inputs and writing both outputs as COGs",
              "columns": list(COLUMNS), "rows": rows}, memory],
            notes="Each run in a fresh process; imports excluded; peak RSS from VmHWM.",
            argv=[sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
        print(f"results: {path}", file=sys.stderr)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
