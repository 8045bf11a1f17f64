"""Pydantic parameter models: the one place where run options and their choices are declared.

Prefect builds the flows' parameter forms from these models and the command line derives its
flags from them (a flag is the kebab-case of its field), so every field has a description and
every closed set of values is a ``Literal``. Models are frozen and reject unknown keys.

The sensor family (``sensor``) supplies the defaults of the fields that depend on it
(:data:`SENSOR_DEFAULTS`, :data:`SENSOR_METHODS`). A :class:`DetectConfig` is always complete:
whatever is given (a config file, command-line flags, a flow run from the UI) is merged over
the family's defaults in one validator, so a partial sub-config keeps the other defaults.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from microchange.errors import ConfigError
from microchange.types import is_remote

__all__ = (
    "BAND_NAME_PATTERN",
    "DEEP_FIELD_METHODS",
    "DEEP_METHODS",
    "SCL_EXCLUDED",
    "SENSOR_DEFAULTS",
    "SENSOR_METHODS",
    "THRESHOLDS",
    "THRESHOLD_PATTERN",
    "Backbone",
    "DeepConfig",
    "Denoiser",
    "DetectConfig",
    "Device",
    "MaskConfig",
    "Method",
    "Objective",
    "PostprocessConfig",
    "Precision",
    "PreprocessConfig",
    "Radiometric",
    "ScorerName",
    "Sensor",
    "check_bands",
    "choices",
)

Sensor = Literal["optical", "sar"]
Method = Literal["cva", "pca-kmeans", "backbone", "learned"]
ScorerName = Literal["distance", "mahalanobis", "density", "cluster", "hybrid"]
Radiometric = Literal["none", "linear", "histogram"]
Denoiser = Literal["gaussian", "median", "bilateral"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16"]
Backbone = Literal["resnet18", "resnet34", "resnet50", "vgg16"]
Objective = Literal["cross", "cross-cal", "dae"]

THRESHOLDS: Final = ("auto", "otsu", "kittler-illingworth", "kmeans", "fpr:X", "value:X")
"""Threshold specs (X is a number)."""
_NUMBER = r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?"
THRESHOLD_PATTERN: Final = re.compile(
    rf"^(auto|otsu|kittler-illingworth|kmeans|fpr:{_NUMBER}|value:{_NUMBER})$")
BAND_NAME_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
"""A band name: letters, digits, '_' or '-' (e.g. B02, B8A, VV)."""
DEEP_METHODS: Final = ("backbone", "learned")


def choices(option: Any) -> tuple[str, ...]:
    """The values of a ``Literal`` option type, e.g. ``choices(Method)``."""
    return tuple(get_args(option))


def _sensor_dependent(schema: dict[str, Any]) -> None:
    """No default in the JSON schema: a form left empty takes the sensor family's default."""
    schema.pop("default", None)


