"""Low-level raster access: open a dataset with a clear error, read validity, cache blocks.

The only place where a single raster file is opened; :mod:`microchange.io.stacks` (band
folders), :mod:`microchange.io.masks` and :mod:`microchange.io.pair` build on it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import numpy as np
import rasterio
from affine import Affine
from numpy.typing import NDArray
from rasterio._err import CPLE_BaseError
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.windows import Window

from microchange.errors import InputNotFoundError, RasterReadError
from microchange.types import PathLike, is_remote

__all__ = ("FORMATS_HINT", "GDAL_CACHE_MB", "BlockCache", "Closing", "content_digest",
           "crs_text", "input_path", "is_georeferenced", "is_remote", "open_raster",
           "read_errors", "read_valid")

GDAL_CACHE_MB = 256
"""Cap of GDAL's block cache while windows are read, in MiB (its default, 5 % of RAM, would grow
the memory of a run with the raster size)."""

FORMATS_HINT = "give a GDAL-readable raster (GeoTIFF/COG, ENVI with its .hdr, PNG, BMP, JPEG ...)"


def input_path(path: PathLike) -> str:
    """An input as recorded (plan, run.json): a local file absolute, a /vsi path or URL as given."""
    return str(path) if is_remote(path) else str(Path(path).resolve())


class Closing:
    """Base of the readers that hold open datasets: ``with Reader(...) as r:`` closes them."""

    def close(self) -> None:
        """Close every open dataset."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def crs_text(crs: Any) -> str:
    """A CRS for messages: ``EPSG:32633`` when it has a code, else the start of its WKT."""
    try:
        epsg = crs.to_epsg()
    except Exception:  # noqa: BLE001 - a damaged CRS has no code; show what is there
        epsg = None
    if epsg:
        return f"EPSG:{epsg}"
    text = " ".join(str(crs.to_wkt() if hasattr(crs, "to_wkt") else crs).split())
    return repr(text[:80] + ("..." if len(text) > 80 else ""))


def is_georeferenced(ds: Any) -> bool:
    """True when a dataset has a CRS or a transform other than the identity."""
    return ds.crs is not None or not ds.transform.almost_equals(Affine.identity())


def _has_nodata(ds: Any, idx: list[int]) -> bool:
    return any(MaskFlags.nodata in ds.mask_flag_enums[i - 1] for i in idx)


def read_valid(ds: Any, idx: list[int], window: Window) -> NDArray[np.bool_]:
    """True where every selected band holds data (per-band nodata), else the dataset mask."""
    if _has_nodata(ds, idx):
        return np.asarray(ds.read_masks(idx, window=window).min(axis=0) > 0)
    return np.asarray(ds.dataset_mask(window=window) > 0)


BLOCK_CACHE_MB = 32
"""Decoded blocks kept per date while reading tiles, in MiB of float32 values (see
:class:`BlockCache`; blocks of 8- and 16-bit integer rasters are kept as read, in half or a
quarter of that). 32 scores 8192^2 and 16384^2 pairs (4 bands, 256-px blocks) as fast as 64,
with 120 MiB less at 16384^2 (two scoring threads, two dates)."""

_NARROW_DTYPES = frozenset({"uint8", "int8", "uint16", "int16"})
"""Types whose values convert to float32 exactly: their blocks are cached as read."""


