"""Checkpoints of the published DeepIS training code (2020), recognised by their tensor shapes.

The authors' code (Jinyeop3110/2020__DeepIS) saves with ``CNNTrainer.save``::

    torch.save({"model_type": str, "start_epoch": epoch + 1, "network": state_dict,
                "optimizer": Adam state_dict, "best_metric": float or 0-d tensor}, "<name>.pth.tar")

where ``network`` is the state dict of ``nn.DataParallel(Unet3D_glob(feature_scale, trans_feature))``
(every key starts with ``module.``; like ``_orig_mod.`` of ``torch.compile``, it is removed). Such a
file is read with ``torch.load(weights_only=True)`` like any checkpoint (nothing in it is run); this
module recognises it by its keys and shapes, infers ``feature_scale`` and ``trans_feature``, checks
every tensor against the architecture they imply (naming the first key that differs), drops what
inference does not use (``ConBR0``, the auxiliary ``classifier3`` / ``classifier4`` heads, the
optimizer state) and permutes every convolution kernel from the original (Y, X, Z) tensor layout to
deepis-rt's (Z, Y, X), so the network of preset ``deepis-2020`` gives the original's output on the
same voxels.

What such a file does not record (the input scaling, the output unit, the voxel size) is assumed
(:data:`ASSUMED_META`) and listed in ``meta["assumed"]`` until ``deepis-rt convert`` states it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deepis_rt.core.meta import TILE_ZYX, ModelMeta
from deepis_rt.errors import CheckpointError
from deepis_rt.model import PRESETS, ModelConfig, build_model
from deepis_rt.model.config import DEEPIS_2020_BASE_WIDTHS
from deepis_rt.model.state_dict import strip_wrapper_prefixes

__all__ = [
    "PUBLISHED_FORMAT",
    "ASSUMED_META",
    "PublishedWeights",
    "looks_published",
    "read_published",
    "published_shapes",
    "to_zyx",
    "assumption_notice",
]

log = logging.getLogger(__name__)

#: ``meta["source"]["format"]`` of a checkpoint read from (or converted from) a published-DeepIS file.
PUBLISHED_FORMAT = "deepis-2020-cnntrainer"

#: Keys of the published state dict that inference does not use (dropped on import).
DROPPED_PREFIXES: tuple[str, ...] = ("ConBR0.", "classifier3.", "classifier4.")

#: What is assumed for a published file until the user states it (deepis-rt meta conventions).
ASSUMED_META: dict[str, Any] = {
    # the network saw the RI values as they are: x = (ri - 0) / 1
    "ri_normalization": {"offset": 0.0, "scale": 1.0},
    # the network's output is the signed distance in um
    "distance_output": {"unit": "um", "scale": 1.0},
    # the published code trained on 128 x 128 x 64 (Y, X, Z) crops
    "tile_zyx": list(TILE_ZYX),
}

#: Keys whose values a published file does not record; ``meta["assumed"]`` lists those still assumed.
UNRECORDED: tuple[str, ...] = ("ri_normalization", "distance_output", "voxel_size_um")

_PROBE_KEYS = ("conv1.conv1.0.weight", "gcn1.weight", "final.0.weight")


def _network(payload: Any) -> tuple[Mapping[str, Any], bool] | None:
    """(state dict, wrapped in a CNNTrainer dict) when ``payload`` has the shape of a published file."""
    if not isinstance(payload, Mapping):
        return None
    if "network" in payload and isinstance(payload["network"], Mapping):
        return payload["network"], True
    if payload and all(isinstance(v, torch.Tensor) for v in payload.values()):
        keys = set(strip_wrapper_prefixes(payload))
        if keys & set(_PROBE_KEYS) or any(k.startswith(("layer1.blocks.", "gcn2.conv_l1")) for k in keys):
            return payload, False
    return None


def looks_published(payload: Any) -> bool:
    """True when ``payload`` (a ``weights_only``-loaded object) is laid out like a published-DeepIS file.

    Only the layout is judged here; :func:`read_published` checks every key and shape.
    """
    return _network(payload) is not None


def _yxz_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of a (Z, Y, X)-layout tensor in the original (Y, X, Z) layout."""
    if len(shape) == 5:
        return (shape[0], shape[1], shape[3], shape[4], shape[2])
    return shape


