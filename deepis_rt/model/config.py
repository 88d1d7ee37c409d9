"""Validated architecture configuration and presets of the DeepIS network."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deepis_rt.core.meta import TILE_ZYX
from deepis_rt.errors import ConfigError

__all__ = ["ModelConfig", "PRESETS", "preset_config", "TILE_ZYX", "ARCHITECTURES", "DEEPIS_2020_BASE_WIDTHS"]

#: Network families :class:`ModelConfig` describes. ``"deepis"``: deepis-rt's reading of the paper's
#: text (:class:`~deepis_rt.model.network.DeepIS`). ``"deepis-2020"``: the module structure of the
#: authors' published training code (``Unet3D_glob``; :mod:`deepis_rt.model.deepis2020`).
ARCHITECTURES: tuple[str, ...] = ("deepis", "deepis-2020")

#: Encoder widths of the published code before division by ``feature_scale``.
DEEPIS_2020_BASE_WIDTHS: tuple[int, ...] = (64, 128, 256, 512, 1024)
#: GCN kernel per level of the published code, finest first; 1 = a plain 1x1x1 projection.
DEEPIS_2020_GCN_KERNELS: tuple[int, ...] = (1, 7, 7, 7, 3)


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
    #: Network family, one of :data:`ARCHITECTURES`. For ``"deepis-2020"`` the fields above
    #: (widths, skip_width, gcn_kernels, blocks_per_level, bottleneck_expansion) are derived from
    #: ``feature_scale`` and ``trans_feature`` as in the published code.
    architecture: str = "deepis"
    #: ``"deepis-2020"`` only: encoder widths are ``(64, 128, 256, 512, 1024) // feature_scale``.
    feature_scale: int | None = None
    #: ``"deepis-2020"`` only: width of every skip projection and of the decoder.
    trans_feature: int | None = None

    def __post_init__(self) -> None:
        # Accept lists from JSON / checkpoints, store tuples so the object is hashable.
        object.__setattr__(self, "widths", tuple(self.widths))
        object.__setattr__(self, "gcn_kernels", tuple(self.gcn_kernels))
        if self.architecture == "deepis-2020":
            self._derive_2020()
        self.validate()

    def _derive_2020(self) -> None:
        """Fill the generic fields from feature_scale / trans_feature; refuse contradicting values."""
        fs, tf = self.feature_scale, self.trans_feature
        for name, value in (("feature_scale", fs), ("trans_feature", tf)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(
                    f"model config: architecture 'deepis-2020' needs {name} as a positive integer, got {value!r}"
                )
        widths = tuple(w // fs for w in DEEPIS_2020_BASE_WIDTHS)  # type: ignore[operator]
        if widths[0] < 2:
            raise ConfigError(
                f"model config: feature_scale={fs} leaves fewer than 2 channels at the finest level "
                f"(widths {widths}); use feature_scale <= 32"
            )
        derived = {"widths": widths, "skip_width": tf, "gcn_kernels": DEEPIS_2020_GCN_KERNELS,
                   "blocks_per_level": 2, "bottleneck_expansion": 4}
        for name, value in derived.items():
            given = getattr(self, name)
            default = _DEFAULTS[name]
            if given != value and given != default:
                raise ConfigError(
                    f"model config: {name}={given!r} contradicts architecture 'deepis-2020' with "
                    f"feature_scale={fs}, trans_feature={tf} (which means {name}={value!r}); "
                    "give feature_scale and trans_feature only"
                )
            object.__setattr__(self, name, value)

    # -- validation ---------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field."""

        def _pos_int(name: str, value: Any) -> None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"model config: {name} must be a positive integer, got {value!r}")

        if self.architecture not in ARCHITECTURES:
            raise ConfigError(
                f"model config: architecture must be one of {list(ARCHITECTURES)}, got {self.architecture!r}"
            )
        if self.architecture == "deepis":
            for name in ("feature_scale", "trans_feature"):
                if getattr(self, name) is not None:
                    raise ConfigError(
                        f"model config: {name} belongs to architecture 'deepis-2020'; for 'deepis' "
                        "give widths and skip_width instead"
                    )
        for name in ("in_channels", "skip_width", "blocks_per_level", "bottleneck_expansion", "out_channels"):
            _pos_int(name, getattr(self, name))
        if self.architecture == "deepis-2020":
            if self.in_channels != 1 or self.out_channels != 1:
                raise ConfigError("model config: architecture 'deepis-2020' has 1 input and 1 output channel")
            return  # the rest is derived (see _derive_2020)
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
        if self.architecture == "deepis":
            # unchanged dicts (and hashes of them) for every config written before the family field
            for name in ("architecture", "feature_scale", "trans_feature"):
                del out[name]
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
        if self.architecture == "deepis-2020":
            # derived fields follow feature_scale / trans_feature
            for name in ("widths", "skip_width", "gcn_kernels", "blocks_per_level", "bottleneck_expansion"):
                merged.pop(name)
        merged.update(overrides)
        return ModelConfig.from_dict(merged)


_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(ModelConfig)}


#: Named architectures. ``deepis`` is the paper's network (Lee et al., eLife 2020).
#: ``deepis-lite`` keeps the paper's topology and GCN kernels (the large receptive
#: field is what separates touching cells) but halves every width and the skip
#: width; see docs/model.md for measured parameters and FLOPs.
#: ``deepis-2020`` is the module structure and numerics of the authors' published training code
#: (``Unet3D_glob(feature_scale=1, trans_feature=64)`` of main_DeepIS.py): the architecture the
#: checkpoints of that code need.
PRESETS: dict[str, ModelConfig] = {
    "deepis": ModelConfig(),
    "deepis-lite": ModelConfig(widths=(16, 32, 64, 128, 256), skip_width=16),
    "deepis-2020": ModelConfig(architecture="deepis-2020", feature_scale=1, trans_feature=64),
}


def preset_config(name: str, **overrides: Any) -> ModelConfig:
    """The config of preset ``name``, with optional field overrides."""
    try:
        base = PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
    return base.replace(**overrides) if overrides else base
