"""Command line: ``microchange detect | train | evaluate | demo | methods`` (also ``python -m microchange``).

A thin layer: it parses options into a :class:`~microchange.config.DetectConfig` and runs the same
stage functions as the Prefect flow (``--prefect`` runs the flow itself). Exit codes: 0 success,
2 bad input (one message naming the file or value and the fix, no traceback), 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from microchange.config import DetectConfig, PreprocessConfig
from microchange.denoise import DENOISERS
from microchange.detector import SCORERS, method_names
from microchange.errors import InputError
from microchange.features.devices import PRECISIONS
from microchange.radiometry import RADIOMETRIC_METHODS

__all__ = ("main",)

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2


class _Progress:
    """Tile progress on stderr: a live counter on a terminal, a line per 10% otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.last_decile = -1

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        rate = done / max(time.perf_counter() - self.t0, 1e-9)
        text = f"scoring tiles {done}/{total} ({rate:.1f} tiles/s)"
        if self.tty:
            end = "\n" if done == total else ""
            print(f"\r{text}", end=end, file=sys.stderr, flush=True)
        elif total >= 10 and (decile := done * 10 // total) != self.last_decile:
            self.last_decile = decile
            print(text, file=sys.stderr, flush=True)


def _parse_bands(text: str) -> tuple[int | str, ...]:
    from microchange.io.stacks import parse_bands

    try:
        return parse_bands(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid --bands {text!r}: {exc}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number: use e.g. 2")
    return value


def _parse_classes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid --exclude-classes {text!r}: give class codes separated by commas, "
            "e.g. --exclude-classes 3,8,9,10"
        ) from None


_MASK_FLAGS = ("before_mask", "after_mask", "before_classes", "after_classes",
               "exclude_classes", "invert_masks")


def _config_from_args(args: argparse.Namespace) -> DetectConfig:
    base: dict[str, Any] = {}
    if args.config:
        path = Path(args.config)
        try:
            base = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read --config {str(path)!r} ({exc}): give a JSON file "
                             "with DetectConfig fields") from exc
    for key in ("sensor", "method", "scorer", "threshold", "tile_size", "bands", "sample_pixels",
                "seed"):
        value = getattr(args, key)
        if value is not None:
            base[key] = value
    pre_flags = {"smoothing_sigma": args.smoothing_sigma, "log_transform": args.log_transform,
                 "radiometric": args.radiometric, "speckle_window": args.speckle_window,
                 "denoise": args.denoise, "coregister_cell": args.coregister_cell}
    if any(v is not None for v in pre_flags.values()):
        sensor = base.get("sensor", "optical")
        pre = dict(base.get("preprocess") or DetectConfig(sensor=sensor).resolved_preprocess()
                   .model_dump())
        pre.update({k: v for k, v in pre_flags.items() if v is not None})
        base["preprocess"] = PreprocessConfig(**pre).model_dump()
    post_flags = {"min_region_px": args.min_region_px, "min_region_m2": args.min_region_m2,
                  "opening_radius": args.opening, "closing_radius": args.closing}
    if any(v is not None for v in post_flags.values()):
        sensor = base.get("sensor", "optical")
        post = dict(base.get("postprocess") or DetectConfig(sensor=sensor).resolved_postprocess()
                    .model_dump())
        post.update({k: v for k, v in post_flags.items() if v is not None})
        base["postprocess"] = post
    deep = dict(base.get("deep") or {})
    for key in ("device", "precision", "backbone", "layers", "weights", "model", "objective",
                "epochs"):
        value = getattr(args, key, None)
        if value is not None:
            deep[key] = value
    if deep:
        base["deep"] = deep
    masks = dict(base.get("masks") or {})
    for key in _MASK_FLAGS:
        value = getattr(args, key, None)
        if value is not None:
            masks["invert" if key == "invert_masks" else key] = value
    if masks:
        base["masks"] = masks
    return DetectConfig.model_validate(base)


def _summary_line(summary: dict[str, Any], seconds: float) -> str:
    c = summary["counts"]
    area = c.get("changed_area_m2")
    area_txt = f", {area / 1e4:.2f} ha" if area is not None else ""
    return (f"changed {c['changed_px']:,} px ({100 * c['changed_fraction']:.3f}%{area_txt}) "
            f"in {c['regions']:,} regions; {c['tiles']} tiles ({c['tiles_changed']} with change); "
            f"threshold {summary['threshold']['method']}={summary['threshold']['value']:.4g}; "
            f"{seconds:.1f} s")


