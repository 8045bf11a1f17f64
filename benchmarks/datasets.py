"""Adapters that turn the shared benchmark folders into BEFORE/AFTER/truth raster triples.

The data live read-only in ``../shared/data`` beside the repository (override with the
environment variable ``MICROCHANGE_SHARED_DATA``); each folder's ``PROVENANCE.md`` documents its
encoding. Most pairs are used in place. Two need derived files, written once under a work
directory and reused afterwards (nothing is ever written next to the shared data):

* OSCD (bercy, paris, rennes): the four 10 m Sentinel-2 bands B02, B03, B04, B08 of each date are
  stacked into one 4-band uint16 GeoTIFF, and the label ``cm/<city>-cm.tif`` (1 = no change,
  2 = change, no geotags) is rewritten as a GeoTIFF on the t1 grid. With ``oscd_folders=True``
  a second pair per city, ``oscd_<city>_s2x10``, uses the ``imgs_1``/``imgs_2`` folders directly
  with the ten 10 m and 20 m bands :data:`OSCD_S2X10_BANDS` (microchange stacks them on the 10 m
  grid, resampling the 20 m bands bilinearly); its ``bands`` go into ``DetectConfig(bands=...)``.
* Taizhou: the two sparse sample masks ``change.bmp`` and ``unchanged.bmp`` are merged into one
  truth GeoTIFF on the Landsat grid: 2 = changed, 1 = unchanged, 0 = unlabelled.

Use a pair with :func:`microchange.evaluation.evaluate_mask`::

    for pair in list_pairs(Path("out/bench_work")):
        metrics = evaluate_mask(mask_path, pair.truth, **pair.truth_kwargs())
"""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning

__all__ = (
    "OSCD_BANDS",
    "OSCD_CITIES",
    "OSCD_S2X10_BANDS",
    "SHARED_DATA",
    "BenchmarkPair",
    "Family",
    "list_pairs",
    "shared_data_root",
)

Family = Literal["optical", "sar", "heterogeneous"]

ENV_VAR = "MICROCHANGE_SHARED_DATA"
OSCD_CITIES = ("bercy", "paris", "rennes")
OSCD_BANDS = ("B02", "B03", "B04", "B08")
OSCD_S2X10_BANDS = ("B02", "B03", "B04", "B08", "B05", "B06", "B07", "B8A", "B11", "B12")
LEVIR_TILES = ("test_7", "test_12", "test_102")


def shared_data_root() -> Path:
    """The shared benchmark data folder.

    Returns:
        ``$MICROCHANGE_SHARED_DATA`` when set, else ``../shared/data`` beside the repository.
    """
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override).expanduser().resolve()
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


SHARED_DATA = shared_data_root()


