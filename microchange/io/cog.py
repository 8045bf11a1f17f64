"""Write tile results as part files and assemble them into Cloud-Optimised GeoTIFFs.

Tiles may be scored by several processes at once, and concurrent writes to one GeoTIFF corrupt
it. So each tile writes its own small part file; :func:`assemble_cog` then mosaics the parts through
a VRT and copies it once into a COG (ZSTD, internal tiles, overviews), under a temporary name that
the caller renames when every output is complete.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import rasterio
import rasterio.shutil
from numpy.typing import NDArray

from microchange.tiling import Tile
from microchange.types import Grid

__all__ = ("assemble_cog", "cog_settings", "read_part", "write_part")

_GDAL_TYPES = {"uint8": "Byte", "float32": "Float32"}

_COG_ENV = {
    "GDAL_NUM_THREADS": "ALL_CPUS",
    "GDAL_CACHEMAX": 256,
    # Part files open at once through the VRT (GDAL's default, 100, take a few MiB each) and
    # rows read at once to compute overviews (full-width chunks): both grow the memory of the
    # copy with the raster's size. Bounding them changes no byte of the COG.
    "GDAL_MAX_DATASET_POOL_SIZE": "16",
    "GDAL_OVR_CHUNK_MAX_SIZE": str(2 << 20),
}
"""GDAL options of the COG copy (``GDAL_CACHEMAX`` as rasterio takes an int: in bytes)."""


@contextmanager
def cog_settings() -> Iterator[None]:
    """The GDAL options of :func:`assemble_cog`, for this thread and the threads it starts.

    rasterio sets the options of any thread but the main one for that thread only, where
    GDAL's own worker threads do not see them: open this in the thread that starts the copies.
    """
    with rasterio.Env(**_COG_ENV):
        yield


def write_part(
    path: Path, array: NDArray[np.generic], grid: Grid, tile: Tile, *, nodata: float
) -> None:
    """Write one tile core as a single-band GeoTIFF positioned on ``grid``.

    Args:
        path: Part file to create.
        array: (height, width) core values of ``tile`` (uint8 or float32).
        grid: Output grid.
        tile: The tile the array belongs to.
        nodata: Nodata value recorded in the file.
    """
    profile = {
        "driver": "GTiff",
        "height": tile.height,
        "width": tile.width,
        "count": 1,
        "dtype": array.dtype.name,
        "crs": grid.crs,
        "transform": grid.window_transform(tile.row_off, tile.col_off),
        "nodata": nodata,
        "compress": "zstd",
        "zstd_level": 1,
    }
    if tile.height >= 16 and tile.width >= 16:
        bs = 256 if min(tile.height, tile.width) >= 256 else 16
        profile.update(tiled=True, blockxsize=bs, blockysize=bs)
    # unique per process: a worker declared lost while still alive may write the same tile
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with rasterio.Env(GDAL_NUM_THREADS="1"), rasterio.open(tmp, "w", **profile) as dst:
            dst.write(array, 1)
        tmp.replace(path)
    except BaseException:  # a full disk, say: leave no half-written temporary file
        tmp.unlink(missing_ok=True)
        raise


def read_part(path: Path) -> NDArray[np.generic]:
    """Read the single band of a part file."""
    with rasterio.open(path) as src:
        return src.read(1)  # type: ignore[no-any-return]


def _vrt_xml(grid: Grid, parts: Sequence[tuple[Tile, Path]], dtype: str, nodata: float) -> str:
    gt = grid.affine.to_gdal()
    lines = [f'<VRTDataset rasterXSize="{grid.width}" rasterYSize="{grid.height}">']
    if grid.crs_wkt:
        lines.append(f"  <SRS>{escape(grid.crs_wkt)}</SRS>")
    lines.append("  <GeoTransform>" + ", ".join(repr(float(v)) for v in gt) + "</GeoTransform>")
    lines.append(f'  <VRTRasterBand dataType="{_GDAL_TYPES[dtype]}" band="1">')
    nd = "nan" if isinstance(nodata, float) and math.isnan(nodata) else repr(nodata)
    lines.append(f"    <NoDataValue>{nd}</NoDataValue>")
    for tile, path in parts:
        lines += [
            "    <SimpleSource>",
            f'      <SourceFilename relativeToVRT="0">{escape(str(path))}</SourceFilename>',
            "      <SourceBand>1</SourceBand>",
            f'      <SrcRect xOff="0" yOff="0" xSize="{tile.width}" ySize="{tile.height}"/>',
            (f'      <DstRect xOff="{tile.col_off}" yOff="{tile.row_off}" '
             f'xSize="{tile.width}" ySize="{tile.height}"/>'),
            "    </SimpleSource>",
        ]
    lines += ["  </VRTRasterBand>", "</VRTDataset>"]
    return "\n".join(lines) + "\n"


def assemble_cog(
    parts: Sequence[tuple[Tile, Path]],
    grid: Grid,
    dst: Path,
    *,
    dtype: str,
    nodata: float,
    resampling: str,
) -> None:
    """Mosaic part files covering ``grid`` into one COG at ``dst``.

    Args:
        parts: (tile, part path) pairs whose cores cover the grid exactly once.
        grid: Output grid (CRS, transform, size).
        dst: COG to write (the caller renames it into place).
        dtype: 'uint8' or 'float32'.
        nodata: Nodata value of the output.
        resampling: Overview resampling ('nearest' for masks, 'average' for scores).
    """
    vrt = dst.with_name(dst.name + ".vrt")
    vrt.write_text(_vrt_xml(grid, parts, dtype, nodata))
    try:
        with cog_settings():
            rasterio.shutil.copy(
                str(vrt),
                str(dst),
                driver="COG",
                COMPRESS="ZSTD",
                LEVEL=1,
                NUM_THREADS="ALL_CPUS",
                BLOCKSIZE=512,
                OVERVIEWS="AUTO",
                OVERVIEW_RESAMPLING=resampling.upper(),
                BIGTIFF="IF_SAFER",
            )
    finally:
        vrt.unlink(missing_ok=True)
