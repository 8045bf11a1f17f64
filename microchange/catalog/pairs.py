"""Pairs of a catalog: which to compare, with which parameters, and which are already done."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from microchange.catalog.load import Area, PairSpec, is_remote
from microchange.config import DetectConfig
from microchange.errors import ConfigError
from microchange.io.catalog import PairResult, PairStatus, pair_result_from_run
from microchange.io.manifest import read_run_manifest
from microchange.types import OUTPUT_NAMES, PathLike

__all__ = ("catalog_pairs", "pair_config", "pair_is_complete", "pair_result")


def catalog_pairs(area: Area) -> list[PairSpec]:
    """The pairs of an area: those listed, else each acquisition with the previous one by date."""
    by_date = {a.date: a for a in area.acquisitions}
    dates = sorted(by_date)
    pairs = area.pairs if area.pairs is not None else tuple(itertools.pairwise(dates))
    return [PairSpec(area=area.name, before=by_date[b], after=by_date[a],
                     config=dict(area.config)) for b, a in pairs]


def _file_matches(record: Mapping[str, Any]) -> bool:
    """A file recorded in run.json still on disk with the same size (and mtime if recorded)."""
    path = str(record["path"])
    if is_remote(path):
        return True  # remote: the path alone identifies it
    st = Path(path).stat()
    if st.st_size != int(record["bytes"]):
        return False
    mtime = record.get("mtime")
    return mtime is None or abs(st.st_mtime - float(mtime)) < 1.0


def _input_matches(given: str, record: Mapping[str, Any]) -> bool:
    """An input of the catalog is the one run.json recorded, and its files are unchanged."""
    files = record["files"]
    recorded = {record.get("path"), *(str(f["path"]) for f in files)}
    names = {given, str(Path(given).resolve())} if is_remote(given) else {
        str(Path(given).resolve())}
    return bool(files) and bool(names & recorded) and all(_file_matches(f) for f in files)


def pair_is_complete(out_dir: PathLike, before: str, after: str,
                     parameters: Mapping[str, Any]) -> bool:
    """True when ``out_dir`` holds a finished detection of ``before``/``after`` with ``parameters``.

    All five outputs must be there, run.json's ``parameters`` equal ``parameters`` (pass
    ``DetectConfig.model_dump(mode="json")``) and the input files it recorded still match
    those on disk by resolved path and size (and mtime when recorded; /vsi paths and URLs by
    path only). Anything missing or unreadable gives False.
    """
    folder = Path(out_dir)
    if not all((folder / name).is_file() for name in OUTPUT_NAMES):
        return False
    run = read_run_manifest(folder)
    if not run or run.get("parameters") != dict(parameters):
        return False
    try:
        inputs = run["inputs"]
        masks = inputs.get("masks") or {}
        return (_input_matches(before, inputs["before"]) and _input_matches(after, inputs["after"])
                and all(_file_matches(m) for m in masks.values()))
    except (KeyError, TypeError, ValueError, AttributeError, OSError):
        return False


def pair_result(pair: PairSpec, out_root: PathLike, status: PairStatus, *, seconds: float = 0.0,
                error: str | None = None, flow_run: str | None = None) -> PairResult:
    """The :class:`PairResult` of ``pair`` from its folder under ``out_root`` (its run.json)."""
    return pair_result_from_run(
        Path(out_root) / pair.folder, area=pair.area, before_date=pair.before.date,
        after_date=pair.after.date, before=pair.before.path, after=pair.after.path,
        status=status, seconds=seconds, error=error, flow_run=flow_run)


def pair_config(base: DetectConfig, pair: PairSpec) -> DetectConfig:
    """The detection parameters of a pair: the run's, with its area's overrides on top.

    Raises:
        ConfigError: If an override is not a valid parameter (names the area and the field).
    """
    if not pair.config:
        return base
    try:
        return DetectConfig.model_validate({**base.model_dump(exclude_unset=True),
                                            **pair.config})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"area {pair.area!r}: bad config override ({problems}): fix the "
                          "area's 'config' in the catalog (see microchange detect --help for "
                          "the parameters)") from None
