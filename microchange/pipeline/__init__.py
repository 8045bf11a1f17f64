"""The stages of one detection run, each a plain function that passes paths, not arrays.

:func:`plan_detection` -> :func:`fit_detection` -> :func:`score_tiles` (any number of calls, in
any process) -> :func:`finalise_detection`. :func:`run_detection` chains them in one process;
the Prefect flow ``detect-changes`` runs each stage as a task. Both give identical outputs.

Every stage keeps its state in ``OUT/.microchange-staging/<run_id>/``: the plan, the fitted
detector, and one part file per tile (:mod:`~microchange.pipeline.records`).
"""

from microchange.pipeline.finalise import finalise_detection
from microchange.pipeline.fit import fit_detection, prepared_sample
from microchange.pipeline.plan import plan_detection
from microchange.pipeline.run import discard_run, run_detection
from microchange.pipeline.score import score_tiles, tile_batches

__all__ = (
    "discard_run",
    "finalise_detection",
    "fit_detection",
    "plan_detection",
    "prepared_sample",
    "run_detection",
    "score_tiles",
    "tile_batches",
)