class PreprocessConfig(BaseModel):
    """Preparation of both dates before features are extracted."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    coregister: bool = Field(
        True,
        description="Estimate the sub-pixel shift of AFTER against BEFORE by phase correlation "
        "on blocks spread over the raster, and correct it when above coregister_min_shift.",
    )
    coregister_min_shift: float = Field(
        0.1, ge=0.0, le=5.0, description="Smallest estimated shift in pixels that is corrected.")
    coregister_cell: int = Field(
        512, ge=0, le=8192,
        description="Side in pixels of the coarse grid cells on which local shifts are "
        "estimated, for distortions that vary over the raster (0 = one global shift). Used when "
        "the raster holds at least 2x2 cells; the field is applied when it varies by more than "
        "coregister_min_shift.",
    )
    log_transform: bool = Field(
        False,
        description="Work on log(x + c) of each band (sensor default: on for sar). For SAR "
        "amplitude this turns multiplicative speckle into additive noise and the band "
        "difference into the log-ratio.", json_schema_extra=_sensor_dependent,
    )
    radiometric: Radiometric = Field(
        "none",
        description="Relative radiometric normalisation of AFTER onto BEFORE, per band, fitted "
        "on pseudo-invariant pixels of the global sample: 'histogram' (quantile mapping: gain, "
        "offset and gamma), 'linear' (robust gain and offset) or 'none' (sensor default: "
        "histogram for optical, none for sar).", json_schema_extra=_sensor_dependent,
    )
    speckle_window: int = Field(
        0, ge=0, le=15,
        description="Side in pixels of the Lee speckle filter (odd, e.g. 5 or 7; 0 = off; "
        "sensor default: 5 for sar), applied to the values as read, before the log transform. "
        "Its speckle level is fitted on the global sample.", json_schema_extra=_sensor_dependent,
    )
    smoothing_sigma: float = Field(
        0.0, ge=0.0, le=8.0,
        description="Spatial scale in pixels of the denoising of both dates (0 = off; sensor "
        "default: 0.7 for optical, 1.5 for sar): the Gaussian's standard deviation, the median "
        "window's radius (rounded up) or the bilateral filter's spatial sigma.", json_schema_extra=_sensor_dependent,
    )
    denoise: Denoiser = Field(
        "gaussian",
        description="Denoising filter: 'gaussian' (smooths everything), 'median' (removes "
        "outliers, keeps step edges) or 'bilateral' (averages only neighbours within a few "
        "noise levels, fitted on the global sample, so edges stay sharp).",
    )

    @field_validator("coregister_cell")
    @classmethod
    def _cell_size(cls, value: int) -> int:
        if 0 < value < 64:
            raise ValueError(f"coregister_cell={value} is too small for phase correlation: use "
                             "0 (global shift only) or at least 64 px, e.g. 512")
        return value

    @field_validator("speckle_window")
    @classmethod
    def _odd_window(cls, value: int) -> int:
        if value != 0 and (value < 3 or value % 2 == 0):
            raise ValueError(f"speckle_window={value!r} must be 0 (off) or odd and >= 3, "
                             "e.g. 5 or 7")
        return value


class PostprocessConfig(BaseModel):
    """Clean-up of the thresholded mask, applied across tile borders without seams."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_region_px: int | None = Field(
        None, ge=1,
        description="Minimum mapping unit in pixels: connected changed regions smaller than "
        "this are dropped (1 keeps single-pixel micro-changes; sensor default: 9 for sar). "
        "Not together with min_region_m2.", json_schema_extra=_sensor_dependent,
    )
    min_region_m2: float | None = Field(
        None, gt=0,
        description="Minimum mapping unit in square metres, instead of min_region_px (needs a "
        "georeferenced grid).",
    )
    opening_radius: int = Field(
        0, ge=0, le=10, description="Radius in pixels of a morphological opening (0 = off).")
    closing_radius: int = Field(
        0, ge=0, le=10, description="Radius in pixels of a morphological closing (0 = off).")

    @model_validator(mode="before")
    @classmethod
    def _one_unit(cls, data: Any) -> Any:
        """min_region_px and min_region_m2 exclude each other; px = 1 when neither is given."""
        if not isinstance(data, dict):
            return data
        px, m2 = data.get("min_region_px"), data.get("min_region_m2")
        if px is not None and m2 is not None:
            raise ValueError(f"min_region_px={px!r} and min_region_m2={m2!r} are both given: "
                             "give the minimum mapping unit once, in pixels or in square metres")
        if px is None and m2 is None:
            return {**data, "min_region_px": 1}
        return data

    @property
    def halo(self) -> int:
        """Context pixels the morphology needs (each erosion/dilation consumes its radius)."""
        return 2 * (self.opening_radius + self.closing_radius)


