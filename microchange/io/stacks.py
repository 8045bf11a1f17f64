"""Folders and globs of single-band files read as one multi-band raster, bands chosen by name.

BEFORE or AFTER may be a folder (``S2/imgs_1``) or a glob (``'S2/imgs_1/*_B*.tif'``) of
single-band files, e.g. the Sentinel-2 ``*_B02.tif`` ... ``*_B12.tif`` of one date, whose names
differ per date. The band names given in ``--bands B02,B03,B04,B08`` pick the files and their
order:

* **Candidates.** A folder: the files directly in it whose suffix is a raster format
  (:data:`RASTER_SUFFIXES`). A glob: every file it matches except sidecars (``.aux.xml``,
  ``.ovr``, ``.hdr`` ...).
* **Matching.** A band name matches a file whose name, without its suffix, contains the name
  as a whole token, case-insensitively: the characters next to it must not be letters or
  digits (regex ``(?<![A-Za-z0-9])B02(?![A-Za-z0-9])``). ``B02`` matches ``T31UDQ_B02.tif``,
  ``x_B02_10m.jp2`` and ``B02.tif``; ``B8`` does not match ``_B8A.tif`` and ``B1`` does not
  match ``_B10.tif``. Each band must match exactly one file, otherwise an
  :class:`~microchange.errors.BandMismatchError` names the folder, the band, the files seen and
  the fix.
* **Grid.** The grid of the finest band (smallest pixel area; the first listed one on ties),
  cropped to the area that every band covers; ``resolution=`` picks another pixel size over the
  same area. Bands on another grid are resampled bilinearly by GDAL while windows are read
  (VRT sources with ``resampling="bilinear"``): no raster is ever read whole. The bands of one
  stack must share a CRS.
* **Nodata.** Each band keeps the nodata value of its file. Bilinear resampling ignores nodata
  source pixels (GDAL's masked resampling), so a resampled pixel is nodata only where every
  source pixel under the kernel is.

Band *names* given for a single multi-band file select its bands by description (as written by
``gdal_translate``/rasterio ``set_band_description``), in the given order. Band *indexes*
(``--bands 1,2,3``) keep selecting bands of a multi-band file; they cannot select files of a
folder, and indexes and names cannot be mixed.

The stack is a GDAL VRT held as an XML string (opened with ``rasterio.open(xml)``): no file is
written, and every stage re-resolves the same folder to the same stack.
"""

from __future__ import annotations

import glob
import math
import os
import re
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from microchange.config import check_bands
from microchange.errors import (
    BandMismatchError,
    ConfigError,
    GridMismatchError,
    MissingCRSError,
    NoOverlapError,
    RasterReadError,
)
from microchange.io.datasets import is_georeferenced, open_raster

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
_TOL_PX = 1e-3  # grid coordinates within this fraction of a pixel are taken as equal
_MAX_LISTED = 15

_GDAL_TYPES = {
    "uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
    "int32": "Int32", "uint64": "UInt64", "int64": "Int64", "float32": "Float32",
    "float64": "Float64", "complex64": "CFloat32", "complex128": "CFloat64",
}


@dataclass(frozen=True)
class BandSource:
    """Where one band of a stack comes from.

    Attributes:
        name: Band name as requested (e.g. ``"B02"``).
        path: Absolute path of the file.
        band: 1-based band index in that file.
        width: Columns of the file.
        height: Rows of the file.
        resampled: True when the band is resampled (bilinear) onto the stack's grid.
    """

    name: str
    path: str
    band: int
    width: int
    height: int
    resampled: bool

    def as_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (for run.json)."""
        return {"name": self.name, "file": self.path, "band": self.band,
                "size": [self.height, self.width], "resampled": self.resampled}


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
    try:
        check_bands(bands, role=role)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if isinstance(bands[0], str):
        return None, tuple(str(b) for b in bands)
    return tuple(int(b) for b in bands), None


def band_pattern(name: str) -> re.Pattern[str]:
    """Regex matching band ``name`` as a whole token of a file name (case-insensitive)."""
    return re.compile(rf"(?<![A-Za-z0-9]){re.escape(name)}(?![A-Za-z0-9])", re.IGNORECASE)


# -- folders and globs -----------------------------------------------------------------------
def is_stack_input(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a folder, or a glob pattern that is not an existing file."""
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


# -- VRT ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Src:
    name: str
    path: Path
    band: int
    width: int
    height: int
    dtype: str
    nodata: float | None
    crs: Any
    transform: Affine
    georef: bool


def _open_quiet(path: Path | str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)


