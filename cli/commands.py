"""What each ``microchange`` subcommand does, and who runs it (``--runner``).

``local`` runs the library's stage functions in this process; ``prefect`` runs the same stages
as the Prefect flow (``detect-changes``, ``train-feature-extractor``, ``evaluate-changes``);
``dask`` runs them here with the tile work on a Dask cluster (no Prefect). Each concurrency
option applies where it has a meaning and is an error elsewhere: ``--threads`` (threads of this process, or
tasks at once in a Prefect run), ``--workers`` (processes of a Dask LocalCluster),
``--scheduler`` (an existing Dask cluster), ``--batch-tiles`` (tiles per CNN batch and task).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from microchange.cli.options import config_from_args, describe_choices
from microchange.config import DetectConfig, Method, ScorerName, choices
from microchange.errors import ConfigError, InputError, InputNotFoundError
from microchange.types import METRICS_NAME

__all__ = ("COMMANDS", "add_runner_options")

Command = Callable[[argparse.ArgumentParser, argparse.Namespace], int]


def add_runner_options(p: argparse.ArgumentParser, *, runners: Sequence[str], default: str,
                       threads: bool = True) -> None:
    """``--runner`` (and the concurrency options of detect) and ``--quiet``."""
    g = p.add_argument_group("running")
    g.add_argument("--runner", choices=runners, default=default,
                   help=f"who runs the stages: {describe_choices(list(runners))} "
                        f"(default {default}); prefect starts a local API unless "
                        "PREFECT_API_URL is set (~10 s)")
    if threads:
        g.add_argument("--threads", type=int, default=None, metavar="N",
                       help="threads scoring tiles in this process (--runner local), or tile "
                            "tasks at once (--runner prefect); default: the CPUs available; "
                            "outputs do not depend on it")
        g.add_argument("--workers", type=int, default=None, metavar="N",
                       help="worker processes of the Dask LocalCluster (--runner dask; default "
                            "one per CPU)")
        g.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="existing Dask scheduler to run on (--runner dask), e.g. "
                            "tcp://host:8786; default: a LocalCluster for the run")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress output")


def _check_runner(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Each concurrency option only where it applies (argparse exit 2 otherwise)."""
    runner = args.runner
    for name in ("threads", "workers"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            parser.error(f"--{name} {value}: give a positive whole number, e.g. 2")
    if getattr(args, "threads", None) is not None and runner == "dask":
        parser.error("--threads applies to --runner local or prefect; with --runner dask the "
                     "workers run one tile batch each: size the cluster with --workers")
    if getattr(args, "workers", None) is not None and runner != "dask":
        parser.error(f"--workers applies to --runner dask, not {runner}: use --threads")
    if getattr(args, "scheduler", None) is not None and runner != "dask":
        parser.error(f"--scheduler applies to --runner dask, not {runner}: add --runner dask")
    if getattr(args, "workers", None) is not None and getattr(args, "scheduler", None):
        parser.error("--workers sizes a LocalCluster; with --scheduler the workers of that "
                     "cluster are used: drop --workers")


def _check_device(args: argparse.Namespace, config: DetectConfig | None = None) -> None:
    """``--device cuda`` (flag or --config) needs a CUDA device here, whatever the method.

    Checked in this process unless the work runs on an existing Dask cluster (``--scheduler``),
    whose workers may have the GPU this machine lacks.

    Raises:
        ConfigError: If CUDA is asked for and torch sees no CUDA device.
    """
    asked = getattr(args, "device", None) or (config.deep.device if config else None)
    if not asked or not str(asked).startswith("cuda") or getattr(args, "scheduler", None):
        return
    from microchange.features.devices import cuda_available

    if not cuda_available():
        raise ConfigError(f"--device {asked}: no CUDA GPU is available here (torch sees no CUDA "
                          "device; check the driver and CUDA_VISIBLE_DEVICES): use --device cpu "
                          "or --device auto")


class _NoInputTraceback(logging.Filter):
    """A console log record of a failure on bad input keeps its message, not its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], InputError):
            record.exc_info, record.exc_text = None, None
        return True


@contextmanager
def _flow_console() -> Iterator[None]:
    """While a flow runs here: Prefect's console shows no traceback for bad input.

    Prefect logs a failed task or flow run with its traceback; the command prints the error's
    message once and exits 2. The run's logs in the Prefect API keep the traceback (their
    handlers see the record before the console's).
    """
    handlers = list(logging.getLogger().handlers)
    quiet = _NoInputTraceback()
    for h in handlers:
        h.addFilter(quiet)
    try:
        yield
    finally:
        for h in handlers:
            h.removeFilter(quiet)


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
            print(f"\r{text}", end="\n" if done == total else "", file=sys.stderr, flush=True)
        elif total >= 10 and (decile := done * 10 // total) != self.last_decile:
            self.last_decile = decile
            print(text, file=sys.stderr, flush=True)


def _summary_line(summary: dict[str, Any], seconds: float) -> str:
    c = summary["counts"]
    area = c.get("changed_area_m2")
    area_txt = f", {area / 1e4:.2f} ha" if area is not None else ""
    found = (f"changed {c['changed_px']:,} px ({100 * c['changed_fraction']:.3f}%{area_txt}) "
             f"in {c['regions']:,} regions" if c["changed_px"] else
             "no change found (0 px changed)")
    return (f"{found}; {c['tiles']} tiles ({c['tiles_changed']} with change); "
            f"threshold {summary['threshold']['method']}={summary['threshold']['value']:.4g}; "
            f"{seconds:.1f} s")


def _run_detection(args: argparse.Namespace, config: DetectConfig, before: str, after: str,
                   out: str) -> dict[str, Any]:
    if args.runner in ("local", "dask"):
        from microchange.pipeline import run_detection

        if args.runner == "local":
            return run_detection(before, after, out, config,
                                 threads=getattr(args, "threads", None),
                                 progress=_Progress(not args.quiet))
        from microchange.flows.runners import dask_client

        with dask_client(args.scheduler, args.workers) as client:
            return run_detection(before, after, out, config, progress=_Progress(not args.quiet),
                                 client=client)
    from microchange.flows.detect import detect_changes

    if getattr(args, "threads", None):
        from prefect.task_runners import ThreadPoolTaskRunner

        flow = detect_changes.with_options(
            task_runner=ThreadPoolTaskRunner(max_workers=args.threads))
    else:
        flow = detect_changes
    with _flow_console():
        result: dict[str, Any] = flow(before=before, after=after, out=out, config=config)
    return result


def _cmd_detect(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    _check_runner(parser, args)
    _check_device(args)
    config = config_from_args(args)
    _check_device(args, config)
    t0 = time.perf_counter()
    summary = _run_detection(args, config, args.before, args.after, args.out)
    print(f"outputs in {summary['out']}")
    print(_summary_line(summary, time.perf_counter() - t0))
    return 0


@contextmanager
def _epoch_log(quiet: bool) -> Iterator[None]:
    """Per-epoch losses (logged at INFO) on stderr, unless quiet."""
    logger = logging.getLogger("microchange")
    saved = (logger.level, logger.propagate)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    if not quiet:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _training_method(doc: dict[str, Any]) -> None:
    if doc.get("method") not in (None, "learned"):
        raise ConfigError(f"method={doc['method']!r} (from --config): training is for the "
                          "'learned' method only: set it to 'learned' or leave it out")
    doc["method"] = "learned"


def _cmd_train(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    _check_runner(parser, args)
    _check_device(args)
    config = config_from_args(args, validate=_training_method)
    _check_device(args, config)
    pairs = [(b, a) for b, a in args.pairs]
    t0 = time.perf_counter()
    with _epoch_log(args.quiet):
        if args.runner == "prefect":
            from microchange.flows.train import train_feature_extractor

            with _flow_console():
                summary = train_feature_extractor(before=args.before, after=args.after,
                                                  out=args.out, config=config, more_pairs=pairs)
        else:
            from microchange.training import train_extractor

            summary = train_extractor(args.before, args.after, args.out, config,
                                      more_pairs=pairs)
    n = int(summary.get("pairs", 1))
    more = f" (first of {n} pairs)" if n > 1 else ""
    print(f"checkpoint: {summary['checkpoint']}")
    print(f"loss curve: {summary['loss_curve']}")
    print(f"learned/{summary['objective']}: {summary['epochs']} epochs, held-out loss "
          f"{summary['best_loss']:.4g}, {summary['bands']} bands, {summary['sample_pixels']:,} "
          f"sample px{more}, {summary['device']}; {time.perf_counter() - t0:.1f} s")
    return 0


def _metrics_line(m: dict[str, Any]) -> str:
    def auc(key: str) -> str:
        return "n/a" if m.get(key) is None else f"{m[key]:.3f}"

    obj = m["object_recall"]
    sizes = " ".join(f"{name} {c['n_detected']}/{c['n_objects']}"
                     for name, c in obj["by_size"].items())
    return (f"precision {m['precision']:.3f}, recall {m['recall']:.3f}, F1 {m['f1']:.3f}, "
            f"IoU {m['iou']:.3f}, kappa {m['kappa']:.3f}, PR-AUC {auc('pr_auc')}, "
            f"ROC-AUC {auc('roc_auc')}; objects {obj['n_detected']}/{obj['n_objects']} "
            f"({sizes})")


def _evaluate(args: argparse.Namespace, out: Path, truth: str, *, changed_values: list[int],
              ignore_values: list[int], unchanged_values: list[int] | None,
              truth_threshold: float | None, report: bool) -> dict[str, Any]:
    """Metrics (and the report path under 'report' when written), by the chosen runner."""
    if args.runner == "prefect":
        from microchange.flows.evaluate import evaluate_changes

        with _flow_console():
            result: dict[str, Any] = evaluate_changes(
                out=str(out), truth=truth, changed_values=changed_values,
                ignore_values=ignore_values, unchanged_values=unchanged_values,
                truth_threshold=truth_threshold, report=report)
        return result
    from microchange.evaluation import evaluate_run, write_report

    metrics = evaluate_run(out, truth, changed_values=changed_values,
                           ignore_values=ignore_values, unchanged_values=unchanged_values,
                           truth_threshold=truth_threshold)
    if report:
        metrics["report"] = str(write_report(out, metrics))
    return metrics


def _cmd_evaluate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    out = Path(args.out_dir)
    if not out.is_dir():
        raise InputNotFoundError(f"OUT_DIR {str(out)!r} is not a folder: give the --out folder "
                                 "of `microchange detect BEFORE AFTER --out DIR` (run it first)")
    metrics = _evaluate(args, out, args.truth, changed_values=args.changed_values,
                        ignore_values=args.ignore_values,
                        unchanged_values=args.unchanged_values,
                        truth_threshold=args.truth_threshold, report=args.report)
    print(_metrics_line(metrics))
    print(f"metrics: {out / METRICS_NAME}")
    if metrics.get("report"):
        print(f"report: {metrics['report']}")
    return 0


def _cmd_demo(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from microchange.synthetic import make_scene, write_scene

    _check_runner(parser, args)
    t0 = time.perf_counter()
    out = Path(args.out)
    inputs = out / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    scene = make_scene(height=args.scene_size, width=args.scene_size, seed=args.scene_seed)
    paths = write_scene(scene, inputs)
    print(f"synthetic scene {args.scene_size}x{args.scene_size} px, {scene.before.shape[0]} "
          f"bands, {len(scene.changes)} implanted changes -> {inputs}")
    summary = _run_detection(args, DetectConfig(), str(paths["before"]), str(paths["after"]),
                             str(out))
    metrics = _evaluate(args, out, str(paths["truth"]), changed_values=[1], ignore_values=[],
                        unchanged_values=None, truth_threshold=None, report=True)
    print(f"outputs in {summary['out']}: " + ", ".join(summary["outputs"]))
    print(_summary_line(summary, time.perf_counter() - t0))
    print(f"against the implanted truth: {_metrics_line(metrics)}")
    print(f"report: {metrics['report']}")
    return 0


def _cmd_methods(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    print("methods: " + ", ".join(choices(Method)))
    print("scorers: " + ", ".join(choices(ScorerName)))
    return 0


COMMANDS: dict[str, Command] = {"detect": _cmd_detect, "train": _cmd_train,
                                "evaluate": _cmd_evaluate, "demo": _cmd_demo,
                                "methods": _cmd_methods}
