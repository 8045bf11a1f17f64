"""Pydantic parameter models: the one place where run options are declared and documented.

Prefect builds the deployment's parameter form from these models, and the CLI maps its flags onto
them, so every field has a description. Models are frozen (hashable, safe to share between tasks)
and reject unknown keys.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from microchange.denoise import Denoiser
from microchange.scoring.thresholds import THRESHOLD_PATTERN, THRESHOLDS
from microchange.speckle import check_window

__all__ = (
    "METHOD_SCORERS",
    "POSTPROCESS_DEFAULTS",
    "SCL_EXCLUDED",
    "SENSOR_DEFAULTS",
    "SENSOR_METHODS",
    "DeepConfig",
    "DetectConfig",
    "MaskConfig",
    "PostprocessConfig",
    "PreprocessConfig",
    "Sensor",
)

Sensor = Literal["optical", "sar"]
_BAND_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")




class PreprocessConfig(BaseModel):
    """Preparation of both dates before features are extracted."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    coregister: bool = Field(
        True,
        description=(
            "Estimate the global sub-pixel shift of AFTER against BEFORE by phase correlation "
            "on blocks spread over the raster, and correct it when above coregister_min_shift."
        ),
    )
    coregister_min_shift: float = Field(
        0.1,
        ge=0.0,
        le=5.0,
        description="Smallest estimated shift in pixels that is corrected.",
    )
    coregister_cell: int = Field(
        512,
        ge=0,
        le=8192,
        description=(
            "Side in pixels of the coarse grid cells on which local shifts are estimated, for "
            "distortions that vary over the raster (0 = one global shift). Used when the raster "
            "holds at least 2x2 cells; the field is applied when it varies by more than "
            "coregister_min_shift."
        ),
    )
    log_transform: bool = Field(
        False,
        description=(
            "Work on log(1 + value) of each band. For SAR amplitude this turns multiplicative "
            "speckle into additive noise and the band difference into the log-ratio."
        ),
    )
    radiometric: Literal["none", "linear", "histogram"] = Field(
        "none",
        description=(
            "Relative radiometric normalisation of AFTER onto BEFORE, per band, fitted on "
            "pseudo-invariant pixels of the global sample: 'histogram' (quantile mapping: "
            "removes gain, offset and gamma), 'linear' (robust gain and offset) or 'none'."
        ),
    )
    speckle_window: int = Field(
        0,
        ge=0,
        le=15,
        description=(
            "Side in pixels of the Lee speckle filter (odd, e.g. 5 or 7; 0 = off), applied to the "
            "values as read, before the log transform. Its speckle level is fitted on the global "
            "sample."
        ),
    )
    smoothing_sigma: float = Field(
        0.0,
        ge=0.0,
        le=8.0,
        description=(
            "Spatial scale in pixels of the denoising filter applied to both dates (0 = off): "
            "the Gaussian's standard deviation, the median window's radius (rounded up) or the "
            "bilateral filter's spatial sigma. Nodata never leaks into valid pixels."
        ),
    )
    denoise: Denoiser = Field(
        "gaussian",
        description=(
            "Denoising filter: 'gaussian' (smooths everything), 'median' (removes outliers, keeps "
            "step edges) or 'bilateral' (averages only neighbours within a few noise levels, "
            "fitted on the global sample, so edges stay sharp)."
        ),
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
        return check_window(value)


class PostprocessConfig(BaseModel):
    """Clean-up of the thresholded mask, applied across tile borders without seams."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_region_px: int = Field(
        1,
        ge=1,
        description=(
            "Minimum mapping unit in pixels: connected changed regions smaller than this are "
            "dropped (1 keeps single-pixel micro-changes)."
        ),
    )
    min_region_m2: float | None = Field(
        None,
        ge=0,
        description="Minimum mapping unit in square metres (needs a georeferenced grid); "
        "overrides min_region_px.",
    )
    opening_radius: int = Field(
        0, ge=0, le=10, description="Radius in pixels of a morphological opening (0 = off)."
    )
    closing_radius: int = Field(
        0, ge=0, le=10, description="Radius in pixels of a morphological closing (0 = off)."
    )

    @property
    def halo(self) -> int:
        """Context pixels the morphology needs (each erosion/dilation consumes its radius)."""
        return 2 * (self.opening_radius + self.closing_radius)


class DeepConfig(BaseModel):
    """Options of the CNN feature extractors."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="Where the network runs: 'auto' picks CUDA when present, else the CPU.",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="Arithmetic of the network: 'auto' runs bfloat16 autocast on CUDA and on "
        "CPUs with bf16 instructions (AVX512-BF16, AMX), float32 on other CPUs; 'fp32' always "
        "float32; 'bf16' always bfloat16 (emulated, slower, on CPUs without bf16).",
    )
    backbone: Literal["resnet18", "resnet34", "resnet50", "vgg16"] = Field(
        "resnet18", description="torchvision backbone of the 'backbone' method."
    )
    layers: tuple[str, ...] | None = Field(
        None,
        description="Backbone layers whose features are combined (None: the backbone default).",
    )
    weights: str | None = Field(
        None,
        description="Local file with pretrained backbone weights (state dict); None = random.",
    )
    model: str | None = Field(
        None,
        description="Checkpoint of a 'learned' extractor from `microchange train`; None trains "
        "one on the pair itself.",
    )
    objective: str | None = Field(
        None,
        description="Unsupervised objective of the 'learned' extractor: 'cross', 'cross-cal' or "
        "'dae' (None: the sensor's default, cross on optical, cross-cal on SAR).",
    )
    epochs: int = Field(30, ge=1, le=1000, description="Maximum training epochs.")
    patience: int = Field(
        3, ge=1, le=100, description="Stop training after this many epochs without improvement."
    )