def _describe(name: str, path: Path, band: int, role: str, *, single: bool) -> _Src:
    try:
        ds = _open_quiet(path)
    except RasterioIOError as exc:
        raise RasterReadError(
            f"cannot read band {name!r} of {role}: {str(path)!r} ({exc}): give GDAL-readable "
            "single-band files"
        ) from exc
    with ds:
        if single and ds.count != 1:
            raise BandMismatchError(
                f"band {name!r} of {role} matched {str(path)!r}, which has {ds.count} bands: a "
                "folder/glob input takes single-band files"
            )
        if band > ds.count:
            raise BandMismatchError(f"band {band} of {str(path)!r} requested but it has only "
                                    f"{ds.count}")
        georef = is_georeferenced(ds)
        return _Src(name, path.resolve(), band, ds.width, ds.height, ds.dtypes[band - 1],
                    ds.nodatavals[band - 1], ds.crs, ds.transform, georef)


def _fmt(value: float) -> str:
    return repr(float(value))


def _target_grid(
    srcs: list[_Src], *, role: str, label: str, resolution: float | None
) -> tuple[int, int, Affine | None, Any]:
    """(width, height, transform or None, crs) of the stack."""
    georef = {s.georef for s in srcs}
    if len(georef) > 1:
        yes = next(s for s in srcs if s.georef)
        no = next(s for s in srcs if not s.georef)
        raise MissingCRSError(
            f"{role} {label!r}: band {yes.name!r} ({str(yes.path)!r}) is georeferenced but band "
            f"{no.name!r} ({str(no.path)!r}) is not: georeference every band file or none"
        )
    if not georef.pop():
        sizes = {(s.height, s.width) for s in srcs}
        if len(sizes) > 1:
            raise GridMismatchError(
                f"{role} {label!r}: the band files are not georeferenced and differ in size "
                f"({', '.join(f'{s.name} {s.height}x{s.width}' for s in srcs)}): without "
                "georeference they must have one size; georeference them"
            )
        return srcs[0].width, srcs[0].height, None, None
    crs = srcs[0].crs
    for s in srcs:
        if s.crs != crs:
            raise GridMismatchError(
                f"{role} {label!r}: band {s.name!r} is in {s.crs} but band {srcs[0].name!r} "
                f"in {crs}: reproject the band files to one CRS"
            )
        t = s.transform
        if t.b != 0 or t.d != 0 or t.a <= 0 or t.e >= 0:
            raise GridMismatchError(
                f"{role} {label!r}: band {s.name!r} ({str(s.path)!r}) has a rotated or "
                f"south-up grid {tuple(t)[:6]}: warp it to a north-up grid first (gdalwarp)"
            )
    best = srcs[0]
    for s in srcs[1:]:  # finest pixel; the first listed wins ties
        if s.transform.a * -s.transform.e < best.transform.a * -best.transform.e * (1 - 1e-9):
            best = s
    left = max(s.transform.c for s in srcs)
    top = min(s.transform.f for s in srcs)
    right = min(s.transform.c + s.width * s.transform.a for s in srcs)
    bottom = max(s.transform.f + s.height * s.transform.e for s in srcs)
    if right <= left or top <= bottom:
        raise NoOverlapError(f"{role} {label!r}: the band files do not overlap: give bands "
                             "of one scene")
    if resolution is not None:
        rx = ry = float(resolution)
        width = math.floor((right - left) / rx + _TOL_PX)
        height = math.floor((top - bottom) / ry + _TOL_PX)
        x0, y0 = left, top
    else:
        bt = best.transform
        rx, ry = bt.a, -bt.e
        c0 = math.ceil((left - bt.c) / rx - _TOL_PX)
        c1 = math.floor((right - bt.c) / rx + _TOL_PX)
        r0 = math.ceil((bt.f - top) / ry - _TOL_PX)
        r1 = math.floor((bt.f - bottom) / ry + _TOL_PX)
        width, height = c1 - c0, r1 - r0
        x0, y0 = bt.c + c0 * rx, bt.f - r0 * ry
    if width < 1 or height < 1:
        raise GridMismatchError(f"{role} {label!r}: the area every band covers is smaller than "
                                "one pixel: give bands of one scene (or a finer resolution)")
    return width, height, Affine(rx, 0.0, x0, 0.0, -ry, y0), crs


def _near(a: float, b: float) -> bool:
    return abs(a - b) <= _TOL_PX


