"""Folders and globs of single-band files read as one multi-band raster, bands chosen by name.

BEFORE or AFTER may be a folder (``S2/imgs_1``) or a glob (``'S2/imgs_1/*_B*.tif'``) of
single-band files, e.g. the Sentinel-2 ``*_B02.tif`` ... ``*_B12.tif`` of one date. The names in
``--bands B02,B03,B04,B08`` pick the files and their order:

* **Candidates.** A folder: its files whose suffix is a raster format (:data:`RASTER_SUFFIXES`).
  A glob: every file it matches except sidecars (``.aux.xml``, ``.ovr``, ``.hdr`` ...).
* **Matching.** A band name matches a file whose name contains it as a whole token,
  case-insensitively (``B02`` matches ``T31UDQ_B02.tif`` and ``x_B02_10m.jp2``; ``B8`` does not
  match ``_B8A.tif``). Each band must match exactly one file, or a
  :class:`~microchange.errors.BandMismatchError` names the folder, the band, the files seen and
  the fix.
* **Stack.** The files become one VRT on the finest band's grid (:mod:`microchange.io.vrt`);
  every stage re-resolves the same folder to the same stack.

Band names given for a multi-band *file* select its bands by description; band indexes
(``--bands 1,2,3``) select bands of a file, never files of a folder.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from microchange.config import check_bands
from microchange.errors import (
    BandMismatchError,
    RasterReadError,
)
from microchange.io.datasets import open_raster
from microchange.io.vrt import BandSource, build_stack, open_vrt
from microchange.types import PathLike, is_remote

__all__ = (
    "RASTER_SUFFIXES",
    "BandSelection",
    "BandSource",
    "ResolvedInput",
    "band_pattern",
    "build_stack",
    "find_band_files",
    "is_stack_input",
    "resolve_input",
    "split_bands",
)

BandSelection: TypeAlias = tuple[int | str, ...] | None
"""1-based band indexes, or band names, or None for every band of a file."""

RASTER_SUFFIXES = frozenset({
    ".tif", ".tiff", ".jp2", ".j2k", ".vrt", ".img", ".png", ".bmp", ".jpg", ".jpeg", ".dat",
    ".bsq", ".bil", ".bip", ".nc", ".hdf", ".h5", ".rst", ".asc",
})
_SIDECAR_SUFFIXES = (".aux.xml", ".ovr", ".msk", ".hdr", ".xml", ".txt", ".md", ".json", ".prj",
                     ".tfw", ".wld", ".qml", ".sld")
_MAX_LISTED = 15

@dataclass
class ResolvedInput:
    """An input opened as one raster: a file, or a VRT stacking the chosen bands.

    Attributes:
        dataset: The open rasterio dataset (the caller closes it).
        bands: 1-based band indexes to read from ``dataset``; None = all (same band count
            check as for plain files).
        sources: For a stack, the file of each band in band order; None for a plain file.
        xml: The VRT XML of a stack; None for a plain file.
    """

    dataset: Any
    bands: tuple[int, ...] | None
    sources: tuple[BandSource, ...] | None = None
    xml: str | None = None


# -- band selections -------------------------------------------------------------------------
def split_bands(
    bands: BandSelection, *, role: str = "--bands"
) -> tuple[tuple[int, ...] | None, tuple[str, ...] | None]:
    """Split a band selection into indexes or names.

    Args:
        bands: 1-based indexes, band names, or None.
        role: Name used in messages.

    Returns:
        ``(indexes, None)``, ``(None, names)`` or ``(None, None)``.

    Raises:
        ConfigError: If indexes and names are mixed, a name is malformed, or an index is < 1.
    """
    if bands is None:
        return None, None
    check_bands(bands, role=role)
    if isinstance(bands[0], str):
        return None, tuple(str(b) for b in bands)
    return tuple(int(b) for b in bands), None


def band_pattern(name: str) -> re.Pattern[str]:
    """Regex matching band ``name`` as a whole token of a file name (case-insensitive)."""
    return re.compile(rf"(?<![A-Za-z0-9]){re.escape(name)}(?![A-Za-z0-9])", re.IGNORECASE)


# -- folders and globs -----------------------------------------------------------------------
def is_stack_input(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a folder, or a glob pattern that is not an existing file.

    A /vsi path or URL is never one (a ``?`` in a URL's query is not a glob).
    """
    if is_remote(path):
        return False
    p = Path(path)
    if p.is_dir():
        return True
    return not p.exists() and glob.has_magic(str(path))


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(RASTER_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _candidates(path: str | os.PathLike[str], role: str) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir()
                       if f.is_file() and not f.name.startswith(".")
                       and f.suffix.lower() in RASTER_SUFFIXES)
        if not files:
            raise RasterReadError(
                f"{role} folder {str(path)!r} holds no raster file (suffixes "
                f"{', '.join(sorted(RASTER_SUFFIXES))}): give a folder of single-band files, "
                "or a glob such as 'folder/*_B*.tif'"
            )
        return files
    files = sorted(Path(f) for f in glob.glob(str(path))
                   if Path(f).is_file() and not f.lower().endswith(_SIDECAR_SUFFIXES))
    if not files:
        raise RasterReadError(
            f"{role} glob {str(path)!r} matches no raster file: check the pattern (quote it in "
            "the shell so that microchange expands it)"
        )
    return files