SCL_EXCLUDED = (0, 1, 3, 8, 9, 10, 11)
"""Sentinel-2 scene classification (SCL) codes excluded by default: 0 no data, 1 saturated or
defective, 3 cloud shadow, 8 cloud medium probability, 9 cloud high probability, 10 thin cirrus,
11 snow or ice."""


class MaskConfig(BaseModel):
    """Per-date rasters that exclude pixels (clouds, shadows, snow, no data) from the analysis.

    Excluded pixels are invalid: nodata in every output, never changed. Mask rasters may be on
    any grid (e.g. the 20 m Sentinel-2 SCL under 10 m bands): they are read onto BEFORE's grid
    window by window with nearest resampling; pixels outside a mask raster are invalid.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    before_mask: str | None = Field(
        None,
        description="Valid-data mask raster of BEFORE (band 1): nonzero = valid, 0 = excluded "
        "(the other way round with invert), e.g. a cloud-free mask.",
    )
    after_mask: str | None = Field(
        None, description="Valid-data mask raster of AFTER (band 1), as before_mask."
    )
    before_classes: str | None = Field(
        None,
        description="Class raster of BEFORE (band 1), e.g. the Sentinel-2 scene classification "
        "layer (SCL): pixels whose class is in exclude_classes are excluded.",
    )
    after_classes: str | None = Field(
        None, description="Class raster of AFTER (band 1), as before_classes."
    )
    exclude_classes: tuple[int, ...] = Field(
        SCL_EXCLUDED,
        description="Class codes excluded by the class rasters. Default: Sentinel-2 SCL 0 no "
        "data, 1 saturated/defective, 3 cloud shadow, 8 cloud medium probability, 9 cloud high "
        "probability, 10 thin cirrus, 11 snow/ice.",
    )
    invert: bool = Field(
        False,
        description="The valid-data mask rasters mark EXCLUDED pixels with nonzero values "
        "(e.g. a cloud mask where 1 = cloud).",
    )

    @field_validator("before_mask", "after_mask", "before_classes", "after_classes")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        """Paths become absolute, so that every stage (in any process) reads the same file."""
        if value is None:
            return None
        if not value.strip():
            raise ValueError("mask path is empty: give a raster file, or leave it unset")
        return str(Path(value).expanduser().absolute())

    @property
    def active(self) -> bool:
        """True when at least one mask or class raster is set."""
        return any(v is not None for v in (self.before_mask, self.after_mask,
                                           self.before_classes, self.after_classes))


POSTPROCESS_DEFAULTS: dict[str, PostprocessConfig] = {
    "optical": PostprocessConfig(min_region_px=1),
    # 3 x 3: the smallest region the 5 x 5 Lee filter and sigma-1.5 smoothing resolve; isolated
    # speckle survivors are smaller. Measured SAR mean F1 0.836 (1 px) -> 0.841 (9 px).
    "sar": PostprocessConfig(min_region_px=9),
}

SENSOR_METHODS: dict[str, tuple[str, str | None]] = {
    "optical": ("cva", None),
    "sar": ("cva", "density"),
}
"""Sensor family -> (method, scorer) used when no method is given: the best family mean F1 of
``benchmarks/accuracy.py`` among the combinations that keep a no-change pair under 0.1 %
changed and keep the demo scene's changes under 25 px as CVA does, a difference under 0.01
counting as a tie won by the faster; a deep method must beat every classical one and run at
their speed, >= 2 MPx/s at 4096^2 on 2 cores (README, *Accuracy*). Optical: ``learned`` (hybrid,
0.338, 0.338-0.360 over seeds 0-2) beats PCA-KMeans (0.322, which loses small changes) and CVA
(0.297) but runs at 1.38-1.57 MPx/s against CVA's 2.48-2.78: it is one flag away, ``--method
learned``. SAR: ``learned`` (cross-cal, kappa 0.818-0.829 over seeds) beats CVA (0.816) and
PCA-KMeans (0.812) but not CVA + density (0.837)."""

METHOD_SCORERS: dict[tuple[str, str], str] = {("learned", "optical"): "hybrid"}
"""(method, sensor family) -> scorer used when a method is given without a scorer and the
method's own scorer is not its best there. Measured with ``benchmarks/accuracy.py`` (README,
*Accuracy*): optical mean F1 of ``learned`` 0.340 with the hybrid scorer (0.340-0.347 over seeds
0-2), 0.344 with cluster, 0.337 with its distance + ``auto`` threshold (0.299-0.339 over seeds);
cluster alone loses changes under 25 px (2 of the demo's 14), hybrid keeps them (6, as CVA).
On SAR ``learned`` keeps its own distance + ``auto`` scorer: its default objective there,
``cross-cal``, divides the residuals by a fitted per-pixel scale, so one global threshold fits
smooth and textured areas (SAR mean kappa 0.818-0.829 over seeds 0-2, 0.804-0.826 with cluster).
With the plain ``cross`` objective, cluster was best (0.804; hybrid 0.696, distance 0.668)."""

SENSOR_DEFAULTS: dict[str, PreprocessConfig] = {
    "optical": PreprocessConfig(log_transform=False, smoothing_sigma=0.7,
                                radiometric="histogram"),
    "sar": PreprocessConfig(log_transform=True, smoothing_sigma=1.5, radiometric="none",
                            speckle_window=5),
}


class DetectConfig(BaseModel):
    """Parameters of one change-detection run.

    Fields left at ``None`` take the default of the sensor family chosen with ``sensor``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    sensor: Sensor = Field(
        "optical",
        description="Sensor family whose defaults apply: 'optical' (multispectral/RGB) or 'sar'.",
    )
    method: str | None = Field(
        None,
        description=(
            "Change detection method by name (see `microchange detect --help`); None uses the "
            "sensor family's best measured method: 'cva' for optical, 'cva' with the 'density' "
            "scorer for sar."
        ),
    )
    scorer: Literal["distance", "mahalanobis", "density", "cluster", "hybrid"] | None = Field(
        None,
        description=(
            "Replace the method's own scorer: 'distance' (change-vector magnitude), "
            "'mahalanobis' (robust covariance of the differences), 'density' (tail probability "
            "under a Gaussian mixture of the no-change differences), 'cluster' (PCA-KMeans "
            "margin), 'hybrid' (cluster, or a pixel's own magnitude above its 'auto' "
            "threshold); all are fitted on the global sample."
        ),
    )
    threshold: str | None = Field(
        None,
        description=(
            "How scores become a change mask, fitted on the global sample: 'auto' (Otsu where "
            "the scores show evidence of change, else a 1e-4 false-alarm bound), 'otsu', "
            "'kittler-illingworth', 'kmeans', 'fpr:X' (false-alarm rate X under a robust null "
            "model, e.g. fpr:0.001) or 'value:X' (fixed score X); None uses the method's default."
        ),
    )
    tile_size: int = Field(
        512,
        ge=32,
        le=8192,
        description="Side of the square processing tiles in pixels; results do not depend on it.",
    )
    bands: tuple[int | str, ...] | None = Field(
        None,
        description=(
            "Bands used from both inputs, in order: 1-based indexes into multi-band files "
            "(e.g. [1, 2, 3]), or band names (e.g. ['B02', 'B03']) that pick the single-band "
            "files of a folder/glob input by a whole token of their file name (or the bands of "
            "a file by description). Indexes and names cannot be mixed. Default: all bands of "
            "a file (a folder needs names)."
        ),
    )
    preprocess: PreprocessConfig | None = Field(
        None,
        description="Preprocessing options; None uses the defaults of the sensor family.",
    )
    sample_pixels: int = Field(
        1_000_000,
        ge=10_000,
        le=50_000_000,
        description=(
            "Pixels in the global sample used to fit statistics, the scorer and the threshold "
            "(spread over the whole raster; smaller rasters are used whole)."
        ),
    )
    seed: int = Field(0, ge=0, description="Seed of the global sample (same seed, same result).")
    postprocess: PostprocessConfig | None = Field(
        None,
        description="Mask clean-up (minimum mapping unit, opening, closing); None uses the "
        "defaults of the sensor family.",
    )
    batch_tiles: int = Field(
        4,
        ge=1,
        le=256,
        description="Tiles scored together (one CNN batch); bounds memory to a few tiles.",
    )
    deep: DeepConfig = Field(
        default_factory=lambda: DeepConfig(),
        description="Options of the deep methods ('backbone', 'learned'); ignored by others.",
    )
    masks: MaskConfig = Field(
        default_factory=lambda: MaskConfig(),
        description="Per-date valid-data masks and class rasters (e.g. Sentinel-2 SCL) whose "
        "excluded pixels become nodata; none by default.",
    )

    @field_validator("threshold")
    @classmethod
    def _check_threshold(cls, value: str | None) -> str | None:
        if value is not None and not THRESHOLD_PATTERN.match(value):
            raise ValueError(
                f"invalid threshold {value!r}: use one of {', '.join(THRESHOLDS)} with a number "
                "X (e.g. 'fpr:0.001', 'value:2.5')"
            )
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
        if value is not None:
            if not value:
                raise ValueError("bands is empty: give 1-based band indexes (1,2,3) or band "
                                 "names (B02,B03), or None for all bands")
            names = [v for v in value if isinstance(v, str)]
            ints = [v for v in value if not isinstance(v, str)]
            if names and ints:
                raise ValueError(
                    f"bands {list(value)!r} mix indexes and names: use indexes (e.g. 1,2,3) for "
                    "the bands of a multi-band file, or names (e.g. B02,B03,B04) for the files "
                    "of a folder, not both"
                )
            if ints and min(ints) < 1:
                raise ValueError(f"bands {value!r}: indexes are 1-based (the first band is 1)")
            bad = [n for n in names if not _BAND_NAME.match(n)]
            if bad:
                raise ValueError(f"invalid band name(s) {bad!r}: letters, digits, '_' or '-', "
                                 "e.g. B02, B8A, VV")
            folded = [n.lower() for n in names]
            if len(set(folded)) != len(folded):
                raise ValueError(f"bands {list(value)!r}: a band name is given twice")
        return value

    def resolved_method(self) -> tuple[str, str | None]:
        """(method, scorer) in force: explicit ones, else the sensor family's.

        An explicit method keeps its own scorer unless ``scorer`` is given, or the sensor family
        has a better one for it (:data:`METHOD_SCORERS`).
        """
        if self.method is not None:
            if self.scorer is None:
                return self.method, METHOD_SCORERS.get((self.method, self.sensor))
            return self.method, self.scorer
        method, scorer = SENSOR_METHODS[self.sensor]
        return method, self.scorer if self.scorer is not None else scorer

    def resolved_postprocess(self) -> PostprocessConfig:
        """The post-processing options in force: explicit ones, else the sensor family's."""
        return self.postprocess if self.postprocess is not None else POSTPROCESS_DEFAULTS[
            self.sensor]

    def resolved_preprocess(self) -> PreprocessConfig:
        """The preprocessing options in force: explicit ones, else the sensor family's."""
        return self.preprocess if self.preprocess is not None else SENSOR_DEFAULTS[self.sensor]
