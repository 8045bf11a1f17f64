"""The 'backbone' method's features: a truncated torchvision CNN (deep CVA)."""

from microchange.features.backbone.extractor import BACKBONES, BackboneFeatures
from microchange.features.backbone.trunk import DEFAULT_LAYERS
from microchange.features.backbone.weights import load_state_dict_file

__all__ = ("BACKBONES", "DEFAULT_LAYERS", "BackboneFeatures", "load_state_dict_file")