class DeepConfig(BaseModel):
    """Options of the CNN feature extractors (methods 'backbone' and 'learned')."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device: Device = Field(
        "auto", description="Where the network runs: 'auto' picks CUDA when present, else the "
        "CPU.")
    precision: Precision = Field(
        "auto",
        description="Arithmetic of the network at inference: 'auto' runs bfloat16 autocast on "
        "CUDA and on CPUs with bf16 instructions (AVX512-BF16, AMX), float32 on other CPUs; "
        "'fp32' always float32; 'bf16' always bfloat16 (emulated, slower, on other CPUs).",
    )
    backbone: Backbone = Field("resnet18", description="torchvision network of 'backbone'.")
    layers: tuple[str, ...] | None = Field(
        None, description="Layers of the backbone whose features are combined (default: the "
        "backbone's own).")
    weights: str | None = Field(
        None, description="Local file with pretrained backbone weights (a state dict); default: "
        "random weights.")
    model: str | None = Field(
        None, description="Checkpoint of 'learned' written by `microchange train`; default: "
        "train a network on the pair itself.")
    objective: Objective | None = Field(
        None, description="Unsupervised objective of 'learned': 'cross', 'cross-cal' or 'dae' "
        "(default: the checkpoint's, else cross).")
    epochs: int = Field(30, ge=1, le=1000, description="Maximum training epochs of 'learned'.")
    patience: int = Field(
        3, ge=1, le=100, description="Training of 'learned' stops after this many epochs "
        "without improvement.")


DEEP_FIELD_METHODS: Final[dict[str, tuple[str, ...]]] = {
    "device": DEEP_METHODS, "precision": DEEP_METHODS, "backbone": ("backbone",),
    "layers": ("backbone",), "weights": ("backbone",), "model": ("learned",),
    "objective": ("learned",), "epochs": ("learned",), "patience": ("learned",),
}
"""DeepConfig field -> the methods it applies to (set for another method: an error)."""

SCL_EXCLUDED: Final = (0, 1, 3, 8, 9, 10, 11)
"""Sentinel-2 scene classification (SCL) codes excluded by default: 0 no data, 1 saturated or
defective, 3 cloud shadow, 8 cloud medium probability, 9 cloud high probability, 10 thin cirrus,
11 snow or ice."""


class MaskConfig(BaseModel):
    """Per-date rasters that exclude pixels (clouds, shadows, snow, no data) from the analysis.

    Excluded pixels are nodata in every output, never changed. Mask rasters may be on any grid
    (e.g. the 20 m Sentinel-2 SCL under 10 m bands): they are read onto BEFORE's grid with
    nearest resampling; pixels outside a mask raster are excluded.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    before_mask: str | None = Field(
        None, description="Valid-data mask raster of BEFORE (band 1): nonzero = valid, 0 = "
        "excluded (the other way round with invert_masks), e.g. a cloud-free mask.")
    after_mask: str | None = Field(
        None, description="Valid-data mask raster of AFTER (band 1), as before_mask.")
    before_classes: str | None = Field(
        None, description="Class raster of BEFORE (band 1), e.g. the Sentinel-2 scene "
        "classification layer (SCL): pixels whose class is in exclude_classes are excluded.")
    after_classes: str | None = Field(
        None, description="Class raster of AFTER (band 1), as before_classes.")
    exclude_classes: tuple[int, ...] = Field(
        SCL_EXCLUDED,
        description="Class codes excluded by the class rasters. Default: Sentinel-2 SCL 0 no "
        "data, 1 saturated/defective, 3 cloud shadow, 8 and 9 clouds, 10 thin cirrus, 11 "
        "snow/ice.",
    )
    invert_masks: bool = Field(
        False, description="The valid-data mask rasters mark EXCLUDED pixels with nonzero "
        "values (e.g. a cloud mask where 1 = cloud).")

    @field_validator("before_mask", "after_mask", "before_classes", "after_classes")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        """Paths become absolute, so that every stage (in any process) reads the same file.

        A /vsi path or URL is kept as given.
        """
        if value is None:
            return None
        if not value.strip():
            raise ValueError("mask path is empty: give a raster file, or leave it unset")
        if is_remote(value):
            return value
        return str(Path(value).expanduser().absolute())

    @property
    def active(self) -> bool:
        """True when at least one mask or class raster is set."""
        return any(v is not None for v in (self.before_mask, self.after_mask,
                                           self.before_classes, self.after_classes))


SENSOR_DEFAULTS: Final[dict[str, dict[str, dict[str, Any]]]] = {
    "optical": {"preprocess": {"log_transform": False, "smoothing_sigma": 0.7,
                               "radiometric": "histogram", "speckle_window": 0},
                "postprocess": {"min_region_px": 1}},
    # SAR: log-ratios, a 5 x 5 Lee filter; 3 x 3 regions are the smallest that filter and
    # sigma-1.5 smoothing resolve (isolated speckle survivors are smaller).
    "sar": {"preprocess": {"log_transform": True, "smoothing_sigma": 1.5, "radiometric": "none",
                           "speckle_window": 5},
            "postprocess": {"min_region_px": 9}},
}
"""Sensor family -> sub-config fields it sets unless they are given."""

