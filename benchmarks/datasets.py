"""Adapters that turn the shared benchmark folders into BEFORE/AFTER/truth raster triples.

The data live read-only in ``../shared/data`` beside the repository (override with the
environment variable ``MICROCHANGE_SHARED_DATA``); each folder's ``PROVENANCE.md`` documents its
encoding. Each pair names its ``dataset`` (one per source, for leave-one-dataset-out scoring) and
its :data:`Family`. Most pairs are used in place; some need derived files, written once under a
work directory and reused afterwards (nothing is ever written next to the shared data):

* OSCD: the 10 m bands B02, B03, B04, B08 of each date stacked into one uint16 GeoTIFF, the
  label (1 = no change, 2 = change) rewritten on the t1 grid; with ``oscd_folders=True`` also
  ``oscd_<city>_s2x10``: the band folders with the ten bands :data:`OSCD_S2X10_BANDS`.
* Taizhou: the sparse ``change.bmp``/``unchanged.bmp`` merged: 2 = changed, 1 = unchanged,
  0 = unlabelled.
* Chao Lake: palette BMPs whose palette is not the identity: grey values through the palette.
* Wenchuan, Bastrop, Alaska (``.mat``): ``before``/``after``/``gt`` as plain GeoTIFFs (no CRS,
  identity transform), native dtypes (float64 as float32); ``gt`` 1 = changed.

``bands`` goes into ``DetectConfig(bands=...)``: names for band folders, 1-based indexes for the
bands of a file (Ottawa: band 1 of an R=G=B BMP). Use a pair with
:func:`microchange.evaluation.evaluate_mask`::

    for pair in list_pairs(Path("out/bench_work")):
        metrics = evaluate_mask(mask_path, pair.truth, **pair.truth_kwargs())
"""

from __future__ import annotations

import dataclasses
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
from rasterio.transform import Affine

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

Family = Literal["optical", "vhr", "sar", "heterogeneous"]
"""Sensor family: ``optical`` multispectral satellite, ``vhr`` very-high-resolution aerial or
Google-Earth RGB, ``sar`` every SAR pair, ``heterogeneous`` a cross-sensor (SAR/optical) pair."""

