"""The model's metadata and the export manifest as typed objects, with their defaults defined once.

:class:`ModelMeta` is what a checkpoint's ``meta`` holds (voxel size, input normalisation, tile,
medium RI, training record, metrics, ...); :class:`ExportManifest` is ``manifest.json`` of an export
folder. Both are read from and written to plain dicts (``from_dict`` / ``to_dict``), the form in
which they are stored, so that files keep their layout and their checksums.

Unknown fields are handled by who wrote them:

- ``unknown="refuse"`` (a dict a user wrote: ``save_checkpoint(meta=...)``, an edited manifest):
  a :class:`~deepis_rt.errors.ConfigError` that names the field and the fields that exist.
- ``unknown="keep"`` (files written by earlier versions of this package, which must keep loading):
  the field is kept in :attr:`ModelMeta.extra`, written back unchanged, and a warning names it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from deepis_rt.errors import ConfigError

__all__ = [
    "TILE_ZYX",
    "VOXEL_SIZE_UM",
    "MEDIUM_RI",
    "RI_SCALE",
    "RINormalization",
    "DistanceOutput",
    "ModelMeta",
    "ExportFile",
    "ExportManifest",
    "EXPORT_FORMAT",
    "EXPORT_FORMAT_VERSION",
]

log = logging.getLogger(__name__)

#: Model tile (Z, Y, X) of the paper's network.
TILE_ZYX: tuple[int, int, int] = (64, 128, 128)
#: Voxel size (Z, Y, X) in um a model is trained at when nothing else is said.
VOXEL_SIZE_UM: tuple[float, float, float] = (0.5, 0.25, 0.25)
#: Refractive index of the culture medium (and the offset of the default input normalisation).
MEDIUM_RI = 1.337
#: Scale of the default input normalisation: x = (ri - MEDIUM_RI) / RI_SCALE.
RI_SCALE = 0.02

Unknown = Literal["refuse", "keep"]


def _unknown_fields(data: Mapping[str, Any], known: Sequence[str], where: str, unknown: Unknown) -> dict[str, Any]:
    extra = {k: v for k, v in data.items() if k not in known}
    if extra and unknown == "refuse":
        name = next(iter(extra))
        raise ConfigError(f"{where}: unknown field {name!r}; the fields are {', '.join(known)}")
    if extra:
        log.warning("%s: field(s) %s not known to this deepis-rt; kept as they are", where, ", ".join(map(repr, extra)))
    return extra


def _number(value: Any, where: str, name: str, *, positive: bool = False, nonzero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}: {name} must be a finite number, got {value!r}")
    if positive and value <= 0 or nonzero and value == 0:
        raise ConfigError(f"{where}: {name} must be {'positive' if positive else 'non-zero'}, got {value!r}")
    return float(value)


def _triple(value: Any, where: str, name: str, kind: type) -> tuple:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence) or len(value) != 3:
        raise ConfigError(f"{where}: {name} must be three numbers (Z, Y, X), got {value!r}")
    if kind is int:
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
            raise ConfigError(f"{where}: {name} must be three positive integers (Z, Y, X), got {value!r}")
        return tuple(int(v) for v in value)
    return tuple(_number(v, where, name, positive=True) for v in value)


def _mapping(value: Any, where: str, name: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: {name} must be a dict, got {type(value).__name__}")
    return dict(value)


@dataclass(frozen=True)
class RINormalization:
    """The network's input: ``x = (ri - offset) / scale``."""

    #: RI that maps to 0 (the medium, by default).
    offset: float = MEDIUM_RI
    #: RI difference that maps to 1.
    scale: float = RI_SCALE

    @classmethod
    def from_dict(cls, data: Any, where: str = "meta", unknown: Unknown = "refuse") -> RINormalization:
        data = _mapping(data, where, "ri_normalization")
        _unknown_fields(data, ("offset", "scale"), f"{where}.ri_normalization", unknown)
        return cls(offset=_number(data.get("offset", MEDIUM_RI), where, "ri_normalization.offset"),
                   scale=_number(data.get("scale", RI_SCALE), where, "ri_normalization.scale", nonzero=True))

    def to_dict(self) -> dict[str, float]:
        return {"offset": self.offset, "scale": self.scale}


