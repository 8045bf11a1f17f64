"""Train the 'learned' feature extractor on a pair (or several) and save it as a checkpoint.

``microchange train`` and the flow ``train-feature-extractor`` call :func:`train_extractor`. It
runs the planning stage and the sample preparation of the detection pipeline on each pair, so
the network is trained on the same global sample (same blocks, seed, co-registration and
preprocessing) as in ``microchange detect --method learned``: ``detect --model CKPT`` on a pair
trained alone gives the outputs of a run that trains on the fly with the same seed. More pairs of
the same sensor (``--pair BEFORE AFTER``) add their own samples, each preprocessed and
standardised on its own, to the training set.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from microchange.config import DetectConfig
from microchange.detector import build_detector
from microchange.errors import ConfigError, InputError, OutputError
from microchange.features import checkpoints
from microchange.features.learned import LearnedFeatures
from microchange.io.outdir import check_output_path
from microchange.pipeline import plan_detection, prepared_sample
from microchange.pipeline.records import Plan
from microchange.tiling import crop_core
from microchange.types import PairArrays, PathLike

__all__ = ("plot_loss_curve", "train_extractor")

log = logging.getLogger("microchange")


def plot_loss_curve(training: dict[str, Any], path: PathLike, *, title: str = "") -> Path:
    """Write the per-epoch loss curve as a PNG (matplotlib Agg, no display needed).

    Args:
        training: Training summary with ``loss_history`` (held-out) and ``train_loss_history``.
        path: PNG to write (under a temporary name, then renamed).
        title: Plot title.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    train = list(training.get("train_loss_history") or [])
    held = list(training.get("loss_history") or [])
    start = 1
    if training.get("initial_loss") is not None:  # epoch 0: before any update
        held, start = [training["initial_loss"], *held], 0
    ax.plot(range(1, len(train) + 1), train, marker="o", ms=3, label="training patches")
    ax.plot(range(start, start + len(held)), held, marker="o", ms=3, label="held-out patches")
    ax.set_xlabel("epoch")
    ax.set_ylabel("masked Huber loss (standardised units)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    dest = Path(path)
    tmp = dest.with_name(f".{dest.stem}.tmp{dest.suffix}")
    fig.savefig(tmp, format="png")
    tmp.replace(dest)
    return dest


def _sample_record(pairs: Sequence[tuple[PathLike, PathLike]], plans: Sequence[Plan],
                   samples: Sequence[Sequence[PairArrays]], cfg: DetectConfig) -> dict[str, Any]:
    """What the checkpoint records of the samples it was trained on."""
    pixels = [sum(int(crop_core(s.valid, s.halo).sum()) for s in group) for group in samples]
    first = plans[0]
    record: dict[str, Any] = {
        "blocks": len(samples[0]), "pixels": pixels[0], "fitted_on": "local", "seed": cfg.seed,
        "sample_pixels": cfg.sample_pixels,
        "coregistration": first.coregistration.model_dump(mode="json"),
        "grid": {"height": first.grid.height, "width": first.grid.width}}
    if len(pairs) > 1:
        record["pairs"] = [
            {"before": str(b), "after": str(a), "pixels": n,
             "grid": {"height": p.grid.height, "width": p.grid.width}}
            for (b, a), n, p in zip(pairs, pixels, plans, strict=True)]
    return record


def _check_training_config(config: DetectConfig, out: Path) -> None:
    if out.is_dir():
        raise InputError(f"--out {str(out)!r} is a folder: give a checkpoint file name, e.g. "
                         f"{str(out / 'model.ckpt')!r}")
    if config.method not in (None, "learned"):
        raise ConfigError(f"method={config.method!r}: training is for the 'learned' method only; "
                          "set method to 'learned' or leave it out")
    if config.deep.model is not None:
        raise ConfigError(f"model={config.deep.model!r} does not apply to training, which writes "
                          "a checkpoint: drop it (use it with `microchange detect --model`)")


@contextmanager
def _work_folder(out: Path) -> Iterator[Path]:
    """A temporary folder next to checkpoint ``out``, removed on exit.

    ``out``'s folder goes too if this made it and nothing was written there (a failed run).

    Raises:
        OutputError: If the folder cannot be created.
    """
    created = not out.parent.exists()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".microchange-train-", dir=out.parent))
    except OSError as exc:
        raise OutputError(f"cannot write next to {str(out)!r} ({exc}): choose a writable "
                          "--out") from exc
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if created and not any(out.parent.iterdir()):
            out.parent.rmdir()


