"""Tasks of the detect-changes-catalog flow (see microchange.catalog)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from microchange import catalog
from microchange.catalog import CatalogLoad, PairResult, PairSpec
from microchange.config import DetectConfig
from microchange.tasks.retry import IO_RETRIES


@task(name="read-catalog", **IO_RETRIES)
def read_catalog(path: str) -> CatalogLoad:
    """Read and validate the catalog file. See microchange.catalog.load_catalog."""
    return catalog.load_catalog(path)


@task(name="check-pair", **IO_RETRIES)
def pair_is_complete(pair: PairSpec, out: str, config: DetectConfig) -> bool:
    """Whether the pair's outputs are complete for these inputs and parameters."""
    return catalog.pair_is_complete(Path(out) / pair.folder, pair.before.path, pair.after.path,
                                    config.model_dump(mode="json"))


@task(name="write-catalog-outputs", **IO_RETRIES)
def write_catalog_outputs(out: str, results: list[PairResult]) -> dict[str, str]:
    """Write the summary GeoParquet and the STAC catalog of the change maps."""
    summary = catalog.write_catalog_summary(Path(out) / "summary.parquet", results)
    stac = catalog.write_stac_catalog(out, results)
    return {"summary": str(summary), "stac": str(stac)}