class BlockCache:
    """Decoded blocks of one tiled raster (selected bands and validity), least recently used out.

    GDAL decodes every internal block a window touches, and its block cache does not serve
    multi-band reads of pixel-interleaved files: a tile read with a halo decodes up to 9 blocks
    that its neighbours decode again (measured: 3x the cost of the aligned reads of a 4096^2
    raster). Windows are therefore assembled from whole blocks, each read once and kept while
    neighbouring tiles need it. Values and validity are those of the same window read directly
    (each block is read with ``out_dtype="float32"``, or in its own 8- or 16-bit integer type,
    which converts to float32 exactly, and its validity as :func:`read_valid`).

    The budget counts every block as float32 values, whatever its type, so the same blocks are
    kept (and decoded) for any input type; blocks kept as 16-bit integers take half the memory.

    Args:
        ds: Open dataset; see :meth:`usable`.
        indexes: 1-based bands to read.
        max_mb: Most decoded data kept, in MiB of float32 values.

    Attributes:
        nbytes: Memory held by the kept blocks (values and validity), in bytes.
    """

    def __init__(self, ds: Any, indexes: list[int], max_mb: int = BLOCK_CACHE_MB) -> None:
        self.ds = ds
        self.indexes = indexes
        self.block_h, self.block_w = ds.block_shapes[indexes[0] - 1]
        types = {ds.dtypes[i - 1] for i in indexes}
        self.read_dtype = types.pop() if len(types) == 1 and types <= _NARROW_DTYPES \
            else "float32"
        self.max_bytes = max_mb << 20
        self.nbytes = 0
        self._budget = 0  # the kept blocks counted as float32 values, against max_bytes
        self._blocks: OrderedDict[tuple[int, int], tuple[NDArray[Any], NDArray[np.bool_]]] = (
            OrderedDict())

    @staticmethod
    def usable(ds: Any, indexes: list[int]) -> bool:
        """True for a tiled file (not a VRT) whose selected bands share one block shape."""
        if ds.driver == "VRT":
            return False
        shapes = {ds.block_shapes[i - 1] for i in indexes}
        if len(shapes) != 1:
            return False
        bh, bw = shapes.pop()
        return bool(min(bh, bw) >= 16 and (bh < ds.height or bw < ds.width))

    def read(self, window: Window) -> tuple[NDArray[np.float32], NDArray[np.bool_]]:
        """(C, h, w) float32 values and (h, w) validity of a window inside the raster."""
        r0, c0 = int(window.row_off), int(window.col_off)
        r1, c1 = r0 + int(window.height), c0 + int(window.width)
        out = np.empty((len(self.indexes), r1 - r0, c1 - c0), np.float32)
        valid = np.empty((r1 - r0, c1 - c0), bool)
        bh, bw = self.block_h, self.block_w
        for br in range(r0 // bh, (r1 - 1) // bh + 1):
            for bc in range(c0 // bw, (c1 - 1) // bw + 1):
                data, v = self._block(br, bc)
                top, left = br * bh, bc * bw
                rr0, rr1 = max(r0, top), min(r1, top + data.shape[1])
                cc0, cc1 = max(c0, left), min(c1, left + data.shape[2])
                out[:, rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = data[
                    :, rr0 - top:rr1 - top, cc0 - left:cc1 - left]
                valid[rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = v[
                    rr0 - top:rr1 - top, cc0 - left:cc1 - left]
        return out, valid

    def _block(self, br: int, bc: int) -> tuple[NDArray[Any], NDArray[np.bool_]]:
        key = (br, bc)
        hit = self._blocks.get(key)
        if hit is not None:
            self._blocks.move_to_end(key)
            return hit
        top, left = br * self.block_h, bc * self.block_w
        win = Window(left, top, min(self.block_w, self.ds.width - left),
                     min(self.block_h, self.ds.height - top))
        data = self.ds.read(self.indexes, window=win, out_dtype=self.read_dtype)
        entry = (data, read_valid(self.ds, self.indexes, win))
        self._blocks[key] = entry
        self.nbytes += data.nbytes + entry[1].nbytes
        self._budget += 4 * data.size + entry[1].nbytes
        while self._budget > self.max_bytes and len(self._blocks) > 1:
            _, (d, v) = self._blocks.popitem(last=False)
            self.nbytes -= d.nbytes + v.nbytes
            self._budget -= 4 * d.size + v.nbytes
        return entry


_DIGEST_WINDOW_BYTES = 16 << 20


def _digest_windows(ds: Any) -> Iterator[Window]:
    """Windows of whole blocks covering a dataset, each of at most ~16 MiB of pixels."""
    bh, bw = ds.block_shapes[0]
    px = sum(np.dtype(d).itemsize for d in ds.dtypes)
    cols = min(ds.width, max(bw, _DIGEST_WINDOW_BYTES // (bh * px) // bw * bw))
    rows = min(ds.height, max(bh, _DIGEST_WINDOW_BYTES // (cols * px) // bh * bh))
    for r in range(0, ds.height, rows):
        for c in range(0, ds.width, cols):
            yield Window(c, r, min(cols, ds.width - c), min(rows, ds.height - r))


def content_digest(ds: Any) -> str:
    """SHA-256 of what GDAL reads from a dataset: its grid, data types, nodata and every pixel.

    The fingerprint of a file that cannot be read as raw bytes (a /vsi path or URL: GDAL, as
    rasterio exposes it, reads datasets, not bytes). Pixels are read window by window (memory
    stays flat); internal or sidecar masks are included.

    Args:
        ds: Open rasterio dataset.

    Returns:
        64 hex digits; the same for the same content, whatever the server or the URL.
    """
    digest = hashlib.sha256(json.dumps({
        "width": ds.width, "height": ds.height, "count": ds.count, "dtypes": list(ds.dtypes),
        "crs": ds.crs.to_wkt() if ds.crs else None, "transform": list(ds.transform)[:6],
        "nodata": [repr(v) for v in ds.nodatavals],
        "masks": [sorted(f.name for f in flags) for flags in ds.mask_flag_enums],
    }, sort_keys=True).encode())
    per_dataset = any(MaskFlags.per_dataset in flags for flags in ds.mask_flag_enums)
    one_read = len(set(ds.dtypes)) == 1
    for window in _digest_windows(ds):
        blocks = [ds.read(window=window)] if one_read else [
            ds.read(b, window=window) for b in ds.indexes]
        if per_dataset:
            blocks.append(ds.read_masks(1, window=window))
        for block in blocks:
            digest.update(np.ascontiguousarray(block).tobytes())
    return digest.hexdigest()


def open_raster(path: PathLike, *, role: str = "raster") -> Any:
    """Open a raster with rasterio, turning failures into a clear :class:`RasterReadError`.

    Args:
        path: File to open, or a GDAL /vsi path or URL (handed to GDAL unchanged).
        role: Name used in messages ('BEFORE', 'AFTER', 'truth').

    Returns:
        An open ``rasterio.DatasetReader``.

    Raises:
        RasterReadError: If the file is missing or GDAL cannot read it.
    """
    remote = is_remote(path)
    p = str(path) if remote else Path(path)
    if not remote and not Path(p).exists():
        raise InputNotFoundError(f"{role} raster {str(path)!r} does not exist: check the path")
    if not remote and Path(p).is_dir():
        raise RasterReadError(
            f"{role} raster {str(path)!r} is a directory: {FORMATS_HINT}"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(p)
    except RasterioIOError as exc:
        if remote:
            raise _remote_error(path, role, exc) from exc
        raise RasterReadError(
            f"cannot read {role} raster {str(path)!r} ({exc}): {FORMATS_HINT}"
        ) from exc
    if not remote:
        try:
            _check_block_index(ds, path, role)
        except Exception:
            ds.close()
            raise
    return ds


class _ThreadRecords(logging.Handler):
    """Collects the messages GDAL reports (through rasterio's loggers) in one thread."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


def _check_block_index(ds: Any, path: PathLike, role: str) -> None:
    """Refuse a TIFF whose header declares more blocks than its block index lists.

    A damaged width, height or block size makes libtiff ignore the index ("Incorrect count for
    TileOffsets; tag ignored") and GDAL then reads every block as empty: the raster would be
    processed as a large field of zeros. Looking up the last block's offset shows it at once.
    """
    if ds.driver != "GTiff":
        return
    bh, bw = ds.block_shapes[0]
    last = f"BLOCK_OFFSET_{-(-ds.width // bw) - 1}_{-(-ds.height // bh) - 1}"
    records = _ThreadRecords()
    loggers = [logging.getLogger(n) for n in ("rasterio._err", "rasterio._env")]
    for logger in loggers:
        logger.addHandler(records)
    detail = ""
    try:
        with rasterio.Env():
            ds.get_tag_item(last, "TIFF", bidx=1)
    except (RasterioError, CPLE_BaseError) as exc:
        detail = str(exc)
    finally:
        for logger in loggers:
            logger.removeHandler(records)
    damaged = [m for m in [detail, *records.messages] if "Incorrect count for" in m]
    if damaged:
        raise RasterReadError(
            f"cannot read {role} raster {str(path)!r}: its TIFF header is damaged (it declares "
            f"{ds.width}x{ds.height} px, but {damaged[0].split(':')[-1].strip()}): the file is "
            "corrupt; copy or export it again (gdalinfo -checksum FILE shows whether GDAL can "
            "read every block)")


def _read_detail(exc: BaseException) -> str:
    """GDAL's own words for a failed read (e.g. 'TIFFReadEncodedTile() failed').

    rasterio raises 'Read failed. See previous exception for details.' from GDAL's error.
    """
    cause = exc.__cause__ or exc.__context__
    text = str(cause if isinstance(cause, CPLE_BaseError) else exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


@contextmanager
def read_errors(path: PathLike, *, role: str = "raster") -> Iterator[None]:
    """Turn a failed read of pixels (truncated or corrupt file) into a :class:`RasterReadError`.

    A file whose header opens but whose pixel data is cut short or damaged only fails when a
    window is read; GDAL then raises ``RasterioIOError: Read failed``, which names nothing.

    Args:
        path: The file (or folder/glob of a band stack) read in the block.
        role: Name used in messages ('BEFORE', 'AFTER', 'truth', a mask flag).

    Raises:
        RasterReadError: Naming the file, GDAL's reason and the fix.
    """
    try:
        yield
    except (RasterioError, CPLE_BaseError) as exc:
        raise RasterReadError(
            f"cannot read the pixels of {role} raster {str(path)!r} ({_read_detail(exc)}): the "
            "file is truncated or corrupt; copy or export it again (gdalinfo -checksum FILE "
            "shows whether GDAL can read every block)"
        ) from exc


def _remote_error(path: PathLike, role: str, exc: Exception) -> RasterReadError:
    """The error for a /vsi path or URL that GDAL cannot open (missing or unreadable)."""
    text = str(exc)
    if "404" in text or "does not exist" in text or "No such file" in text:
        return InputNotFoundError(
            f"{role} raster {str(path)!r} was not found ({text}): check the URL or /vsi path "
            "(e.g. /vsicurl/https://host/path/image.tif)")
    return RasterReadError(
        f"cannot read {role} raster {str(path)!r} ({text}): check that the URL or /vsi path is "
        f"reachable (the server must answer HTTP range requests) and {FORMATS_HINT}")