@dataclass(frozen=True)
class BenchmarkPair:
    """One bitemporal pair with its ground truth.

    Attributes:
        name: Unique pair name, e.g. ``"oscd_bercy"`` or ``"levir_test_7"``.
        family: Sensor family: the default configuration of this family is run on it.
        before: Raster at t1 (older date); any GDAL-readable format.
        after: Raster at t2, same pixel grid as ``before``.
        truth: Ground-truth raster, same height and width as ``before``; band 1 is used.
        changed_values: Truth values meaning "changed" (unused when ``truth_threshold`` is set).
        ignore_values: Truth values excluded from scoring (unknown class).
        unchanged_values: Truth values meaning "unchanged"; None means every value that is not
            changed and not ignored is unchanged. When given, the truth is sparse: values in none
            of the lists are unlabelled and excluded from scoring.
        truth_threshold: If set, the truth is continuous (lossy JPEG mask): ``truth >
            truth_threshold`` is changed and everything else is unchanged.
        bands: Band names for ``DetectConfig(bands=...)`` when ``before``/``after`` are folders
            of single-band files; None = every band of the files.
    """

    name: str
    family: Family
    before: Path
    after: Path
    truth: Path
    changed_values: tuple[int, ...] = (255,)
    ignore_values: tuple[int, ...] = ()
    unchanged_values: tuple[int, ...] | None = None
    truth_threshold: int | None = None
    bands: tuple[str, ...] | None = None

    def truth_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`microchange.evaluation.evaluate_mask` for this truth.

        Returns:
            ``changed_values``, ``ignore_values``, ``unchanged_values`` and ``truth_threshold``.
        """
        return {
            "changed_values": self.changed_values,
            "ignore_values": self.ignore_values,
            "unchanged_values": self.unchanged_values,
            "truth_threshold": self.truth_threshold,
        }


def list_pairs(
    workdir: Path, *, root: Path | None = None, oscd_folders: bool = False
) -> list[BenchmarkPair]:
    """Every benchmark pair of every shared dataset folder, preparing derived files if needed.

    Derived files (OSCD stacks and labels, the Taizhou truth) are written under ``workdir`` the
    first time and reused when already there.

    Args:
        workdir: Folder for derived files; created if missing. Never inside the shared data.
        root: Shared data folder; default :func:`shared_data_root`.
        oscd_folders: Also list ``oscd_<city>_s2x10``: the OSCD cities read from their band
            folders with the ten 10 m / 20 m bands (after the three stacked OSCD pairs).

    Returns:
        13 pairs: oscd_bercy, oscd_paris, oscd_rennes, taizhou, bern, san_francisco,
        yellow_river_coastline, yellow_river_inland_water, beijing_a, levir_test_7,
        levir_test_12, levir_test_102, shuguang (16 with ``oscd_folders``).

    Raises:
        FileNotFoundError: If the data folder or one of the expected files is missing.
        ValueError: If files that must share a grid do not.
    """
    data = Path(root) if root is not None else shared_data_root()
    if not data.is_dir():
        raise FileNotFoundError(
            f"benchmark data folder {str(data)!r} not found: put the shared data there or set "
            f"{ENV_VAR}"
        )
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)

    pairs = [_oscd_pair(data / "oscd_s2_shared", city, workdir / "oscd") for city in OSCD_CITIES]
    if oscd_folders:
        pairs += [_oscd_folder_pair(data / "oscd_s2_shared", city, workdir / "oscd")
                  for city in OSCD_CITIES]
    pairs.append(_taizhou_pair(data / "taizhou_landsat7_etm", workdir / "taizhou"))
    sar = [
        ("bern", "bern_ers2_sar", "bern", ()),
        ("san_francisco", "san_francisco_ers2_sar", "san", ()),
        ("yellow_river_coastline", "yellow_river_coastline_sar", "yellow_B", ()),
        ("yellow_river_inland_water", "yellow_river_inland_water_sar", "yellow_C", (34,)),
    ]
    for name, folder, stem, ignore in sar:
        pairs.append(_triple(name, "sar", data / folder, stem, ".bmp", ignore_values=ignore))
    beijing = data / "beijing_a_optical"
    pairs.append(
        BenchmarkPair(
            name="beijing_a",
            family="optical",
            before=_existing(beijing / "beijing_A_1.jpg"),
            after=_existing(beijing / "beijing_A_2.jpg"),
            truth=_existing(beijing / "beijing_A_gt.jpg"),
            changed_values=(),
            truth_threshold=128,
        )
    )
    levir = data / "levir_cd_samples"
    for tile in LEVIR_TILES:
        pairs.append(
            BenchmarkPair(
                name=f"levir_{tile}",
                family="optical",
                before=_existing(levir / "A" / f"{tile}.png"),
                after=_existing(levir / "B" / f"{tile}.png"),
                truth=_existing(levir / "label" / f"{tile}.png"),
            )
        )
    pairs.append(
        _triple(
            "shuguang",
            "heterogeneous",
            data / "shuguang_sar_optical_heterogeneous",
            "shuguang",
            ".bmp",
        )
    )
    return pairs


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file {str(path)!r} not found: check the shared data")
    return path


def _triple(
    name: str,
    family: Family,
    folder: Path,
    stem: str,
    suffix: str,
    *,
    ignore_values: tuple[int, ...] = (),
) -> BenchmarkPair:
    """Pair whose files are ``<stem>_1``, ``<stem>_2`` and ``<stem>_gt`` with 255 = changed."""
    return BenchmarkPair(
        name=name,
        family=family,
        before=_existing(folder / f"{stem}_1{suffix}"),
        after=_existing(folder / f"{stem}_2{suffix}"),
        truth=_existing(folder / f"{stem}_gt{suffix}"),
        changed_values=(255,),
        ignore_values=ignore_values,
    )


def _open(path: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)


def _write_cached(path: Path, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` and move the result to ``path`` atomically, unless ``path`` exists."""
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp.tif")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _geotiff_profile(ref: Any, *, count: int, dtype: str) -> dict[str, Any]:
    return {
        "driver": "GTiff",
        "height": ref.height,
        "width": ref.width,
        "count": count,
        "dtype": dtype,
        "crs": ref.crs,
        "transform": ref.transform,
        "compress": "deflate",
    }


def _band_file(folder: Path, band: str) -> Path:
    matches = sorted(folder.glob(f"*_{band}.tif"))
    if len(matches) != 1:
        raise FileNotFoundError(
            f"expected one file '*_{band}.tif' in {str(folder)!r}, found {len(matches)}"
        )
    return matches[0]