SENSOR_METHODS: Final[dict[str, tuple[Method, ScorerName | None]]] = {
    "optical": ("learned", None),
    "sar": ("learned", None),
}
"""Sensor family -> (method, scorer) used when no method is given (docs: *The deep method*): a
CNN trained on the pair and PCA-KMeans clustering of its residuals, on every family."""

_EXCLUSIVE: Final = {"min_region_m2": "min_region_px"}
"""Given field -> default field it replaces when merging over the sensor's defaults."""


def _given(value: Any) -> dict[str, Any]:
    """The fields explicitly given in a sub-config (a dict, a model, or None)."""
    if value is None:
        return {}
    if isinstance(value, BaseModel):
        return {k: getattr(value, k) for k in value.model_fields_set}
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if v is not None}
    return value  # type: ignore[no-any-return]  # not a mapping: the field validator reports it


class DetectConfig(BaseModel):
    """Parameters of one change-detection run.

    Fields that are not given take the default of the sensor family chosen with ``sensor``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    sensor: Sensor = Field(
        "optical",
        description="Sensor family whose defaults apply: 'optical' (multispectral/RGB) or 'sar'.",
    )
    method: Method | None = Field(
        None,
        description="Change detection method; default: the sensor family's ('learned': a CNN "
        "trained on the pair and PCA-KMeans clustering of its residuals, on optical and sar).",
    )
    scorer: ScorerName | None = Field(
        None,
        description="Replace the method's own scorer: 'distance' (change-vector magnitude), "
        "'mahalanobis' (robust covariance of the differences), 'density' (tail probability "
        "under a Gaussian mixture of the no-change differences), 'cluster' (PCA-KMeans margin), "
        "'hybrid' (cluster, or a pixel's own magnitude above its 'auto' threshold); all are "
        "fitted on the global sample. Default: the method's own.",
    )
    threshold: str | None = Field(
        None,
        description="How scores become a change mask, fitted on the global sample: 'auto' (Otsu "
        "where the scores show evidence of change, else a 1e-4 false-alarm bound), 'otsu', "
        "'kittler-illingworth', 'kmeans', 'fpr:X' (false-alarm rate X under a robust null model, "
        "e.g. fpr:0.001) or 'value:X' (fixed score X); default: the method's own.",
    )
    tile_size: int = Field(
        512, ge=32, le=8192,
        description="Side of the square processing tiles in pixels; results do not depend on it.",
    )
    bands: tuple[int | str, ...] | None = Field(
        None,
        description="Bands used from both inputs, in order: 1-based indexes into multi-band "
        "files (e.g. [1, 2, 3]), or band names (e.g. ['B02', 'B03']) that pick the single-band "
        "files of a folder/glob input by a whole token of their file name (or the bands of a "
        "file by description). Default: all bands of a file (a folder needs names).",
    )
    sample_pixels: int = Field(
        1_000_000, ge=10_000, le=50_000_000,
        description="Pixels in the global sample that fits statistics, the scorer and the "
        "threshold (spread over the whole raster; smaller rasters are used whole).",
    )
    seed: int = Field(0, ge=0, description="Seed of the global sample (same seed, same result).")
    batch_tiles: int = Field(
        4, ge=1, le=256,
        description="Tiles scored together: one CNN batch, and one task of a flow run.",
    )
    preprocess: PreprocessConfig = Field(
        default_factory=PreprocessConfig,
        description="Preprocessing; fields not given take the sensor family's defaults.",
        json_schema_extra=_sensor_dependent,
    )
    postprocess: PostprocessConfig = Field(
        default_factory=PostprocessConfig,
        description="Mask clean-up (minimum mapping unit, opening, closing); fields not given "
        "take the sensor family's defaults.", json_schema_extra=_sensor_dependent,
    )
    deep: DeepConfig = Field(
        default_factory=DeepConfig,
        description="Options of the deep methods 'backbone' and 'learned' (an error for others).",
    )
    masks: MaskConfig = Field(
        default_factory=MaskConfig,
        description="Per-date valid-data masks and class rasters (e.g. Sentinel-2 SCL); none by "
        "default.",
    )

    @model_validator(mode="before")
    @classmethod
    def _sensor_defaults(cls, data: Any) -> Any:
        """Merge what is given over the sensor family's defaults (the same for every caller)."""
        if not isinstance(data, dict):
            return data
        data = {k: v for k, v in data.items() if v is not None}  # None: not given
        sensor = data.get("sensor", "optical")
        if sensor not in SENSOR_DEFAULTS:
            return data  # the sensor field reports it
        for key, defaults in SENSOR_DEFAULTS[sensor].items():
            given = _given(data.get(key))
            if not isinstance(given, dict):
                continue
            base = {k: v for k, v in defaults.items()
                    if not any(_EXCLUSIVE.get(g) == k for g in given)}
            data[key] = {**base, **given}
        return data

    @field_validator("threshold")
    @classmethod
    def _check_threshold(cls, value: str | None) -> str | None:
        if value is not None and not THRESHOLD_PATTERN.match(value):
            raise ValueError(f"invalid threshold {value!r}: use one of {', '.join(THRESHOLDS)} "
                             "with a number X (e.g. 'fpr:0.001', 'value:2.5')")
        return value

    @field_validator("bands", mode="before")
    @classmethod
    def _digits_are_indexes(cls, value: object) -> object:
        """'2' means band 2 (a band name must hold a letter)."""
        if isinstance(value, list | tuple):
            return tuple(int(v) if isinstance(v, str) and v.strip().isdigit() else v
                         for v in value)
        return value

    @field_validator("bands")
    @classmethod
    def _check_bands(cls, value: tuple[int | str, ...] | None) -> tuple[int | str, ...] | None:
        if value is None:
            return None
        check_bands(value)
        return value

    @model_validator(mode="after")
    def _deep_options_apply(self) -> DetectConfig:
        """A deep option set away from its default must apply to the method."""
        default, method = DeepConfig(), self.resolved_method()[0]
        for name, methods in DEEP_FIELD_METHODS.items():
            value = getattr(self.deep, name)
            if value != getattr(default, name) and method not in methods:
                which = " or ".join(repr(m) for m in methods)
                raise ValueError(f"{name}={value!r} applies to method {which}, not "
                                 f"{method!r}: drop it or choose that method")
        return self

    def resolved_method(self) -> tuple[Method, ScorerName | None]:
        """(method, scorer) in force: the given ones, else the sensor family's.

        A method given without a scorer keeps its own scorer (None).
        """
        if self.method is None:
            method, scorer = SENSOR_METHODS[self.sensor]
            return method, self.scorer if self.scorer is not None else scorer
        return self.method, self.scorer