def _add_detect_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", help=f"change detection method: {', '.join(method_names())} "
                   "(default: the sensor's, cva for optical, cva with the density scorer for "
                   "sar)")
    p.add_argument("--scorer", choices=SCORERS,
                   help="replace the method's scorer (all fitted on the global sample)")
    p.add_argument("--sensor", choices=("optical", "sar"),
                   help="sensor family whose defaults apply (default optical)")
    p.add_argument("--threshold", help="auto (Otsu where the scores show evidence of change, "
                   "else a 1e-4 false-alarm bound), otsu, kittler-illingworth, kmeans, fpr:X "
                   "(false-alarm rate, e.g. fpr:0.001) or value:X (default: the method's own)")
    p.add_argument("--tile-size", type=int, dest="tile_size",
                   help="tile side in pixels (default 512); results do not depend on it")
    p.add_argument("--bands", type=_parse_bands,
                   help="bands to use, in order: 1-based indexes of a multi-band file (1,2,3,4) "
                        "or names matched as a whole token in the file names of a folder/glob "
                        "input (B02,B03,B04,B08; stacked on the finest band's grid)")
    p.add_argument("--before-mask", dest="before_mask",
                   help="valid-data mask raster of BEFORE: nonzero = valid (any grid)")
    p.add_argument("--after-mask", dest="after_mask",
                   help="valid-data mask raster of AFTER: nonzero = valid (any grid)")
    p.add_argument("--invert-masks", action="store_true", default=None, dest="invert_masks",
                   help="the --before/--after-mask rasters mark EXCLUDED pixels (1 = cloud)")
    p.add_argument("--before-classes", dest="before_classes",
                   help="class raster of BEFORE, e.g. Sentinel-2 SCL (any grid)")
    p.add_argument("--after-classes", dest="after_classes",
                   help="class raster of AFTER, e.g. Sentinel-2 SCL (any grid)")
    p.add_argument("--exclude-classes", type=_parse_classes, dest="exclude_classes",
                   help="class codes excluded by the class rasters (default SCL 0,1,3,8,9,10,11)")
    p.add_argument("--sample-pixels", type=int, dest="sample_pixels",
                   help="pixels in the global fitting sample (default 1e6)")
    p.add_argument("--seed", type=int, help="seed of the global sample (default 0)")
    p.add_argument("--smoothing-sigma", type=float, dest="smoothing_sigma",
                   help="spatial scale of the denoising of both dates in pixels (0 = off; "
                        "sensor default)")
    p.add_argument("--denoise", choices=DENOISERS, default=None,
                   help="denoising filter: gaussian, median (keeps step edges) or bilateral "
                        "(keeps edges above the fitted noise level); sensor default")
    p.add_argument("--coregister-cell", type=int, dest="coregister_cell",
                   help="cell side in px of the local co-registration grid (0 = one global "
                        "shift; default 512)")
    p.add_argument("--log-transform", action=argparse.BooleanOptionalAction, default=None,
                   dest="log_transform", help="work on log values (default: on for sar)")
    p.add_argument("--speckle-window", type=int, dest="speckle_window",
                   help="Lee speckle filter window in px, odd (e.g. 5; 0 = off; sensor default)")
    p.add_argument("--radiometric", choices=RADIOMETRIC_METHODS, default=None,
                   help="relative radiometric normalisation of AFTER onto BEFORE on invariant "
                        "pixels (sensor default)")
    p.add_argument("--min-region-px", type=int, dest="min_region_px",
                   help="minimum mapping unit in pixels (default 1: keep micro-changes)")
    p.add_argument("--min-region-m2", type=float, dest="min_region_m2",
                   help="minimum mapping unit in square metres (georeferenced inputs)")
    p.add_argument("--opening", type=int, help="morphological opening radius in px (0)")
    p.add_argument("--closing", type=int, help="morphological closing radius in px (0)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"),
                   help="where CNN methods run (default auto: CUDA when present)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="arithmetic of CNN methods (default auto: bfloat16 on CUDA and on CPUs "
                   "with bf16 instructions, else float32)")
    p.add_argument("--backbone", help="torchvision backbone of the 'backbone' method: resnet18, "
                   "resnet34, resnet50, vgg16 (default resnet18)")
    p.add_argument("--layers", type=lambda s: tuple(x for x in s.split(",") if x),
                   help="backbone layers to combine, comma-separated (default per backbone)")
    p.add_argument("--weights", help="local file of pretrained backbone weights (default: random)")
    p.add_argument("--model", help="checkpoint from `microchange train` for the 'learned' method "
                   "(default: train on the pair itself)")
    p.add_argument("--objective", help="unsupervised objective of the 'learned' method: cross, "
                   "cross-cal or dae (default cross on optical, cross-cal on SAR)")
    p.add_argument("--epochs", type=int, help="maximum training epochs of the 'learned' method")
    p.add_argument("--config", help="JSON file with DetectConfig fields (flags override it)")
    p.add_argument("--prefect", action="store_true",
                   help="run through the Prefect flow 'detect-changes' (starts a local API if "
                        "PREFECT_API_URL is not set: ~10 s)")
    p.add_argument("--dask", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the flow with tile batches on Dask: a LocalCluster, or the "
                        "scheduler at ADDRESS (e.g. tcp://host:8786); implies --prefect")
    p.add_argument("--workers", type=int, help="LocalCluster worker processes (default: CPUs)")
    p.add_argument("--threads", type=_positive_int,
                   help="threads scoring tiles in this process (runs without --prefect), each with "
                        "its share of the CPUs "
                        "(default: the CPUs available, or OMP_NUM_THREADS); outputs do not "
                        "depend on it")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="microchange",
        description="Find small changes between two rasters of the same place.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    detect = sub.add_parser(
        "detect", help="detect changes between BEFORE and AFTER",
        description="Detect changes between BEFORE and AFTER and write change_mask.tif, "
                    "change_score.tif, tiles.parquet, changes.parquet and run.json to --out.",
    )
    detect.add_argument("before", help="raster at t0 (GeoTIFF/COG, ENVI, PNG, ...), or a folder/"
                        "glob of single-band files with --bands NAMES; defines the output grid")
    detect.add_argument("after", help="raster (or folder/glob) at t1; resampled onto BEFORE's "
                        "grid if needed")
    detect.add_argument("--out", required=True, help="output folder")
    _add_detect_options(detect)
    demo = sub.add_parser(
        "demo", help="run the whole pipeline on a synthetic scene",
        description="Generate a synthetic scene with known small changes, run the "
                    "detect-changes flow on it and report accuracy against the truth.",
    )
    demo.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    demo.add_argument("--size", type=int, default=1024, help="scene side in pixels (1024)")
    demo.add_argument("--seed", type=int, default=0, help="scene seed (0)")
    demo.add_argument("--no-prefect", action="store_true",
                      help="run the stages directly instead of through the Prefect flow")
    evaluate = sub.add_parser(
        "evaluate", help="score a detection run against a ground truth",
        description="Score OUT_DIR (the --out folder of `microchange detect`) against a truth "
                    "raster on the same pixel grid; write OUT_DIR/metrics.json and "
                    "OUT_DIR/report.html.",
    )
    evaluate.add_argument("out_dir", metavar="OUT_DIR", help="folder of a finished detection run")
    evaluate.add_argument("--truth", required=True, metavar="GT",
                          help="ground-truth raster (any GDAL format), same size as the mask")
    evaluate.add_argument("--changed-values", type=int, nargs="+", default=[255],
                          dest="changed_values", metavar="V",
                          help="truth values meaning changed (default 255)")
    evaluate.add_argument("--ignore-values", type=int, nargs="*", default=[],
                          dest="ignore_values", metavar="V",
                          help="truth values excluded from scoring (unknown class)")
    evaluate.add_argument("--unchanged-values", type=int, nargs="+", default=None,
                          dest="unchanged_values", metavar="V",
                          help="truth values meaning unchanged (sparse truth: other values are "
                               "not scored); default every value not changed or ignored")
    evaluate.add_argument("--truth-threshold", type=float, default=None, dest="truth_threshold",
                          metavar="N", help="changed = truth > N (lossy JPEG masks), instead "
                                            "of --changed-values")
    evaluate.add_argument("--no-report", action="store_true", dest="no_report",
                          help="write metrics.json only, no report.html")
    sub.add_parser("methods", help="list the available methods")
    _add_train_parser(sub)
    return parser


