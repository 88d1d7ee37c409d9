"""The DeepIS network, its configuration, presets and complexity figures."""

from deepis_rt.model.base import DeepISNetwork, check_spatial_size, nearest_valid_size
from deepis_rt.model.build import build_model
from deepis_rt.model.complexity import Complexity, complexity
from deepis_rt.model.config import PRESETS, TILE_ZYX, ModelConfig, preset_config
from deepis_rt.model.deepis2020 import DeepIS2020
from deepis_rt.model.network import DeepIS

__all__ = [
    "DeepIS",
    "DeepIS2020",
    "DeepISNetwork",
    "ModelConfig",
    "PRESETS",
    "TILE_ZYX",
    "build_model",
    "check_spatial_size",
    "complexity",
    "Complexity",
    "nearest_valid_size",
    "preset_config",
]