@dataclass(frozen=True)
class DistanceOutput:
    """What the network's output is, when stated (``deepis-rt convert``): a signed distance in ``unit``."""

    #: ``"um"`` or ``"voxel"``: the unit the network was trained to output.
    unit: str = "um"
    #: Factor the network's output was trained with (distance = output / scale, in ``unit``).
    scale: float = 1.0
    #: Factor folded into the output head's weights, so that the model now outputs um.
    folded_factor_um: float | None = None
    #: The layer whose weights and bias carry ``folded_factor_um``.
    folded_into: str | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str = "meta", unknown: Unknown = "refuse") -> DistanceOutput:
        data = _mapping(data, where, "distance_output")
        _unknown_fields(data, [f.name for f in fields(cls)], f"{where}.distance_output", unknown)
        unit = data.get("unit", "um")
        if unit not in ("um", "voxel"):
            raise ConfigError(f"{where}: distance_output.unit must be 'um' or 'voxel', got {unit!r}")
        folded = data.get("folded_factor_um")
        return cls(unit=unit, scale=_number(data.get("scale", 1.0), where, "distance_output.scale", nonzero=True),
                   folded_factor_um=None if folded is None else _number(folded, where, "distance_output.folded_factor_um"),
                   folded_into=data.get("folded_into"))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"unit": self.unit, "scale": self.scale}
        if self.folded_factor_um is not None:
            out["folded_factor_um"] = self.folded_factor_um
        if self.folded_into is not None:
            out["folded_into"] = self.folded_into
        return out


#: The fields every checkpoint's meta holds (written even when a caller gives none of them).
_ALWAYS = ("voxel_size_um", "ri_normalization", "medium_ri", "tile_zyx", "training", "metrics", "description")
#: Fields written only when set (None means "not recorded").
_WHEN_SET = ("distance_output", "assumed", "source", "converted_from", "uncertainty")