def _stack_bands(band_paths: list[Path], out: Path) -> None:
    """Write the single-band rasters ``band_paths`` (one grid) as one multi-band GeoTIFF."""
    sources = [_open(p) for p in band_paths]
    try:
        ref = sources[0]
        for path, src in zip(band_paths, sources, strict=True):
            if src.shape != ref.shape or src.transform != ref.transform or src.crs != ref.crs:
                raise ValueError(
                    f"band {str(path)!r} ({src.height}x{src.width}) is not on the grid of "
                    f"{str(band_paths[0])!r} ({ref.height}x{ref.width})"
                )
        profile = _geotiff_profile(ref, count=len(sources), dtype="uint16")
        with rasterio.open(out, "w", **profile) as dst:
            for i, (path, src) in enumerate(zip(band_paths, sources, strict=True), start=1):
                dst.write(src.read(1).astype(np.uint16, copy=False), i)
                dst.set_band_description(i, path.stem.rsplit("_", 1)[-1])
    finally:
        for src in sources:
            src.close()


def _write_on_grid(array: np.ndarray[Any, Any], ref_path: Path, out: Path, source: Path) -> None:
    """Write the 2-D uint8 ``array`` as a GeoTIFF with the CRS/transform of ``ref_path``."""
    with _open(ref_path) as ref:
        if array.shape != (ref.height, ref.width):
            raise ValueError(
                f"truth {str(source)!r} is {array.shape[0]}x{array.shape[1]} but the image "
                f"{str(ref_path)!r} is {ref.height}x{ref.width}"
            )
        profile = _geotiff_profile(ref, count=1, dtype="uint8")
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(array.astype(np.uint8, copy=False), 1)


def _oscd_pair(folder: Path, city: str, workdir: Path) -> BenchmarkPair:
    city_dir = folder / city
    t1_bands = [_band_file(city_dir / "imgs_1", b) for b in OSCD_BANDS]
    t2_bands = [_band_file(city_dir / "imgs_2", b) for b in OSCD_BANDS]
    label = _existing(city_dir / "cm" / f"{city}-cm.tif")

    before = _write_cached(workdir / f"{city}_t1.tif", lambda p: _stack_bands(t1_bands, p))
    after = _write_cached(workdir / f"{city}_t2.tif", lambda p: _stack_bands(t2_bands, p))

    def write_truth(out: Path) -> None:
        with _open(label) as src:
            cm = src.read(1)
        _write_on_grid(cm, t1_bands[0], out, label)

    truth = _write_cached(workdir / f"{city}_truth.tif", write_truth)
    return BenchmarkPair(
        name=f"oscd_{city}",
        family="optical",
        before=before,
        after=after,
        truth=truth,
        changed_values=(2,),
        unchanged_values=(1,),
    )


def _oscd_folder_pair(folder: Path, city: str, workdir: Path) -> BenchmarkPair:
    """The OSCD city read from its band folders (10 bands, 10 m + 20 m), same truth."""
    stacked = _oscd_pair(folder, city, workdir)  # writes/reuses the truth on the t1 grid
    city_dir = folder / city
    for sub in ("imgs_1", "imgs_2"):
        for band in OSCD_S2X10_BANDS:
            _band_file(city_dir / sub, band)  # exactly one file per band, else a clear error
    return BenchmarkPair(
        name=f"oscd_{city}_s2x10",
        family="optical",
        before=city_dir / "imgs_1",
        after=city_dir / "imgs_2",
        truth=stacked.truth,
        changed_values=(2,),
        unchanged_values=(1,),
        bands=OSCD_S2X10_BANDS,
    )


def _taizhou_pair(folder: Path, workdir: Path) -> BenchmarkPair:
    before = _existing(folder / "2000TM")
    after = _existing(folder / "2003TM")
    change = _existing(folder / "change.bmp")
    unchanged = _existing(folder / "unchanged.bmp")

    def write_truth(out: Path) -> None:
        with _open(change) as src:
            is_changed = src.read(1) == 255
        with _open(unchanged) as src:
            is_unchanged = src.read(1) == 255
        both = int(np.count_nonzero(is_changed & is_unchanged))
        if both:
            raise ValueError(
                f"{both} pixels are both in {str(change)!r} and {str(unchanged)!r}: "
                "the sample masks must not overlap"
            )
        truth = np.zeros(is_changed.shape, dtype=np.uint8)
        truth[is_unchanged] = 1
        truth[is_changed] = 2
        _write_on_grid(truth, before, out, change)

    truth = _write_cached(workdir / "taizhou_truth.tif", write_truth)
    return BenchmarkPair(
        name="taizhou",
        family="optical",
        before=before,
        after=after,
        truth=truth,
        changed_values=(2,),
        unchanged_values=(1,),
    )