def _add_train_parser(sub: Any) -> None:
    train = sub.add_parser(
        "train", help="train the 'learned' feature extractor on a pair (unsupervised)",
        description="Train the 'learned' method's CNN on BEFORE/AFTER themselves (no labels) and "
                    "write a checkpoint for `microchange detect --method learned --model CKPT`, "
                    "plus a loss-curve PNG next to it.",
    )
    train.add_argument("before", help="raster at t0 (GeoTIFF/COG, ENVI, PNG, ...)")
    train.add_argument("after", help="raster at t1; resampled onto BEFORE's grid if needed")
    train.add_argument("--pair", nargs=2, action="append", default=[],
                       metavar=("BEFORE", "AFTER"), dest="pairs",
                       help="another pair of the same sensor to train on (repeatable): each is "
                            "co-registered, preprocessed and standardised on its own")
    train.add_argument("--out", required=True, metavar="CKPT",
                       help="checkpoint file to write, e.g. model.ckpt")
    train.add_argument("--sensor", choices=("optical", "sar"),
                       help="sensor family whose defaults apply (default optical)")
    train.add_argument("--objective", help="unsupervised objective: cross (cross-prediction), "
                       "cross-cal (cross-prediction with calibrated residuals) or dae (denoising "
                       "autoencoder); default per sensor family (cross optical, cross-cal SAR)")
    train.add_argument("--epochs", type=int, help="maximum training epochs (default 30)")
    train.add_argument("--patience", type=int,
                       help="stop after this many epochs without improvement (default 3)")
    train.add_argument("--bands", type=_parse_bands, help="1-based bands to use, e.g. 1,2,3,4")
    train.add_argument("--device", choices=("auto", "cpu", "cuda"),
                       help="where the network trains (default auto: CUDA when present)")
    train.add_argument("--seed", type=int, help="seed of the sample and the weights (default 0)")
    train.add_argument("--sample-pixels", type=int, dest="sample_pixels",
                       help="pixels in the global training sample (default 1e6)")
    train.add_argument("--prefect", action="store_true",
                       help="run through the Prefect flow 'train-feature-extractor'")
    train.add_argument("-q", "--quiet", action="store_true", help="no per-epoch progress")


