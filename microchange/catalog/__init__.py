"""A catalog of areas of interest watched over time: areas, their acquisitions, their pairs.

:func:`load_catalog` reads a small YAML/JSON catalog or a STAC ItemCollection; a broken entry is
reported in :attr:`CatalogLoad.errors` and the other areas still load. :func:`catalog_pairs`
gives the date pairs of an area, each with its output folder ``<area>/<before>_<after>``, and
:func:`pair_is_complete` tells whether a pair's folder already holds the outputs of a finished
detection with the same inputs and parameters. The summary and STAC writers live in
:mod:`microchange.io.catalog` and are re-exported here.
"""

from microchange.catalog.load import (
    AREA_NAME_PATTERN,
    Acquisition,
    Area,
    CatalogLoad,
    EntryError,
    PairSpec,
    is_remote,
    load_catalog,
    pair_folder,
)
from microchange.catalog.pairs import catalog_pairs, pair_config, pair_is_complete, pair_result
from microchange.io.catalog import (
    PairResult,
    PairStatus,
    footprint_lonlat,
    write_catalog_summary,
    write_stac_catalog,
)

__all__ = ("AREA_NAME_PATTERN", "Acquisition", "Area", "CatalogLoad", "EntryError", "PairResult",
           "PairSpec", "PairStatus", "catalog_pairs", "footprint_lonlat", "is_remote",
           "load_catalog", "pair_config", "pair_folder", "pair_is_complete", "pair_result",
           "write_catalog_summary", "write_stac_catalog")