def train_extractor(before: PathLike, after: PathLike, out_ckpt: PathLike,
                    config: DetectConfig,
                    more_pairs: Sequence[tuple[PathLike, PathLike]] = ()) -> dict[str, Any]:
    """Train the 'learned' extractor on BEFORE/AFTER (and more pairs) and save a checkpoint.

    Runs the first stages of a detection on each pair (input checks, co-registration, the
    global sample and its preprocessing) in a temporary staging folder next to the checkpoint,
    so the network sees exactly what ``detect --method learned`` would train on, then trains on
    all the samples.

    Args:
        before: Raster at t0 (any format ``detect`` reads).
        after: Raster at t1; resampled onto BEFORE's grid if needed.
        out_ckpt: Checkpoint file to write (e.g. ``model.ckpt``); a loss-curve PNG is written
            next to it (``model.loss.png``).
        config: Run parameters with method 'learned': ``sensor``, ``bands``, ``seed``,
            ``sample_pixels``, ``preprocess``, ``masks`` and ``deep`` (objective, epochs,
            patience, device) are used; the scoring options are for ``detect``.
        more_pairs: More (before, after) pairs of the same sensor and band count to train on.

    Returns:
        Summary: checkpoint and PNG paths, objective, bands, epochs run, final and best
        held-out loss, device, seconds.

    Raises:
        InputError: If an input or option is bad (unreadable raster, band mismatch, no valid
            pixel, another method, a model given, CUDA asked for without a GPU, --out is a
            folder or outside ``$MICROCHANGE_OUTPUT_ROOT``, pairs with different band counts).
        OutputError: If the checkpoint cannot be written.
    """
    t0 = time.perf_counter()
    out = check_output_path(out_ckpt)
    _check_training_config(config, out)
    config = config.model_copy(update={"method": "learned"})
    extractor = build_detector(config).extractor  # bad objective or device: before any I/O
    if not isinstance(extractor, LearnedFeatures):  # pragma: no cover - registry broken
        raise ConfigError("the 'learned' method does not use LearnedFeatures")
    with _work_folder(out) as work:
        pairs = [(before, after), *more_pairs]
        plans = [Plan.load(plan_detection(b, a, work / f"pair{k}", config))
                 for k, (b, a) in enumerate(pairs)]
        samples = [prepared_sample(p.path) for p in plans]
        extractor.fit(samples[0], more=samples[1:])  # ConfigError (an InputError) on mismatch
        inputs = [f for p in plans for role in ("before", "after")
                  for f in p.inputs[role]["files"]]
        state_dict, meta = extractor.checkpoint_payload(inputs=inputs)
        meta["sample"] = _sample_record(pairs, plans, samples, config)
        checkpoints.save(out, state_dict, meta)
        try:
            png = plot_loss_curve(extractor.training, out.with_suffix(".loss.png"),
                                  title=f"learned/{extractor.objective}: {out.name}")
        except OSError as exc:
            raise OutputError(f"cannot write the loss curve next to {str(out)!r} ({exc}): "
                              "choose a writable --out") from exc
    training = extractor.training
    log.info("trained learned/%s in %d epochs (held-out loss %.4g): %s", extractor.objective,
             training["epochs_run"], training["best_loss"], out)
    return {
        "checkpoint": str(out),
        "loss_curve": str(png),
        "objective": extractor.objective,
        "architecture": extractor.arch.describe(),
        "bands": meta["bands"],
        "sample_pixels": meta["sample"]["pixels"],
        "pairs": len(pairs),
        "epochs": training["epochs_run"],
        "final_loss": training["final_loss"],
        "best_loss": training["best_loss"],
        "device": training["device"],
        "timings": {"train_s": training["seconds"],
                    "total_s": round(time.perf_counter() - t0, 3)},
    }