def _more_pairs(summary: dict[str, Any]) -> str:
    n = int(summary.get("pairs", 1))
    return f" (first of {n} pairs)" if n > 1 else ""


def _cmd_train(args: argparse.Namespace) -> int:
    deep = {k: getattr(args, k) for k in ("device", "objective", "epochs", "patience")
            if getattr(args, k) is not None}
    base: dict[str, Any] = {"method": "learned", "deep": deep}
    for key in ("sensor", "bands", "seed", "sample_pixels"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    config = DetectConfig.model_validate(base)
    logger = logging.getLogger("microchange")
    saved = (logger.level, logger.propagate)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    if not args.quiet:  # per-epoch losses are logged at INFO
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    t0 = time.perf_counter()
    try:
        if args.prefect:
            from flows.train import train_feature_extractor  # Prefect only when asked for

            summary = train_feature_extractor(before=args.before, after=args.after,
                                              out=args.out, config=config,
                                              more_pairs=[tuple(p) for p in args.pairs])
        else:
            from microchange.training import train_extractor

            summary = train_extractor(args.before, args.after, args.out, config,
                                      more_pairs=[tuple(p) for p in args.pairs])
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
    print(f"checkpoint: {summary['checkpoint']}")
    print(f"loss curve: {summary['loss_curve']}")
    print(f"learned/{summary['objective']}: {summary['epochs']} epochs, held-out loss "
          f"{summary['best_loss']:.4g}, {summary['bands']} bands, {summary['sample_pixels']:,} "
          f"sample px{_more_pairs(summary)}, {summary['device']}; "
          f"{time.perf_counter() - t0:.1f} s")
    return EXIT_OK


def _run(config: DetectConfig, before: str, after: str, out: str, *, use_prefect: bool,
         quiet: bool, dask: str | None = None, workers: int | None = None,
         threads: int | None = None) -> dict[str, Any]:
    if dask is not None:
        from flows.detect import detect_changes_on_dask  # Prefect and Dask only when asked for

        run = detect_changes_on_dask(dask or None, workers)
        return run(before=before, after=after, out=out, config=config)
    if use_prefect:
        from flows.detect import detect_changes  # Prefect only when asked for

        return detect_changes(before=before, after=after, out=out, config=config)
    from microchange.pipeline import run_detection

    return run_detection(before, after, out, config, threads=threads,
                         progress=_Progress(not quiet))


def _cmd_detect(args: argparse.Namespace) -> int:
    config = _config_from_args(args)
    t0 = time.perf_counter()
    summary = _run(config, args.before, args.after, args.out, use_prefect=args.prefect,
                   quiet=args.quiet, dask=args.dask, workers=args.workers,
                   threads=args.threads)
    print(f"outputs in {summary['out']}")
    print(_summary_line(summary, time.perf_counter() - t0))
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from microchange.evaluation import evaluate_run
    from microchange.report import write_report
    from microchange.synthetic import make_scene, write_scene

    t0 = time.perf_counter()
    out = Path(args.out)
    inputs = out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    scene = make_scene(height=args.size, width=args.size, seed=args.seed)
    paths = write_scene(scene, inputs)
    print(f"synthetic scene {args.size}x{args.size} px, {scene.before.shape[0]} bands, "
          f"{len(scene.changes)} implanted changes -> {inputs}")
    summary = _run(DetectConfig(), str(paths["before"]), str(paths["after"]), str(out),
                   use_prefect=not args.no_prefect, quiet=False)
    metrics = evaluate_run(out, paths["truth"], changed_values=(1,))
    report = write_report(out, metrics)
    print(f"outputs in {summary['out']}: " + ", ".join(summary["outputs"]))
    print(_summary_line(summary, time.perf_counter() - t0))
    print(f"against the implanted truth: {_metrics_line(metrics)}")
    print(f"report: {report}")
    return EXIT_OK


def _metrics_line(m: dict[str, Any]) -> str:
    def auc(key: str) -> str:
        return "n/a" if m[key] is None else f"{m[key]:.3f}"

    obj = m["object_recall"]
    sizes = " ".join(f"{name} {c['n_detected']}/{c['n_objects']}"
                     for name, c in obj["by_size"].items())
    return (f"precision {m['precision']:.3f}, recall {m['recall']:.3f}, F1 {m['f1']:.3f}, "
            f"IoU {m['iou']:.3f}, kappa {m['kappa']:.3f}, PR-AUC {auc('pr_auc')}, "
            f"ROC-AUC {auc('roc_auc')}; objects {obj['n_detected']}/{obj['n_objects']} "
            f"({sizes})")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from microchange.evaluation import METRICS_NAME, evaluate_run
    from microchange.report import write_report

    out = Path(args.out_dir)
    if not out.is_dir():
        raise InputError(f"OUT_DIR {str(out)!r} is not a folder: give the --out folder of "
                         "`microchange detect BEFORE AFTER --out DIR` (run it first)")
    metrics = evaluate_run(out, args.truth, changed_values=args.changed_values,
                           ignore_values=args.ignore_values,
                           unchanged_values=args.unchanged_values,
                           truth_threshold=args.truth_threshold)
    print(_metrics_line(metrics))
    print(f"metrics: {out / METRICS_NAME}")
    if not args.no_report:
        print(f"report: {write_report(out, metrics)}")
    return EXIT_OK


def _cmd_methods(_: argparse.Namespace) -> int:
    for name in method_names():
        print(name)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``microchange`` console script.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit code.
    """
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("MICROCHANGE_LOG_LEVEL", "WARNING"),
                        format="%(levelname)s %(name)s: %(message)s")
    commands = {"detect": _cmd_detect, "evaluate": _cmd_evaluate, "demo": _cmd_demo,
                "methods": _cmd_methods, "train": _cmd_train}
    try:
        return commands[args.command](args)
    except InputError as exc:
        print(f"microchange: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']} (got {e.get('input')!r})"
                 for e in exc.errors()]
        print("microchange: error: invalid parameters:\n" + "\n".join(lines), file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("microchange: interrupted; no output was replaced", file=sys.stderr)
        return 130
    except Exception as exc:  # last resort: say what failed, exit 1
        if os.environ.get("MICROCHANGE_DEBUG"):
            raise
        print(f"microchange: failed: {type(exc).__name__}: {exc} "
              "(set MICROCHANGE_DEBUG=1 for a traceback)", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