@dataclass(frozen=True, eq=False)
class ModelMeta(Mapping):
    """What a model needs besides its weights, and the record of how it was made.

    Also a read-only mapping with the keys and values of :meth:`to_dict`, so that code written for the
    dicts of earlier versions (``meta["voxel_size_um"]``, ``meta.get("medium_ri")``, ``dict(meta)``)
    reads it unchanged.
    """

    #: Voxel size (Z, Y, X) in um the model was trained at; inputs are resampled to it.
    voxel_size_um: tuple[float, float, float] = VOXEL_SIZE_UM
    #: Input normalisation: x = (ri - offset) / scale.
    ri_normalization: RINormalization = field(default_factory=RINormalization)
    #: Medium refractive index assumed when an input carries none.
    medium_ri: float = MEDIUM_RI
    #: Tile (Z, Y, X) the model is run on.
    tile_zyx: tuple[int, int, int] = TILE_ZYX
    #: How the model was trained (command, data, seeds, input range, ...): free-form, JSON-like.
    training: dict[str, Any] = field(default_factory=dict)
    #: Validation and held-out metrics: free-form, JSON-like.
    metrics: dict[str, Any] = field(default_factory=dict)
    #: One line for people.
    description: str = ""
    #: The output's unit and scale, once stated; None: a signed distance in um.
    distance_output: DistanceOutput | None = None
    #: Fields only assumed, not recorded by the file the model came from (published-DeepIS files).
    assumed: tuple[str, ...] | None = None
    #: Where the weights came from when not trained by deepis-rt (the published file's record).
    source: dict[str, Any] | None = None
    #: The file this checkpoint was converted from (``deepis-rt convert``): name and sha256.
    converted_from: dict[str, Any] | None = None
    #: Calibration of the IS-area uncertainty for this model (``{"network": {...}}``, read by
    #: :class:`deepis_rt.analysis.contact.NetworkError`); None: not calibrated for it.
    uncertainty: dict[str, Any] | None = None
    #: Fields of files from earlier versions that this version does not know, kept as they were.
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str = "meta", unknown: Unknown = "refuse") -> ModelMeta:
        """A ModelMeta from a checkpoint's (or a caller's) meta dict; missing fields take the defaults.

        Raises
        ------
        ConfigError
            A field of the wrong type or value, or (``unknown="refuse"``) a field that does not exist.
        """
        if isinstance(data, ModelMeta):
            return data
        data = _mapping(data or {}, where, "meta")
        extra = _unknown_fields(data, _ALWAYS + _WHEN_SET, where, unknown)
        kw: dict[str, Any] = {}
        if "voxel_size_um" in data:
            kw["voxel_size_um"] = _triple(data["voxel_size_um"], where, "voxel_size_um", float)
        if "tile_zyx" in data:
            kw["tile_zyx"] = _triple(data["tile_zyx"], where, "tile_zyx", int)
        if data.get("ri_normalization") is not None:
            kw["ri_normalization"] = RINormalization.from_dict(data["ri_normalization"], where, unknown)
        if "medium_ri" in data:
            kw["medium_ri"] = _number(data["medium_ri"], where, "medium_ri", positive=True)
        for name in ("training", "metrics"):
            if data.get(name) is not None:
                kw[name] = _mapping(data[name], where, name)
        if data.get("description") is not None:
            if not isinstance(data["description"], str):
                raise ConfigError(f"{where}: description must be a string, got {data['description']!r}")
            kw["description"] = data["description"]
        if data.get("distance_output") is not None:
            kw["distance_output"] = DistanceOutput.from_dict(data["distance_output"], where, unknown)
        if data.get("assumed") is not None:
            assumed = data["assumed"]
            if isinstance(assumed, str) or not all(isinstance(a, str) for a in assumed):
                raise ConfigError(f"{where}: assumed must be a list of field names, got {assumed!r}")
            kw["assumed"] = tuple(assumed)
        for name in ("source", "converted_from", "uncertainty"):
            if data.get(name) is not None:
                kw[name] = _mapping(data[name], where, name)
        return cls(**kw, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The stored form: JSON-like values (lists, not tuples), fields not recorded left out."""
        out: dict[str, Any] = {
            "voxel_size_um": list(self.voxel_size_um),
            "ri_normalization": self.ri_normalization.to_dict(),
            "medium_ri": self.medium_ri,
            "tile_zyx": list(self.tile_zyx),
            "training": dict(self.training),
            "metrics": dict(self.metrics),
            "description": self.description,
        }
        if self.distance_output is not None:
            out["distance_output"] = self.distance_output.to_dict()
        if self.assumed is not None:
            out["assumed"] = list(self.assumed)
        if self.source is not None:
            out["source"] = dict(self.source)
        if self.converted_from is not None:
            out["converted_from"] = dict(self.converted_from)
        if self.uncertainty is not None:
            out["uncertainty"] = dict(self.uncertainty)
        out.update(self.extra)
        return out

    def replace(self, **changes: Any) -> ModelMeta:
        """A copy with ``changes`` (field names as in the dataclass)."""
        return replace(self, **changes)

    # read-only mapping over to_dict(), for code written against the dicts of earlier versions
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    def __eq__(self, other: object) -> bool:
        # equal to another ModelMeta or a dict with the same stored form
        if isinstance(other, Mapping):
            return self.to_dict() == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # holds dicts


EXPORT_FORMAT = "deepis-rt-export"
EXPORT_FORMAT_VERSION = 1


@dataclass(frozen=True)
class ExportFile:
    """One ONNX file of an export folder."""

    #: File name, relative to the export folder.
    path: str
    #: ``"fp32"`` or ``"fp16"``.
    precision: str
    #: Hex sha256 of the file; checked whenever the folder is loaded.
    sha256: str
    #: Size in bytes.
    bytes: int | None = None
    #: Whether onnxslim simplified the graph (kept only when it kept parity).
    simplified: bool | None = None
    #: FP16 graph: op types computed in FP32.
    fp16_keep_fp32_ops: list[str] | None = None
    #: FP16 graph: nodes computed in FP32 (the output head).
    fp16_keep_fp32_nodes: list[str] | None = None
    #: FP16 graph: how many initialisers and values are in half precision.
    float16_summary: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ExportFile:
        data = _mapping(data, where, "files[]")
        _unknown_fields(data, [f.name for f in fields(cls)], f"{where}: files[]", "refuse")
        for name in ("path", "precision", "sha256"):
            if not isinstance(data.get(name), str):
                raise ConfigError(f"{where}: files[] entry {data!r} needs {name!r} (a string)")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None or f.name in ("path", "precision", "sha256")}


@dataclass(frozen=True)
class ExportManifest:
    """``manifest.json`` of an export folder (``deepis-rt export``): what was exported, how, and its parity."""

    #: Export name (the folder's name).
    name: str
    #: The ONNX files, each with its sha256.
    files: tuple[ExportFile, ...]
    #: Always :data:`EXPORT_FORMAT`.
    format: str = EXPORT_FORMAT
    #: Layout version of this manifest.
    format_version: int = EXPORT_FORMAT_VERSION
    #: ISO 8601 time of the export (UTC).
    created_at: str | None = None
    #: The checkpoint exported: ``path``, ``sha256``, ``preset`` and the model's ``meta``.
    checkpoint: dict[str, Any] | None = None
    #: The architecture (``ModelConfig.to_dict()``).
    config: dict[str, Any] | None = None
    #: ONNX opset.
    opset: int | None = None
    #: The input tensor: name, shape, dtype, normalisation.
    input: dict[str, Any] | None = None
    #: The output tensor: name, shape, dtype, unit.
    output: dict[str, Any] | None = None
    #: Whether Z, Y, X are dynamic axes too.
    dynamic_shape: bool = False
    #: TensorRT optimisation profile: ``min`` / ``opt`` / ``max`` input shapes.
    batch_profile: dict[str, Any] | None = None
    #: Parity of every file against PyTorch: reference, runtime, tolerances and per-input results.
    parity: dict[str, Any] | None = None
    #: Versions of the tools that made the files.
    tools: dict[str, str] = field(default_factory=dict)
    #: The TensorRT engine built from the export, when one was.
    engine: dict[str, Any] | None = None
    #: What happened to the engine: ``not requested``, ``built``, ``cached``, ``skipped: ...``, ``failed: ...``.
    tensorrt: str = "not requested"

    @classmethod
    def from_dict(cls, data: Any, where: str = "manifest") -> ExportManifest:
        """Validate a manifest dict; every field must be known (users edit these files).

        Raises
        ------
        ConfigError
            Not an export manifest, a field unknown or of the wrong type.
        """
        if not isinstance(data, Mapping) or data.get("format") != EXPORT_FORMAT:
            raise ConfigError(f"{where}: not a deepis-rt export manifest (its 'format' is not {EXPORT_FORMAT!r})")
        data = dict(data)
        _unknown_fields(data, [f.name for f in fields(cls)], where, "refuse")
        if not isinstance(data.get("name"), str):
            raise ConfigError(f"{where}: 'name' must be a string, got {data.get('name')!r}")
        if not isinstance(data.get("files", []), list):
            raise ConfigError(f"{where}: 'files' must be a list, got {data.get('files')!r}")
        files = tuple(ExportFile.from_dict(f, where) for f in data.pop("files", []))
        for name in ("checkpoint", "config", "input", "output", "batch_profile", "parity", "tools", "engine"):
            if data.get(name) is not None and not isinstance(data[name], Mapping):
                raise ConfigError(f"{where}: {name!r} must be a dict, got {data[name]!r}")
        if data.get("tools") is None:
            data.pop("tools", None)
        return cls(files=files, **data)

    def to_dict(self) -> dict[str, Any]:
        """The JSON layout of ``manifest.json`` (field order as written by ``deepis-rt export``)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["files"] = [f.to_dict() for f in self.files]
        order = ("format", "format_version", "name", "created_at", "checkpoint", "config", "opset", "input",
                 "output", "dynamic_shape", "batch_profile", "files", "parity", "tools", "engine", "tensorrt")
        return {k: out[k] for k in order}

    def file(self, precision: str) -> ExportFile | None:
        """The file of ``precision`` (``"fp32"`` / ``"fp16"``), or None."""
        return next((f for f in self.files if f.precision == precision), None)

    @property
    def model_meta(self) -> ModelMeta:
        """The exported checkpoint's meta (defaults where the manifest records none)."""
        meta = (self.checkpoint or {}).get("meta") or {}
        return ModelMeta.from_dict({k: v for k, v in meta.items() if v is not None}, "manifest checkpoint.meta",
                                   unknown="keep")
