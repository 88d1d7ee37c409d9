"""The DeepIS network, its configuration, presets and complexity figures."""

from deepis_rt.model.complexity import Complexity, complexity
from deepis_rt.model.config import PRESETS, TILE_ZYX, ModelConfig, preset_config
from deepis_rt.model.network import DeepIS, build_model, check_spatial_size, nearest_valid_size

__all__ = [
    "DeepIS",
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
