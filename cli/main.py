"""The ``microchange`` command: ``detect | train | evaluate | demo | methods``.

A thin layer over the library and the flows: flags become a
:class:`~microchange.config.DetectConfig` (:mod:`microchange.cli.options`), and ``--runner``
chooses who runs the stages: this process (``local``), the Prefect flow (``prefect``) or this
process with the tile work on a Dask cluster, without Prefect (``dask``). Exit codes: 0
success, 2 bad input (one message naming the file or value and the fix, no traceback), 1
anything else.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from microchange.cli.commands import COMMANDS, add_runner_options
from microchange.cli.options import add_config_options, flag
from microchange.errors import InputError, OutputError

__all__ = ("build_parser", "main")

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2

TRAIN_EXCLUDES = ("method", "scorer", "threshold", "tile_size", "batch_tiles", "min_region_px",
                  "min_region_m2", "opening_radius", "closing_radius", "precision", "backbone",
                  "layers", "weights", "model")
"""DetectConfig fields that do not apply to training (no flag on ``train``)."""


class _DetectOnly(argparse.Action):
    """A detect option given to ``train``: an error that says where it applies."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        where = {"--model": "`microchange detect --method learned --model CKPT` (train writes "
                            "the checkpoint to --out)",
                 "--weights": "`microchange detect --method backbone`",
                 "--backbone": "`microchange detect --method backbone`",
                 "--layers": "`microchange detect --method backbone`",
                 "--precision": "`microchange detect` (inference)"}.get(
            str(option_string), "`microchange detect` (scoring and mapping the changes)")
        parser.error(f"{option_string} applies to {where}, not to train: drop it here and give "
                     "it to detect")


def _detect_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "detect", help="detect changes between BEFORE and AFTER",
        description="Detect changes between BEFORE and AFTER and write change_mask.tif, "
                    "change_score.tif, tiles.parquet, changes.parquet and run.json to --out. "
                    "Options left out take the sensor family's defaults.")
    p.add_argument("before", help="raster at t0 (GeoTIFF/COG, ENVI, PNG, ...), or a folder/glob "
                   "of single-band files with --bands NAMES; defines the output grid")
    p.add_argument("after", help="raster (or folder/glob) at t1; resampled onto BEFORE's grid "
                   "if needed")
    p.add_argument("--out", required=True, help="output folder")
    add_config_options(p)
    add_runner_options(p, runners=("local", "prefect", "dask"), default="local")


def _train_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "train", help="train the 'learned' feature extractor on a pair (unsupervised)",
        description="Train the 'learned' method's CNN on BEFORE/AFTER themselves (no labels) "
                    "and write a checkpoint for `microchange detect --method learned --model "
                    "CKPT`, plus a loss-curve PNG next to it. Preprocessing options (and "
                    "--config) are those of detect: use the same ones for both.")
    p.add_argument("before", help="raster at t0 (GeoTIFF/COG, ENVI, PNG, ...)")
    p.add_argument("after", help="raster at t1; resampled onto BEFORE's grid if needed")
    p.add_argument("--pair", nargs=2, action="append", default=[], metavar=("BEFORE", "AFTER"),
                   dest="pairs", help="another pair of the same sensor to train on "
                   "(repeatable): each is co-registered, preprocessed and standardised on its own")
    p.add_argument("--out", required=True, metavar="CKPT",
                   help="checkpoint file to write, e.g. model.ckpt")
    add_config_options(p, exclude=TRAIN_EXCLUDES)
    for name in TRAIN_EXCLUDES:  # refused with a message rather than "unrecognized arguments"
        p.add_argument(flag(name), dest=f"_not_{name}", action=_DetectOnly, nargs="?",
                       help=argparse.SUPPRESS)
    add_runner_options(p, runners=("local", "prefect"), default="local", threads=False)


def _evaluate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "evaluate", help="score a detection run against a ground truth",
        description="Score OUT_DIR (the --out folder of `microchange detect`) against a truth "
                    "raster on the same pixel grid; write OUT_DIR/metrics.json and "
                    "OUT_DIR/report.html.")
    p.add_argument("out_dir", metavar="OUT_DIR", help="folder of a finished detection run")
    p.add_argument("--truth", required=True, metavar="GT",
                   help="ground-truth raster (any GDAL format), same size as the mask")
    p.add_argument("--changed-values", type=int, nargs="+", default=[255], metavar="V",
                   help="truth values meaning changed (default 255)")
    p.add_argument("--ignore-values", type=int, nargs="*", default=[], metavar="V",
                   help="truth values excluded from scoring (unknown class)")
    p.add_argument("--unchanged-values", type=int, nargs="+", default=None, metavar="V",
                   help="truth values meaning unchanged (sparse truth: other values are not "
                        "scored); default every value not changed or ignored")
    p.add_argument("--truth-threshold", type=float, default=None, metavar="N",
                   help="changed = truth > N (lossy JPEG masks), instead of --changed-values")
    p.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                   help="write report.html with its figures (default on)")
    add_runner_options(p, runners=("local", "prefect"), default="local", threads=False)


def _demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo", help="run the whole pipeline on a synthetic scene",
        description="Generate a synthetic scene with known small changes, run the "
                    "detect-changes flow on it with the default options and score it against "
                    "the truth.")
    p.add_argument("--out", default="out/demo", help="output folder (default out/demo)")
    p.add_argument("--scene-size", type=int, default=1024, metavar="N",
                   help="side of the synthetic scene in pixels (default 1024)")
    p.add_argument("--scene-seed", type=int, default=0, metavar="N",
                   help="seed of the synthetic scene (default 0)")
    add_runner_options(p, runners=("local", "prefect"), default="prefect", threads=False)


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``microchange`` command and its subcommands (the docs print it)."""
    parser = argparse.ArgumentParser(
        prog="microchange", description="Find small changes between two rasters of the same "
        "place.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _detect_parser(sub)
    _train_parser(sub)
    _evaluate_parser(sub)
    _demo_parser(sub)
    sub.add_parser("methods", help="list the methods and scorers",
                   description="List the change detection methods and the scorers that can "
                               "replace a method's own.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``microchange`` console script.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The process exit code.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("MICROCHANGE_LOG_LEVEL", "WARNING"),
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(COMMANDS[args.command](parser, args))
    except InputError as exc:
        print(f"microchange: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OutputError as exc:  # a full disk: the message names the folder and the fix
        print(f"microchange: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("microchange: interrupted; no output was replaced", file=sys.stderr)
        return 130
    except Exception as exc:  # last resort: say what failed, exit 1
        if os.environ.get("MICROCHANGE_DEBUG"):
            raise
        print(f"microchange: failed: {type(exc).__name__}: {exc} "
              "(set MICROCHANGE_DEBUG=1 for a traceback)", file=sys.stderr)
        return EXIT_FAILURE