def check_bands(bands: tuple[int | str, ...], *, role: str = "bands") -> None:
    """Check a band selection: 1-based indexes or band names, not mixed, no name twice.

    Raises:
        ConfigError: With the bad value and the fix (a ``ValueError``, so pydantic reports it).
    """
    if not bands:
        raise ConfigError(f"{role} is empty: give 1-based band indexes (1,2,3) or band names "
                         "(B02,B03), or nothing for all bands")
    names = [b for b in bands if isinstance(b, str)]
    ints = [b for b in bands if not isinstance(b, str)]
    if names and ints:
        raise ConfigError(f"{role} {list(bands)!r} mix indexes and names: use indexes (e.g. "
                         "1,2,3) for the bands of a multi-band file, or names (e.g. B02,B03,B04) "
                         "for the files of a folder, not both")
    if ints and min(ints) < 1:
        raise ConfigError(f"{role} {list(bands)!r}: indexes are 1-based (the first band is 1)")
    bad = [n for n in names if not BAND_NAME_PATTERN.match(n)]
    if bad:
        raise ConfigError(f"{role}: invalid band name(s) {bad!r}: letters, digits, '_' or '-', "
                         "e.g. B02, B8A, VV")
    folded = [n.lower() for n in names]
    dup = sorted({n for n in names if folded.count(n.lower()) > 1})
    if dup:
        raise ConfigError(f"{role}: band name(s) {dup!r} given twice: list each band once")
