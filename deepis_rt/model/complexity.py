"""Parameter and FLOP counts of a DeepIS configuration.

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode` on the
``meta`` device (no memory, no compute), 2 per multiply-add, for convolutions
and matrix products; element-wise work (BN, ReLU, additions, up-sampling) is
not counted, as is usual for CNN FLOP figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch.utils.flop_counter import FlopCounterMode

from deepis_rt.model.build import build_model
from deepis_rt.model.config import TILE_ZYX, ModelConfig

__all__ = ["Complexity", "complexity"]


@dataclass(frozen=True)
class Complexity:
    parameters: int
    flops_per_tile: int
    tile_zyx: tuple[int, int, int]

    @property
    def gflops_per_tile(self) -> float:
        return self.flops_per_tile / 1e9


@lru_cache(maxsize=32)
def complexity(config: ModelConfig, tile_zyx: tuple[int, int, int] = TILE_ZYX) -> Complexity:
    """Parameters and forward FLOPs for one tile of ``tile_zyx`` voxels (batch 1)."""
    with torch.device("meta"):
        model = build_model(config).eval()
        x = torch.empty((1, config.in_channels, *tile_zyx))
    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return Complexity(parameters=params, flops_per_tile=int(counter.get_total_flops()), tile_zyx=tuple(tile_zyx))
