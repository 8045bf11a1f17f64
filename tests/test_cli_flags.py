"""Each flag of `microchange detect` sets the DetectConfig field of its own name, to its value."""

from typing import Any

import pytest

from microchange.cli import build_parser
from microchange.cli.options import CONFIG_SECTIONS, config_from_args
from microchange.config import DetectConfig

# field (section.name for sub-configs) -> (flags given, value expected in the config);
# every value differs from the field's default, so a flag that sets nothing fails.
FLAGS: dict[str, tuple[list[str], Any]] = {
    "sensor": (["--sensor", "sar"], "sar"),
    "method": (["--method", "pca-kmeans"], "pca-kmeans"),
    "scorer": (["--scorer", "density"], "density"),
    "threshold": (["--threshold", "fpr:0.01"], "fpr:0.01"),
    "tile_size": (["--tile-size", "256"], 256),
    "bands": (["--bands", "3,1"], (3, 1)),
    "sample_pixels": (["--sample-pixels", "20000"], 20000),
    "seed": (["--seed", "7"], 7),
    "batch_tiles": (["--batch-tiles", "2"], 2),
    "preprocess.coregister": (["--no-coregister"], False),
    "preprocess.coregister_min_shift": (["--coregister-min-shift", "0.25"], 0.25),
    "preprocess.coregister_cell": (["--coregister-cell", "128"], 128),
    "preprocess.log_transform": (["--log-transform"], True),
    "preprocess.radiometric": (["--radiometric", "linear"], "linear"),
    "preprocess.speckle_window": (["--speckle-window", "7"], 7),
    "preprocess.smoothing_sigma": (["--smoothing-sigma", "1.5"], 1.5),
    "preprocess.denoise": (["--denoise", "median"], "median"),
    "postprocess.min_region_px": (["--min-region-px", "5"], 5),
    "postprocess.min_region_m2": (["--min-region-m2", "250"], 250.0),
    "postprocess.opening_radius": (["--opening-radius", "2"], 2),
    "postprocess.closing_radius": (["--closing-radius", "1"], 1),
    "deep.device": (["--device", "cpu"], "cpu"),
    "deep.precision": (["--precision", "bf16"], "bf16"),
    "deep.backbone": (["--backbone", "resnet34", "--method", "backbone"], "resnet34"),
    "deep.layers": (["--layers", "layer2,layer3", "--method", "backbone"], ("layer2", "layer3")),
    "deep.weights": (["--weights", "w.pth", "--method", "backbone"], "w.pth"),
    "deep.model": (["--model", "m.ckpt"], "m.ckpt"),
    "deep.objective": (["--objective", "dae"], "dae"),
    "deep.epochs": (["--epochs", "5"], 5),
    "deep.patience": (["--patience", "2"], 2),
    "masks.before_mask": (["--before-mask", "/data/bm.tif"], "/data/bm.tif"),
    "masks.after_mask": (["--after-mask", "/data/am.tif"], "/data/am.tif"),
    "masks.before_classes": (["--before-classes", "/data/bc.tif"], "/data/bc.tif"),
    "masks.after_classes": (["--after-classes", "/data/ac.tif"], "/data/ac.tif"),
    "masks.exclude_classes": (["--exclude-classes", "3,8"], (3, 8)),
    "masks.invert_masks": (["--invert-masks"], True),
}


def _field(config: DetectConfig, path: str) -> Any:
    value: Any = config
    for part in path.split("."):
        value = getattr(value, part)
    return value


def test_the_table_names_every_config_field() -> None:
    fields = {n for n in DetectConfig.model_fields if n not in CONFIG_SECTIONS}
    for section in CONFIG_SECTIONS:
        model: Any = DetectConfig.model_fields[section].annotation
        fields |= {f"{section}.{n}" for n in model.model_fields}
    assert set(FLAGS) == fields


@pytest.mark.parametrize("field", sorted(FLAGS))
def test_each_flag_sets_its_config_field(field: str) -> None:
    argv, expected = FLAGS[field]
    name = field.rsplit(".", 1)[-1].replace("_", "-")
    assert argv[0] in (f"--{name}", f"--no-{name}")  # one name for one thing
    assert _field(DetectConfig(), field) != expected
    args = build_parser().parse_args(["detect", "b.tif", "a.tif", "--out", "o", *argv])
    assert _field(config_from_args(args), field) == expected
