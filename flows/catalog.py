"""Flow ``detect-changes-catalog``: every new pair of every area of a catalog, once."""

import contextvars
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from microchange.catalog import PairResult, PairSpec, catalog_pairs, pair_config, pair_result
from microchange.config import DetectConfig
from microchange.errors import MicrochangeError
from microchange.flows.detect import detect_changes
from microchange.io.outdir import check_output_path
from microchange.tasks.catalog import pair_is_complete, read_catalog, write_catalog_outputs
from microchange.tasks.publish import publish_table


class CatalogRunError(MicrochangeError):
    """Some pairs or entries of a catalog failed (the others ran; outputs were written)."""


def _detect_pair(pair: PairSpec, out: str, config: DetectConfig) -> PairResult:
    """Detect one pair as a subflow; a failure is recorded, never raised."""
    t0 = time.perf_counter()
    run_id: str | None = None
    try:
        cfg = pair_config(config, pair)
        check_output_path(Path(out) / pair.folder)
        if pair_is_complete(pair, out, cfg):
            return pair_result(pair, out, "skipped")
        state = detect_changes(pair.before.path, pair.after.path, str(Path(out) / pair.folder),
                               cfg, area=pair.area, return_state=True)
        run_id = str(state.state_details.flow_run_id)
        state.result()  # raises the subflow's error
    except Exception as exc:  # noqa: BLE001 - one pair's failure never stops the others
        get_run_logger().error("%s %s -> %s failed: %s", pair.area, pair.before.date,
                               pair.after.date, exc)
        return pair_result(pair, out, "failed", seconds=time.perf_counter() - t0,
                           error=str(exc) or type(exc).__name__,
                           flow_run=run_id)
    return pair_result(pair, out, "done", seconds=time.perf_counter() - t0, flow_run=run_id)


def _table(results: list[PairResult]) -> list[dict[str, Any]]:
    return [{"area": r.area, "before": str(r.before_date), "after": str(r.after_date),
             "status": r.status,
             "changed (ha)": None if r.changed_area_m2 is None else round(r.changed_area_m2 / 1e4,
                                                                           3),
             "changed (%)": None if r.changed_fraction is None else round(
                 100 * r.changed_fraction, 4),
             "regions": r.regions, "seconds": round(r.seconds, 1), "error": r.error or ""}
            for r in results]


@flow(name="detect-changes-catalog", log_prints=True)
def detect_changes_catalog(
    catalog: str,
    out: str,
    config: DetectConfig | None = None,
    pairs_at_once: int = 1,
) -> dict[str, Any]:
    """Detect changes for every pair of acquisitions of every area in a catalog.

    Each area's acquisitions are paired by date (each with the previous one) unless the
    catalog lists its pairs; each pair runs the detect-changes flow as a subflow and writes
    ``out/<area>/<before-date>_<after-date>/``. A pair whose outputs are complete for the same
    inputs and parameters is skipped; a failed pair is retried on the next run; one pair's or
    area's failure never stops the others. Writes ``out/summary.parquet`` (GeoParquet, one row
    per pair) and ``out/catalog.json`` (a STAC catalog of the change maps: a collection per
    area, an item per pair). The run fails at the end, after writing both, if any pair or
    catalog entry failed.

    Args:
        catalog: Catalog file: YAML/JSON (``areas`` with their dated acquisitions) or a STAC
            ItemCollection (area = ``microchange:area`` property or collection).
        out: Output folder of the catalog; inside ``$MICROCHANGE_OUTPUT_ROOT`` when the worker
            sets it (as is every pair's folder).
        config: Detection parameters of every pair (an area's ``config`` in the catalog
            overrides fields); no config runs the optical defaults.
        pairs_at_once: Pairs detected at the same time (each uses every core for its tiles;
            more than 1 helps with remote inputs or many cores).

    Returns:
        Counts of pairs done, skipped and failed, the entry errors and the output paths.
    """
    if pairs_at_once < 1:
        raise MicrochangeError(f"pairs_at_once={pairs_at_once!r}: give 1 or more")
    check_output_path(out)
    loaded = read_catalog(catalog)
    for err in loaded.errors:
        get_run_logger().error("catalog entry skipped: %s", err)
    pairs = [p for area in loaded.areas for p in catalog_pairs(area)]
    base = config or DetectConfig()
    with ThreadPoolExecutor(pairs_at_once, thread_name_prefix="microchange-pair") as pool:
        # each thread runs in a copy of this flow's context: its subflows nest under this run
        futures = [pool.submit(contextvars.copy_context().run, _detect_pair, p, out, base)
                   for p in pairs]
        results = [f.result() for f in futures]
    paths = write_catalog_outputs(out, results)
    counts = {s: sum(r.status == s for r in results) for s in ("done", "skipped", "failed")}
    name = Path(catalog).stem
    publish_table(_table(results), name, f"Pairs of catalog {name} ({counts})")
    print(f"{len(pairs)} pairs: {counts['done']} done, {counts['skipped']} skipped, "
          f"{counts['failed']} failed; summary {paths['summary']}")
    failed = [r for r in results if r.status == "failed"]
    if failed or loaded.errors:
        problems = [f"{r.area} {r.before_date}_{r.after_date}: {r.error}" for r in failed]
        problems += [str(e) for e in loaded.errors]
        raise CatalogRunError(f"{len(problems)} of the catalog's pairs/entries failed (the others "
                              f"ran; see {paths['summary']}): " + " | ".join(problems))
    return {"counts": counts, **paths, "entry_errors": [str(e) for e in loaded.errors]}
