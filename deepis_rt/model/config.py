"""Validated architecture configuration and presets of the DeepIS network."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deepis_rt.errors import ConfigError

__all__ = ["ModelConfig", "PRESETS", "preset_config", "TILE_ZYX"]

#: Model tile (Z, Y, X) in voxels, as in the paper.
TILE_ZYX: tuple[int, int, int] = (64, 128, 128)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a DeepIS 3-D U-Net.

    Unknown keys are rejected by :meth:`from_dict`; every field is checked by
    :meth:`validate`, which runs on construction.
    """

    #: Channels of the input tomogram (refractive index: 1).
    in_channels: int = 1
    #: Output width of each encoder level, finest first. One level per entry;
    #: every level after the first halves the spatial size (stride 2).
    widths: tuple[int, ...] = (32, 64, 128, 256, 512)
    #: Common width every skip is projected to by its GCN block; also the decoder width.
    skip_width: int = 64
    #: GCN kernel size per level, finest first (odd, >= 3).
    gcn_kernels: tuple[int, ...] = (13, 13, 9, 7, 5)
    #: ResNet bottleneck blocks per encoder level (the first may down-sample).
    blocks_per_level: int = 2
    #: Bottleneck expansion: the 3x3x3 convolution runs at ``width // bottleneck_expansion``.
    bottleneck_expansion: int = 4
    #: Output channels (the signed distance map: 1).
    out_channels: int = 1

    def __post_init__(self) -> None:
        # Accept lists from JSON / checkpoints, store tuples so the object is hashable.
        object.__setattr__(self, "widths", tuple(self.widths))
        object.__setattr__(self, "gcn_kernels", tuple(self.gcn_kernels))
        self.validate()

    # -- validation ---------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""

        def _pos_int(name: str, value: Any) -> None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"model config: {name} must be a positive integer, got {value!r}")

        for name in ("in_channels", "skip_width", "blocks_per_level", "bottleneck_expansion", "out_channels"):
            _pos_int(name, getattr(self, name))
        if len(self.widths) < 2:
            raise ConfigError(f"model config: widths needs at least 2 levels, got {self.widths!r}")
        for w in self.widths:
            _pos_int("widths[...]", w)
            if w % self.bottleneck_expansion:
                raise ConfigError(
                    f"model config: every width must be divisible by bottleneck_expansion="
                    f"{self.bottleneck_expansion}, got {self.widths!r}"
                )
        if len(self.gcn_kernels) != len(self.widths):
            raise ConfigError(
                f"model config: gcn_kernels has {len(self.gcn_kernels)} entries but widths has "
                f"{len(self.widths)}; give one kernel per level"
            )
        for k in self.gcn_kernels:
            _pos_int("gcn_kernels[...]", k)
            if k % 2 == 0 or k < 3:
                raise ConfigError(f"model config: GCN kernels must be odd and >= 3, got {self.gcn_kernels!r}")

    # -- derived ------------------------------------------------------------
    @property
    def levels(self) -> int:
        return len(self.widths)

    @property
    def size_multiple(self) -> int:
        """Every spatial size must be a multiple of this (2 ** (levels - 1))."""
        return 2 ** (self.levels - 1)

    # -- (de)serialisation --------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON- and ``weights_only``-safe dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        out["widths"] = list(self.widths)
        out["gcn_kernels"] = list(self.gcn_kernels)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Build from a mapping; unknown keys raise :class:`ConfigError`."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"model config: expected a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"model config: unknown key(s) {unknown}; known keys are {sorted(known)}"
            )
        try:
            return cls(**dict(data))
        except TypeError as exc:
            raise ConfigError(f"model config: {exc}") from exc

    def replace(self, **overrides: Any) -> ModelConfig:
        """A copy with some fields changed (validated; unknown names rejected)."""
        merged = self.to_dict()
        merged.update(overrides)
        return ModelConfig.from_dict(merged)


#: Named architectures. ``deepis`` is the paper's network (Lee et al., eLife 2020).
#: ``deepis-lite`` keeps the paper's topology and GCN kernels (the large receptive
#: field is what separates touching cells) but halves every width and the skip
#: width; see docs/model.md for measured parameters and FLOPs.
PRESETS: dict[str, ModelConfig] = {
    "deepis": ModelConfig(),
    "deepis-lite": ModelConfig(widths=(16, 32, 64, 128, 256), skip_width=16),
}


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    """The config of preset ``name``, with optional field overrides."""
    try:
        base = PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
    return base.replace(**overrides) if overrides else base