def build_stack(
    sources: list[tuple[str, Path, int]],
    *,
    role: str = "input",
    label: str = "",
    resolution: float | None = None,
    single: bool = False,
) -> tuple[str, tuple[BandSource, ...]]:
    """VRT XML stacking the given bands on one grid (see the module docstring for the rules).

    Args:
        sources: ``(name, file, 1-based band in file)`` per output band, in output order.
        role: Name used in messages ('BEFORE', 'AFTER').
        label: The folder/glob/file the bands came from, for messages.
        resolution: Pixel size of the stack in CRS units; None = that of the finest band.
        single: Require every file to have exactly one band (folder and glob inputs).

    Returns:
        The VRT as an XML string and the record of each band's source.

    Raises:
        RasterReadError: If a file cannot be read.
        GridMismatchError: If the bands cannot be put on one grid (CRS, rotation, overlap).
    """
    if resolution is not None and not resolution > 0:
        raise ConfigError(f"resolution {resolution!r} must be > 0 (CRS units per pixel)")
    srcs = [_describe(n, p, b, role, single=single) for n, p, b in sources]
    width, height, transform, crs = _target_grid(srcs, role=role, label=label,
                                                 resolution=resolution)
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    if transform is not None:
        if crs is not None:
            ET.SubElement(root, "SRS").text = crs.to_wkt()
        ET.SubElement(root, "GeoTransform").text = ", ".join(
            _fmt(v) for v in (transform.c, transform.a, 0.0, transform.f, 0.0, transform.e))
    records = []
    for i, s in enumerate(srcs, start=1):
        if transform is None:
            dst = (0.0, 0.0, float(width), float(height))
        else:
            st = s.transform
            dst = ((st.c - transform.c) / transform.a, (transform.f - st.f) / -transform.e,
                   s.width * st.a / transform.a, s.height * st.e / transform.e)
        exact = all(_near(v, round(v)) for v in dst[:2]) and _near(dst[2], s.width) and \
            _near(dst[3], s.height)
        if exact:
            dst = (float(round(dst[0])), float(round(dst[1])), float(s.width), float(s.height))
        gdal_type = _GDAL_TYPES.get(s.dtype)
        if gdal_type is None:
            raise RasterReadError(f"band {s.name!r} ({str(s.path)!r}) has data type {s.dtype}, "
                                  "which cannot be stacked: convert it (gdal_translate -ot)")
        band = ET.SubElement(root, "VRTRasterBand", dataType=gdal_type, band=str(i))
        ET.SubElement(band, "Description").text = s.name
        nodata = None if s.nodata is None else _fmt(s.nodata)
        if nodata is not None:
            ET.SubElement(band, "NoDataValue").text = nodata
        kind = "ComplexSource" if nodata is not None else "SimpleSource"
        attrs = {} if exact else {"resampling": "bilinear"}
        src = ET.SubElement(band, kind, attrs)
        ET.SubElement(src, "SourceFilename", relativeToVRT="0").text = str(s.path)
        ET.SubElement(src, "SourceBand").text = str(s.band)
        ET.SubElement(src, "SrcRect", xOff="0", yOff="0", xSize=str(s.width),
                      ySize=str(s.height))
        ET.SubElement(src, "DstRect", xOff=_fmt(dst[0]), yOff=_fmt(dst[1]),
                      xSize=_fmt(dst[2]), ySize=_fmt(dst[3]))
        if nodata is not None:
            ET.SubElement(src, "NODATA").text = nodata
        records.append(BandSource(s.name, str(s.path), s.band, s.width, s.height,
                                  resampled=not exact))
    return ET.tostring(root, encoding="unicode"), tuple(records)


def _open_vrt(xml: str, role: str, label: str) -> Any:
    try:
        return _open_quiet(xml)
    except RasterioIOError as exc:  # pragma: no cover - the XML is ours
        raise RasterReadError(f"cannot open the band stack of {role} {label!r} ({exc})") from exc


def _bands_by_description(path: str | os.PathLike[str], names: tuple[str, ...],
                          role: str) -> list[tuple[str, Path, int]]:
    with open_raster(path, role=role) as ds:
        descriptions = [d or "" for d in ds.descriptions]
    out = []
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
        out.append((name, Path(path), hits[0]))
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
        sources = [(n, f, 1) for n, f in zip(names, files, strict=True)]
    elif names is not None:
        sources = _bands_by_description(path, names, role)
    else:
        return ResolvedInput(open_raster(path, role=role), indexes)
    xml, records = build_stack(sources, role=role, label=label, resolution=resolution,
                               single=stack)
    dataset = _open_vrt(xml, role, label)
    return ResolvedInput(dataset, tuple(range(1, len(records) + 1)), records, xml)
