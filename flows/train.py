"""Flow ``train-feature-extractor``: one BEFORE/AFTER pair -> a 'learned' extractor checkpoint."""

from typing import Any

from prefect import flow

from microchange.config import DetectConfig
from microchange.io.outdir import check_output_path
from microchange.tasks.train import train_extractor


@flow(name="train-feature-extractor", log_prints=True)
def train_feature_extractor(
    before: str,
    after: str,
    out: str,
    config: DetectConfig | None = None,
    more_pairs: list[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """Train the CNN of the 'learned' method on a pair itself, without labels.

    Writes the checkpoint ``out`` (weights, architecture, band count, normalisation statistics,
    objective, training-data fingerprint, versions, loss) and a loss-curve PNG next to it. Use it
    with ``microchange detect --method learned --model OUT`` or the ``detect-changes`` flow with
    ``config.deep.model = OUT``.

    Args:
        before: Path of the raster at t0 (GeoTIFF/COG, ENVI, PNG...); defines the pixel grid.
        after: Path of the raster at t1; resampled onto BEFORE's grid if its grid differs.
        out: Checkpoint file to write, e.g. ``models/field42.ckpt``; inside
            ``$MICROCHANGE_OUTPUT_ROOT`` when the worker sets it.
        config: Parameters with ``method`` 'learned' (or left out): sensor family, bands,
            seed, sample size, preprocessing, masks and ``deep`` (objective, epochs, patience,
            device); None trains with the optical defaults.
        more_pairs: More [before, after] pairs of the same sensor and bands to train on; each
            is co-registered, preprocessed and standardised on its own.

    Returns:
        Summary with the checkpoint and loss-curve paths, objective, epochs, losses and timings.
    """
    check_output_path(out)
    summary: dict[str, Any] = train_extractor(before, after, out, config or DetectConfig(),
                                              more_pairs=more_pairs or ())
    print(f"checkpoint {summary['checkpoint']}: {summary['objective']}, {summary['epochs']} "
          f"epochs, held-out loss {summary['best_loss']:.4g}")
    return summary