def _listing(files: list[Path]) -> str:
    names = [f.name for f in files[:_MAX_LISTED]]
    more = f" ... ({len(files)} files)" if len(files) > _MAX_LISTED else ""
    return ", ".join(names) + more


def _seen_band_names(files: list[Path]) -> list[str]:
    """Tokens of the file names that vary between files: most likely the band names."""
    tokens = [re.split(r"[^A-Za-z0-9]+", _stem(f)) for f in files]
    seen: list[str] = []
    for toks in tokens:
        for t in toks:
            n = sum(t in other for other in tokens)
            if t and n < len(files) and (n == 1 or len(files) == 1) and t not in seen:
                seen.append(t)
    return seen


def find_band_files(
    path: str | os.PathLike[str], names: tuple[str, ...], *, role: str = "input"
) -> list[Path]:
    """The one file of each band name in a folder or glob, in the order of ``names``.

    Args:
        path: Folder or glob of single-band files.
        names: Band names, e.g. ``("B02", "B03")``.
        role: Name used in messages ('BEFORE', 'AFTER').

    Returns:
        One path per name.

    Raises:
        RasterReadError: If the folder or glob holds no raster file.
        BandMismatchError: If a band matches no file or several files.
    """
    files = _candidates(path, role)
    out = []
    for name in names:
        pattern = band_pattern(name)
        hits = [f for f in files if pattern.search(_stem(f))]
        if not hits:
            seen = _seen_band_names(files)
            hint = f" (band names they hold: {', '.join(seen)})" if seen else ""
            raise BandMismatchError(
                f"no file for band {name!r} in {role} {str(path)!r}: files seen: "
                f"{_listing(files)}{hint}. A band name must appear in exactly one file name as "
                f"a whole token (e.g. 'T31UDQ_{name}.tif'): fix --bands or the input"
            )
        if len(hits) > 1:
            raise BandMismatchError(
                f"band {name!r} matches {len(hits)} files in {role} {str(path)!r}: "
                f"{_listing(hits)}. Keep one file per band in the folder, or give a glob that "
                f"selects one of them (e.g. {str(Path(path) / '*_10m.jp2')!r})"
            )
        out.append(hits[0])
    return out


def _bands_by_description(path: str | os.PathLike[str], names: tuple[str, ...],
                          role: str) -> list[tuple[str, PathLike, int]]:
    with open_raster(path, role=role) as ds:
        descriptions = [d or "" for d in ds.descriptions]
    out: list[tuple[str, PathLike, int]] = []
    for name in names:
        hits = [i for i, d in enumerate(descriptions, start=1)
                if d.strip().lower() == name.lower()]
        if len(hits) != 1:
            what = "no band" if not hits else f"{len(hits)} bands"
            raise BandMismatchError(
                f"{what} of {role} {str(path)!r} is described as {name!r} (descriptions: "
                f"{descriptions!r}): a band name selects a band of a multi-band file by its "
                "description, or a file of a folder/glob by its file name; give a folder of "
                "single-band files, or select bands by index (e.g. --bands 1,2,3)"
            )
        out.append((name, path, hits[0]))  # a local path is resolved by build_stack
    return out


def resolve_input(
    path: str | os.PathLike[str],
    bands: BandSelection,
    *,
    role: str = "input",
    resolution: float | None = None,
) -> ResolvedInput:
    """Open BEFORE or AFTER: a raster file, or a folder/glob of single-band files stacked by name.

    Args:
        path: A raster file, a folder, or a glob (e.g. ``'S2/imgs_1/*_B*.tif'``).
        bands: 1-based indexes (files only), band names (folders, globs, or files whose bands
            carry descriptions), or None (files only: every band).
        role: Name used in messages ('BEFORE', 'AFTER').
        resolution: Pixel size of a stack in CRS units; None = that of its finest band.

    Returns:
        The open dataset with the band indexes to read and, for a stack, each band's file.

    Raises:
        ConfigError: If ``bands`` mixes indexes and names.
        RasterReadError: If a file is missing or unreadable, or a folder/glob holds no raster.
        BandMismatchError: If a folder is given without band names, or a band name matches no
            file or several.
        GridMismatchError: If the bands of a stack cannot be put on one grid.
    """
    indexes, names = split_bands(bands)
    label = str(path)
    stack = is_stack_input(path)
    if stack:
        if names is None:
            seen = _seen_band_names(_candidates(path, role))
            example = ",".join(seen[:4]) if seen else "B02,B03,B04"
            given = "" if indexes is None else (
                f" (band indexes {list(indexes)} select bands of a multi-band file, not files)")
            raise BandMismatchError(
                f"{role} {label!r} is a folder/glob of single-band files: name the bands to "
                f"stack, in order, e.g. --bands {example}{given}"
                + (f"; band names seen: {', '.join(seen)}" if seen else "")
            )
        files = find_band_files(path, names, role=role)
        sources: list[tuple[str, PathLike, int]] = [
            (n, f, 1) for n, f in zip(names, files, strict=True)]
    elif names is not None:
        sources = _bands_by_description(path, names, role)
    else:
        return ResolvedInput(open_raster(path, role=role), indexes)
    xml, records = build_stack(sources, role=role, label=label, resolution=resolution,
                               single=stack)
    dataset = open_vrt(xml, role, label)
    return ResolvedInput(dataset, tuple(range(1, len(records) + 1)), records, xml)