ENV_VAR = "MICROCHANGE_SHARED_DATA"
OSCD_CITIES = ("bercy", "paris", "rennes")
OSCD_BANDS = ("B02", "B03", "B04", "B08")
OSCD_S2X10_BANDS = ("B02", "B03", "B04", "B08", "B05", "B06", "B07", "B8A", "B11", "B12")
LEVIR_TILES = ("test_7", "test_12", "test_102")
OMBRIA_TILES = ("0113", "0178", "0212", "0221")
DSIFN_TILES = ("0_2", "1_1", "2_4", "3_4", "4_4")
SZADA_PAIRS = tuple(range(1, 8))


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
        dataset: The source dataset (``"oscd"``, ``"levir"``, ``"szada"``...): all pairs of one
            source share it; the unit of leave-one-dataset-out scoring.
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
        bands: ``DetectConfig(bands=...)``: band names when ``before``/``after`` are folders
            of single-band files, or 1-based band indexes of a multi-band file (never mixed);
            None = every band of the files.
    """

    name: str
    family: Family
    dataset: str
    before: Path
    after: Path
    truth: Path
    changed_values: tuple[int, ...] = (255,)
    ignore_values: tuple[int, ...] = ()
    unchanged_values: tuple[int, ...] | None = None
    truth_threshold: int | None = None
    bands: tuple[str, ...] | tuple[int, ...] | None = None

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

    Derived files (OSCD stacks and labels, the Taizhou truth, the Chao Lake grey images, the
    ``.mat`` rasters) are written under ``workdir`` the first time and reused when already there.

    Args:
        workdir: Folder for derived files; created if missing. Never inside the shared data.
        root: Shared data folder; default :func:`shared_data_root`.
        oscd_folders: Also list ``oscd_<city>_s2x10``: the OSCD cities read from their band
            folders with the ten 10 m / 20 m bands (after the three stacked OSCD pairs).

    Returns:
        36 pairs (39 with ``oscd_folders``), in this order: oscd_bercy, oscd_paris, oscd_rennes,
        taizhou, bern, san_francisco, yellow_river_coastline, yellow_river_inland_water,
        beijing_a, levir_test_7, levir_test_12, levir_test_102, shuguang, then ottawa, chao_lake,
        wenchuan, ombria_0113/0178/0212/0221, bastrop, alaska, dsifn_0_2/1_1/2_4/3_4/4_4,
        szada_1 ... szada_7.

    Raises:
        FileNotFoundError: If the data folder, a dataset folder or an expected file is missing.
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
    return _first_pairs(data, workdir, oscd_folders) + _added_pairs(data, workdir)


def _first_pairs(data: Path, workdir: Path, oscd_folders: bool) -> list[BenchmarkPair]:
    """The original 13 pairs (16 with ``oscd_folders``), names, order and encodings unchanged."""
    oscd = _folder(data, "oscd_s2_shared")
    pairs = [_oscd_pair(oscd, city, workdir / "oscd") for city in OSCD_CITIES]
    if oscd_folders:
        pairs += [_oscd_folder_pair(oscd, city, workdir / "oscd") for city in OSCD_CITIES]
    pairs.append(_taizhou_pair(_folder(data, "taizhou_landsat7_etm"), workdir / "taizhou"))
    sar = [
        ("bern", "bern_ers2_sar", "bern", ()),
        ("san_francisco", "san_francisco_ers2_sar", "san", ()),
        ("yellow_river_coastline", "yellow_river_coastline_sar", "yellow_B", ()),
        ("yellow_river_inland_water", "yellow_river_inland_water_sar", "yellow_C", (34,)),
    ]
    for name, folder, stem, ignore in sar:  # Yellow River inland: 34 = unknown (PROVENANCE)
        pairs.append(_triple(name, "sar", _folder(data, folder), stem, ".bmp",
                             ignore_values=ignore))
    beijing = _folder(data, "beijing_a_optical")
    pairs.append(
        BenchmarkPair(
            name="beijing_a",
            family="vhr",
            dataset="beijing",
            before=_existing(beijing / "beijing_A_1.jpg"),
            after=_existing(beijing / "beijing_A_2.jpg"),
            truth=_existing(beijing / "beijing_A_gt.jpg"),
            changed_values=(),
            truth_threshold=128,  # lossy JPEG mask: > 128 = changed (PROVENANCE)
        )
    )
    levir = _folder(data, "levir_cd_samples")
    pairs += [_tile(f"levir_{t}", "vhr", "levir", levir / "A" / f"{t}.png",
                    levir / "B" / f"{t}.png", levir / "label" / f"{t}.png") for t in LEVIR_TILES]
    shuguang = _folder(data, "shuguang_sar_optical_heterogeneous")
    pairs.append(_triple("shuguang", "heterogeneous", shuguang, "shuguang", ".bmp"))
    return pairs


def _added_pairs(data: Path, workdir: Path) -> list[BenchmarkPair]:
    """The pairs added after the original 13: SAR, then optical, then VHR."""
    ottawa = _folder(data, "ottawa_radarsat_sar")
    pairs = [
        # R=G=B BMP: band 1 only; the truth reads band 1 anyway.
        _tile("ottawa", "sar", "ottawa", ottawa / "ottawa_1.bmp", ottawa / "ottawa_2.bmp",
              ottawa / "ottawa_gt.bmp", bands=(1,)),
        _chao_lake_pair(_folder(data, "chao_lake_sar"), workdir / "chao_lake"),
        _mat_pair("wenchuan", "sar", _folder(data, "wenchuan_sar") / "Wenchuan_dataset.mat",
                  workdir / "wenchuan"),
    ]
    ombria = _folder(data, "ombria_s1_flood_sar")
    pairs += [_tile(f"ombria_{t}", "sar", "ombria", ombria / "before" / f"S1_before_{t}.png",
                    ombria / "after" / f"S1_after_{t}.png", ombria / "mask" / f"S1_mask_{t}.png")
              for t in OMBRIA_TILES]
    pairs += [
        _mat_pair("bastrop", "optical",
                  _folder(data, "bastrop_texas_fire") / "Bastrop_dataset.mat", workdir / "bastrop"),
        _mat_pair("alaska", "optical", _folder(data, "alaska_landsat") / "alaska_dataset.mat",
                  workdir / "alaska"),
    ]
    dsifn = _folder(data, "dsifn_samples")
    pairs += [_tile(f"dsifn_{t}", "vhr", "dsifn", dsifn / "A" / f"{t}.png",
                    dsifn / "B" / f"{t}.png", dsifn / "label" / f"{t}.png") for t in DSIFN_TILES]
    szada = _folder(data, "sztaki_szada")
    for n in SZADA_PAIRS:
        folder = _folder(szada, str(n))
        pair = _tile(f"szada_{n}", "vhr", "szada", _file_nocase(folder, "im1.bmp"),
                     _file_nocase(folder, "im2.bmp"), _file_nocase(folder, "gt.bmp"))
        # Hand-drawn masks: 0/255, plus one 213 pixel in 6/gt.BMP that PROVENANCE counts as
        # changed (its counts are "pixels > 128"), hence the threshold instead of (255,).
        pairs.append(dataclasses.replace(pair, changed_values=(), truth_threshold=128))
    return pairs


def _folder(parent: Path, name: str) -> Path:
    path = parent / name
    if not path.is_dir():
        raise FileNotFoundError(
            f"benchmark dataset folder {str(path)!r} not found: check the shared data"
        )
    return path


def _file_nocase(folder: Path, name: str) -> Path:
    """The one file of ``folder`` called ``name`` up to case (SZADA has ``im2.BMP`` too)."""
    matches = sorted(p for p in folder.iterdir() if p.name.lower() == name.lower())
    if len(matches) != 1:
        raise FileNotFoundError(
            f"expected one file {name!r} (any case) in {str(folder)!r}, found {len(matches)}"
        )
    return _existing(matches[0])


def _tile(
    name: str,
    family: Family,
    dataset: str,
    before: Path,
    after: Path,
    truth: Path,
    *,
    bands: tuple[int, ...] | None = None,
) -> BenchmarkPair:
    """Pair of files used in place with 255 = changed, every other truth value unchanged."""
    return BenchmarkPair(name=name, family=family, dataset=dataset, before=_existing(before),
                         after=_existing(after), truth=_existing(truth), changed_values=(255,),
                         bands=bands)


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
    """Pair whose files are ``<stem>_1``, ``<stem>_2`` and ``<stem>_gt`` with 255 = changed.

    The pair is the whole dataset: ``dataset`` is ``name``.
    """
    before, after, truth = (_existing(folder / f"{stem}_{k}{suffix}") for k in ("1", "2", "gt"))
    return BenchmarkPair(name=name, family=family, dataset=name, before=before, after=after,
                         truth=truth, changed_values=(255,), ignore_values=ignore_values)


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


def _write_plain(array: np.ndarray[Any, Any], out: Path) -> None:
    """Write the 2-D ``array`` (its dtype kept) as a GeoTIFF without CRS, identity transform."""
    profile = {
        "driver": "GTiff",
        "height": array.shape[0],
        "width": array.shape[1],
        "count": 1,
        "dtype": array.dtype.name,
        "crs": None,
        "transform": Affine.identity(),
        "compress": "deflate",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(out, "w", **profile) as dst:
            dst.write(array, 1)


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
    return BenchmarkPair(name=f"oscd_{city}", family="optical", dataset="oscd", before=before,
                         after=after, truth=truth, changed_values=(2,), unchanged_values=(1,))


def _oscd_folder_pair(folder: Path, city: str, workdir: Path) -> BenchmarkPair:
    """The OSCD city read from its band folders (10 bands, 10 m + 20 m), same truth."""
    stacked = _oscd_pair(folder, city, workdir)  # writes/reuses the truth on the t1 grid
    city_dir = folder / city
    for sub in ("imgs_1", "imgs_2"):
        for band in OSCD_S2X10_BANDS:
            _band_file(city_dir / sub, band)  # exactly one file per band, else a clear error
    return BenchmarkPair(name=f"oscd_{city}_s2x10", family="optical", dataset="oscd",
                         before=city_dir / "imgs_1", after=city_dir / "imgs_2", truth=stacked.truth,
                         changed_values=(2,), unchanged_values=(1,), bands=OSCD_S2X10_BANDS)


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
    return BenchmarkPair(name="taizhou", family="optical", dataset="taizhou", before=before,
                         after=after, truth=truth, changed_values=(2,), unchanged_values=(1,))


def _grey_through_palette(path: Path) -> np.ndarray[Any, Any]:
    """Band 1 of the palette image ``path`` mapped through its grey palette (PIL ``'L'``)."""
    with _open(path) as src:
        indexes = src.read(1)
        try:
            colormap = src.colormap(1)
        except ValueError as exc:
            raise ValueError(f"{str(path)!r} has no palette") from exc
    lut = np.zeros(256, dtype=np.uint8)
    for index, (red, green, blue, _alpha) in colormap.items():
        if not red == green == blue:
            raise ValueError(f"palette of {str(path)!r} is not grey at index {index}")
        lut[index] = red
    return lut[indexes]


def _chao_lake_pair(folder: Path, workdir: Path) -> BenchmarkPair:
    """Chao Lake: palette BMPs (raw indices 20..77) written as their grey values (0..255)."""
    t1 = _existing(folder / "Chao1_1.bmp")
    t2 = _existing(folder / "Chao1_2.bmp")
    # The truth palette maps 0 -> 0 and 255 -> 255, the only indices used: used in place.
    truth = _existing(folder / "Chao1_1gt.bmp")
    before = _write_cached(workdir / "chao_lake_t1.tif",
                           lambda p: _write_plain(_grey_through_palette(t1), p))
    after = _write_cached(workdir / "chao_lake_t2.tif",
                          lambda p: _write_plain(_grey_through_palette(t2), p))
    return BenchmarkPair(name="chao_lake", family="sar", dataset="chao_lake", before=before,
                         after=after, truth=truth, changed_values=(255,))


def _mat_pair(name: str, family: Family, mat: Path, workdir: Path) -> BenchmarkPair:
    """A ``.mat`` with 2-D ``before``, ``after`` and ``gt`` (1 = changed) as three GeoTIFFs."""
    _existing(mat)
    loaded: dict[str, np.ndarray[Any, Any]] = {}

    def array(key: str) -> np.ndarray[Any, Any]:
        if not loaded:
            from scipy.io import loadmat

            content = loadmat(mat)
            missing = [k for k in ("before", "after", "gt") if k not in content]
            if missing:
                raise ValueError(f"{str(mat)!r} has no variable(s) {missing}")
            arrays = {k: np.asarray(content[k]) for k in ("before", "after", "gt")}
            shapes = {k: a.shape for k, a in arrays.items()}
            if any(len(s) != 2 for s in shapes.values()) or len(set(shapes.values())) != 1:
                raise ValueError(f"{str(mat)!r}: before/after/gt must be 2-D of one shape, "
                                 f"got {shapes}")
            loaded.update(arrays)
        a = loaded[key]
        return np.ascontiguousarray(a.astype(np.float32) if a.dtype == np.float64 else a)

    paths = {
        key: _write_cached(workdir / f"{name}_{key}.tif", lambda p, k=key: _write_plain(array(k), p))
        for key in ("before", "after", "gt")
    }
    return BenchmarkPair(name=name, family=family, dataset=name, before=paths["before"],
                         after=paths["after"], truth=paths["gt"], changed_values=(1,))