def to_zyx(tensor: torch.Tensor) -> torch.Tensor:
    """A convolution kernel (O, I, kY, kX, kZ) of the original layout as (O, I, kZ, kY, kX); others unchanged."""
    if tensor.dim() == 5:
        return tensor.permute(0, 1, 4, 2, 3).contiguous()
    return tensor


def published_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every kept key of a published state dict (no ``module.``) and its shape in the original layout."""
    with torch.device("meta"):
        sd = build_model(config).state_dict()
    return {k: _yxz_shape(tuple(v.shape)) for k, v in sd.items()}


def _infer_config(sd: Mapping[str, torch.Tensor], where: str) -> ModelConfig:
    for key in ("conv1.conv1.0.weight", "gcn1.weight"):
        t = sd.get(key)
        if not isinstance(t, torch.Tensor) or t.dim() != 5:
            found = "missing" if t is None else f"has shape {tuple(t.shape)}"
            raise CheckpointError(
                f"{where}: not a deepis-rt checkpoint, and not a published-DeepIS (Unet3D_glob) one: "
                f"key 'module.{key}' {found}, expected a 5-D convolution kernel; nothing was loaded"
            )
    c0, tf = int(sd["conv1.conv1.0.weight"].shape[0]), int(sd["gcn1.weight"].shape[0])
    candidates = [fs for fs in range(1, DEEPIS_2020_BASE_WIDTHS[0] + 1) if DEEPIS_2020_BASE_WIDTHS[0] // fs == c0]
    if not candidates or c0 < 2:
        raise CheckpointError(
            f"{where}: published-DeepIS layout, but key 'module.conv1.conv1.0.weight' has {c0} output "
            f"channels; 64 // feature_scale for some feature_scale <= 32 was expected; nothing was loaded"
        )
    increase = [sd.get(f"layer{i}.blocks.0.increase.0.weight") for i in range(1, 5)]
    found = [int(t.shape[0]) if isinstance(t, torch.Tensor) and t.dim() else None for t in increase]
    feature_scale = next(
        (fs for fs in candidates if [w // fs for w in DEEPIS_2020_BASE_WIDTHS[1:]] == found), candidates[0]
    )
    return ModelConfig(architecture="deepis-2020", feature_scale=feature_scale, trans_feature=tf)


def _check_shapes(sd: Mapping[str, torch.Tensor], config: ModelConfig, where: str) -> list[str]:
    """Raise naming the first key that differs from ``config``; return the missing BN counters."""
    expected = published_shapes(config)
    arch = f"feature_scale={config.feature_scale}, trans_feature={config.trans_feature}"
    filled = []
    for key, shape in expected.items():
        t = sd.get(key)
        if t is None and key.endswith("num_batches_tracked"):
            filled.append(key)  # files of PyTorch < 0.4.1 have no BN step counters; inference never reads them
            continue
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            found = "is missing" if t is None else (
                f"has shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else f"holds a {type(t).__name__}")
            raise CheckpointError(
                f"{where}: published-DeepIS (Unet3D_glob) layout, but key 'module.{key}' {found}; "
                f"expected shape {shape} for {arch} (inferred from conv1.conv1.0.weight and gcn1.weight); "
                "nothing was loaded"
            )
        if not t.is_floating_point() and not key.endswith("num_batches_tracked"):
            raise CheckpointError(f"{where}: key 'module.{key}' holds {t.dtype} values, expected floating point")
    for key in sd:
        if key not in expected and not key.startswith(DROPPED_PREFIXES):
            t = sd[key]
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise CheckpointError(
                f"{where}: published-DeepIS (Unet3D_glob) layout, but key 'module.{key}' (shape {shape}) "
                f"is not part of that network for {arch}; nothing was loaded"
            )
    return filled


def _plain_number(value: Any) -> float | int | None:
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class PublishedWeights:
    """What a published-DeepIS file gives: the architecture, the weights in deepis-rt's (Z, Y, X) layout,
    and the meta (what the file records, and what is assumed); :func:`deepis_rt.load_checkpoint`
    makes a :class:`~deepis_rt.checkpoint.Checkpoint` of it."""

    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    meta: ModelMeta
    preset: str | None


def read_published(payload: Any, path: Path, where: str) -> PublishedWeights:
    """The weights of a ``weights_only``-loaded published-DeepIS file, checked key by key.

    Raises
    ------
    CheckpointError
        A key is missing, unexpected or of the wrong shape (the first such key is named, with the
        expected and the found shape).
    """
    found = _network(payload)
    if found is None and isinstance(payload, Mapping) and payload and all(
            isinstance(v, torch.Tensor) for v in payload.values()):
        found = (payload, False)  # a bare tensor dict: judged key by key below
    if found is None:
        raise CheckpointError(f"{where}: not a published-DeepIS checkpoint (no 'network' state dict)")
    network, wrapped = found
    sd = strip_wrapper_prefixes(network)
    config = _infer_config(sd, where)
    filled = _check_shapes(sd, config, where)
    state_dict = {k: to_zyx(v.detach().to(torch.float32) if v.is_floating_point() else v.detach())
                  for k, v in sd.items() if not k.startswith(DROPPED_PREFIXES)}
    for key in filled:
        state_dict[key] = torch.tensor(0, dtype=torch.long)
    dropped = sorted({k.split(".")[0] for k in sd if k.startswith(DROPPED_PREFIXES)})
    start_epoch = _plain_number(payload.get("start_epoch")) if wrapped else None
    source: dict[str, Any] = {
        "format": PUBLISHED_FORMAT,
        "file": path.name,
        "model_type": str(payload.get("model_type")) if wrapped and payload.get("model_type") is not None else None,
        "start_epoch": start_epoch,
        # CNNTrainer.save stores epoch + 1: the weights are those after epoch start_epoch - 1
        "epoch": int(start_epoch) - 1 if isinstance(start_epoch, (int, float)) else None,
        "best_metric": _plain_number(payload.get("best_metric")) if wrapped else None,
        "feature_scale": config.feature_scale,
        "trans_feature": config.trans_feature,
        "layout": "kernels permuted from (Y, X, Z) to (Z, Y, X)",
        "dropped": dropped + (["optimizer"] if wrapped and "optimizer" in payload else []),
    }
    meta = ModelMeta.from_dict({**ASSUMED_META, "description": f"published-DeepIS checkpoint (Unet3D_glob) {path.name}",
                                "source": source, "assumed": list(UNRECORDED)}, where)
    preset = next((name for name, cfg in PRESETS.items() if cfg == config), None)
    return PublishedWeights(config=config, state_dict=state_dict, meta=meta, preset=preset)


_NOTICES_GIVEN: set[str] = set()


def assumption_notice(meta: Mapping[str, Any], where: str) -> str | None:
    """The once-per-process notice for a model whose input scaling / output unit / voxel size is assumed.

    Returns the text when it should be shown now (the first time for ``where``), else None.
    """
    assumed = [k for k in meta.get("assumed") or [] if k in UNRECORDED]
    if not assumed or where in _NOTICES_GIVEN:
        return None
    _NOTICES_GIVEN.add(where)
    parts, flags = [], []
    if "ri_normalization" in assumed:
        norm = meta.get("ri_normalization") or {}
        parts.append(f"network input = (RI - {norm.get('offset')}) / {norm.get('scale')}")
        flags.append("--ri-normalization OFFSET SCALE (or --input-offset A --input-scale B)")
    if "distance_output" in assumed:
        out = meta.get("distance_output") or {}
        parts.append(f"output = signed distance in {out.get('unit', 'um')} x {out.get('scale', 1.0)}")
        flags.append("--output-unit um|voxel --output-scale S")
    if "voxel_size_um" in assumed:
        parts.append(f"voxel size (Z, Y, X) = {tuple(meta.get('voxel_size_um') or ())} um")
        flags.append("--voxel-size Z Y X")
    source = meta.get("source") if isinstance(meta.get("source"), Mapping) else {}
    original = source.get("file") or Path(where.split("| ")[-1]).name
    return (f"{where}: how this model was trained is not recorded; ASSUMED: " + "; ".join(parts)
            + ". Distances, masks and measurements are only right if these hold. State them once with "
            f"'deepis-rt convert {original} NEW.pt " + " ".join(flags) + "' and use NEW.pt")
