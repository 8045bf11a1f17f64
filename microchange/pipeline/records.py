"""The typed documents the stages hand each other through the staging folder.

``plan.json`` (:class:`Plan`), ``fit.json`` (:class:`FitRecord`) and one ``tile_N.json`` per
scored tile (:class:`TileStats`), all under ``OUT/.microchange-staging/<run_id>/``, written
atomically. A stage in any process reads them back with the same types.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr

from microchange.config import DetectConfig
from microchange.detector import Detector, build_detector
from microchange.io.manifest import write_text_atomic
from microchange.io.pair import PairReader
from microchange.preprocess.alignment import CoregistrationRecord
from microchange.tiling import Tile
from microchange.types import Grid, PathLike

__all__ = ("FitRecord", "GridRecord", "Plan", "ResumeRecord", "ThresholdRecord", "TileStats")

PartKind = Literal["score", "mask", "kept", "tile"]


class _Record(BaseModel):
    # NaN stays NaN (e.g. the score statistics of a tile without a valid pixel)
    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="constants")

    def save(self, path: Path) -> None:
        """Write the record as JSON (readers never see a half-written file)."""
        write_text_atomic(path, self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: PathLike) -> Any:
        """Read a record written by :meth:`save`."""
        return cls.model_validate_json(Path(path).read_bytes())


class GridRecord(_Record):
    """The output grid and the area of one of its pixels (None without a CRS)."""

    height: int
    width: int
    transform: tuple[float, float, float, float, float, float]
    crs_wkt: str | None
    pixel_area_m2: float | None

    def grid(self) -> Grid:
        """As a :class:`~microchange.types.Grid`."""
        return Grid(self.height, self.width, self.transform, self.crs_wkt)


class Plan(_Record):
    """What stage 1 decided: inputs, grid, co-registration, tiles (``plan.json``)."""

    run_id: str
    created: str
    before: str
    after: str
    out: str
    config: DetectConfig
    bands: list[int]
    grid: GridRecord
    alignment: str
    coregistration: CoregistrationRecord
    warnings: list[str]
    halo: int
    post_halo: int
    min_region_px: int
    tiles: list[tuple[int, int, int, int, int]]
    inputs: dict[str, Any]
    timings: dict[str, float]
    _path: Path = PrivateAttr(default=Path("plan.json"))

    @classmethod
    def load(cls, path: PathLike) -> Plan:
        """Read ``plan.json``; its folder is the run's staging folder."""
        plan: Plan = super().load(path)
        plan._path = Path(path)
        return plan

    @property
    def path(self) -> Path:
        """The plan file."""
        return self._path

    @property
    def staging(self) -> Path:
        """The run's staging folder (that of the plan file)."""
        return self._path.parent

    @property
    def output_grid(self) -> Grid:
        """The output grid."""
        return self.grid.grid()

    def tile_list(self) -> list[Tile]:
        """The planned tiles with their halo."""
        return [Tile(*t, halo=self.halo) for t in self.tiles]

    def reader(self) -> PairReader:
        """A reader of the pair with the planned bands, masks and co-registration."""
        return PairReader(self.before, self.after, bands=self.config.bands,
                          after_warp=self.coregistration.warp(), masks=self.config.masks)

    def detector(self) -> Detector:
        """The detector with the state fitted by stage 2."""
        det = build_detector(self.config)
        det.load_state(self.staging / "model.npz")
        return det

    def part(self, kind: PartKind, tile_id: int) -> Path:
        """Part file of one tile: its score or mask core (GeoTIFF) or its statistics (JSON).

        ``kept`` is the mask after the minimum mapping unit (written at the end, only for tiles
        that lost a region); ``mask`` is never rewritten, so finishing again gives the same.
        """
        suffix = "json" if kind == "tile" else "tif"
        return self.staging / "parts" / f"{kind}_{tile_id:06d}.{suffix}"

    @property
    def fit_path(self) -> Path:
        """``fit.json`` of this run."""
        return self.staging / "fit.json"

    @property
    def resume_path(self) -> Path:
        """``resume.json``: present when this run resumed an interrupted one."""
        return self.staging / "resume.json"


class ResumeRecord(_Record):
    """What a run found done by an interrupted run with the same inputs and parameters."""

    attempt: int
    fit_reused: bool
    tiles_reused: int


class ThresholdRecord(_Record):
    """A fitted threshold (:class:`~microchange.scoring.thresholds.Threshold`)."""

    method: str
    value: float
    n_sample: int
    detail: dict[str, Any] | None


class FitRecord(_Record):
    """What stage 2 fitted besides the detector state (``fit.json``)."""

    threshold: ThresholdRecord
    sample: dict[str, Any]
    fitted_preprocess: dict[str, Any]
    features: dict[str, Any]
    fit_s: float


class TileStats(_Record):
    """Statistics of one scored tile (a row of ``tiles.parquet``)."""

    n_valid: int
    n_changed: int
    changed_fraction: float
    score_mean: float
    score_p95: float
    score_max: float
