"""A GDAL VRT stacking single-band files on one grid, held as an XML string (no file written).

* **Grid.** That of the finest band (smallest pixel area; the first listed on ties), cropped to
  the area every band covers; ``resolution=`` picks another pixel size over the same area. Bands
  on another grid are resampled bilinearly by GDAL as windows are read: no raster is read whole.
  The bands of one stack must share a CRS and be north-up.
* **Nodata.** Each band keeps its file's nodata value; bilinear resampling ignores nodata source
  pixels, so a resampled pixel is nodata only where every source pixel under the kernel is.
"""

from __future__ import annotations

import math
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

from microchange.errors import (
    BandMismatchError,
    ConfigError,
    GridMismatchError,
    MissingCRSError,
    NoOverlapError,
    RasterReadError,
)
from microchange.io.datasets import input_path, is_georeferenced
from microchange.types import PathLike

__all__ = ("BandSource", "build_stack", "open_vrt")

_TOL_PX = 1e-3  # grid coordinates within this fraction of a pixel are taken as equal
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


@dataclass(frozen=True)
class _Src:
    name: str
    path: str
    band: int
    width: int
    height: int
    dtype: str
    nodata: float | None
    crs: Any
    transform: Affine
    georef: bool


def _open_quiet(path: PathLike) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)


def _describe(name: str, path: PathLike, band: int, role: str, *, single: bool) -> _Src:
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
        return _Src(name, input_path(path), band, ds.width, ds.height, ds.dtypes[band - 1],
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
    sources: Sequence[tuple[str, PathLike, int]],
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


def open_vrt(xml: str, role: str, label: str) -> Any:
    """Open the XML of :func:`build_stack` as a dataset."""
    try:
        return _open_quiet(xml)
    except RasterioIOError as exc:  # pragma: no cover - the XML is ours
        raise RasterReadError(f"cannot open the band stack of {role} {label!r} ({exc})") from exc


