"""Turn a published-DeepIS checkpoint into a normal deepis-rt checkpoint, stating what it lacks.

A file of the published training code records weights but not the input scaling, the output
unit or the voxel size (:mod:`deepis_rt.published`). :func:`convert_checkpoint` writes a deepis-rt
checkpoint (``format`` 1, checksum, ``meta``) with the statements the user gives:

* input scaling, in deepis-rt's convention ``meta["ri_normalization"]`` (``x = (ri - offset) / scale``,
  applied by the runtime before the network);
* output unit: the network's output times ``output_scale`` is the distance in um (``"um"``) or in
  voxels of the model grid (``"voxel"``; one voxel = the smallest edge of ``voxel_size_um``, the
  pitch the analysis thresholds use). The factor to um is folded into the head convolution, so every
  backend, export and engine made from the result returns um; ``meta["distance_output"]`` records it;
* voxel size and tile.

What is still not stated stays listed in ``meta["assumed"]`` (and is announced when the file is used).
The auxiliary heads and the optimizer state of the original file are not carried.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from deepis_rt.checkpoint import load_checkpoint, save_checkpoint
from deepis_rt.core.meta import ModelMeta
from deepis_rt.errors import ConfigError
from deepis_rt.io.plausibility import check_voxel_size
from deepis_rt.published import PUBLISHED_FORMAT

__all__ = ["convert_checkpoint", "HEAD_KEYS"]

log = logging.getLogger(__name__)

#: The output convolution (weight, bias) per architecture; the output scale is folded into it.
HEAD_KEYS: dict[str, tuple[str, str]] = {"deepis": ("head.weight", "head.bias"),
                                         "deepis-2020": ("final.0.weight", "final.0.bias")}


def _positive_finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"convert | {name} must be a positive finite number, got {value!r}")
    return value


def convert_checkpoint(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    ri_normalization: tuple[float, float] | None = None,
    input_offset: float | None = None,
    input_scale: float | None = None,
    output_unit: str | None = None,
    output_scale: float | None = None,
    voxel_size_um: Sequence[float] | None = None,
    tile_zyx: Sequence[int] | None = None,
    description: str | None = None,
) -> tuple[Path, list[str]]:
    """Write ``out``: the model of ``source`` with the given statements in its metadata.

    Parameters
    ----------
    source : path-like
        A published-DeepIS ``.pth.tar`` / ``.pth`` / ``.pt`` (or a deepis-rt checkpoint to update).
    out : path-like
        The deepis-rt checkpoint to write.
    ri_normalization : (offset, scale), optional
        deepis-rt's convention: the network input is ``(ri - offset) / scale``.
    input_offset, input_scale : float, optional
        The same statement as the training data held it: the network input is
        ``(ri - input_offset) * input_scale`` (e.g. offset 0, scale 10000 for RI x 10 000 integers).
    output_unit : {"um", "voxel"}, optional
        Unit of ``output * output_scale``.
    output_scale : float, optional
        Factor from the network's output to ``output_unit`` (default 1).
    voxel_size_um : (Z, Y, X), optional
        Voxel size the model was trained at, in um.
    tile_zyx : (Z, Y, X), optional
        Tile the model runs on (multiples of 16).
    description : str, optional
        Free text for ``meta["description"]``.

    Returns
    -------
    (Path, list of str)
        The written file, and the meta keys that are still assumed.

    Raises
    ------
    ConfigError
        Contradicting or invalid statements.
    CheckpointError
        ``source`` is not a usable checkpoint.
    """
    source = Path(source)
    ckpt = load_checkpoint(source, announce=False)
    meta: dict[str, Any] = {k: v for k, v in ckpt.meta.items()}
    assumed = [k for k in meta.get("assumed") or []]

    if ri_normalization is not None and (input_offset is not None or input_scale is not None):
        raise ConfigError("convert | give either --ri-normalization or --input-offset/--input-scale, not both")
    if input_offset is not None or input_scale is not None:
        if input_offset is None or input_scale is None:
            raise ConfigError("convert | --input-offset and --input-scale go together (input = (RI - offset) * scale)")
        ri_normalization = (float(input_offset), 1.0 / _positive_finite("--input-scale", input_scale))
    if ri_normalization is not None:
        offset, scale = (float(v) for v in ri_normalization)
        if not math.isfinite(offset):
            raise ConfigError(f"convert | RI normalisation offset must be finite, got {offset!r}")
        meta["ri_normalization"] = {"offset": offset, "scale": _positive_finite("RI normalisation scale", scale)}
        assumed = [k for k in assumed if k != "ri_normalization"]

    if voxel_size_um is not None:
        vs = check_voxel_size(list(voxel_size_um), "convert", "--voxel-size", error=ConfigError,
                              fix="give the voxel size the model was trained at, Z Y X in micrometres")
        meta["voxel_size_um"] = list(vs)
        assumed = [k for k in assumed if k != "voxel_size_um"]

    if tile_zyx is not None:
        tile = [int(v) for v in tile_zyx]
        multiple = ckpt.config.size_multiple
        if len(tile) != 3 or any(t < multiple or t % multiple for t in tile):
            raise ConfigError(f"convert | --tile must be 3 positive multiples of {multiple} (Z, Y, X), got {tile}")
        meta["tile_zyx"] = tile

    state_dict = dict(ckpt.state_dict)
    if output_unit is not None or output_scale is not None:
        unit = output_unit or "um"
        if unit not in ("um", "voxel"):
            raise ConfigError(f"convert | --output-unit must be 'um' or 'voxel', got {unit!r}")
        scale = float(output_scale) if output_scale is not None else 1.0
        if not math.isfinite(scale) or scale == 0:
            raise ConfigError(f"convert | --output-scale must be finite and non-zero, got {scale!r}")
        if unit == "voxel" and "voxel_size_um" in assumed:
            raise ConfigError("convert | --output-unit voxel needs --voxel-size (the voxel pitch turns voxels into um)")
        pitch_um = min(float(v) for v in meta["voxel_size_um"])
        factor = scale * (pitch_um if unit == "voxel" else 1.0)
        previous = float((meta.get("distance_output") or {}).get("folded_factor_um", 1.0))
        weight_key, bias_key = HEAD_KEYS[ckpt.config.architecture]
        ratio = factor / previous
        state_dict[weight_key] = state_dict[weight_key] * ratio
        state_dict[bias_key] = state_dict[bias_key] * ratio
        meta["distance_output"] = {"unit": unit, "scale": scale, "folded_factor_um": factor,
                                   "folded_into": weight_key.rsplit(".", 1)[0]}
        assumed = [k for k in assumed if k != "distance_output"]

    meta["assumed"] = assumed
    origin = meta.get("source") if isinstance(meta.get("source"), dict) else {}
    if origin.get("format") == PUBLISHED_FORMAT:
        training = dict(meta.get("training") or {})
        training.update({"origin": "published DeepIS training code (CNNTrainer)",
                         "epoch": origin.get("epoch"), "best_metric": origin.get("best_metric"),
                         "model_type": origin.get("model_type")})
        meta["training"] = training
        meta["description"] = f"converted from the published-DeepIS checkpoint {origin.get('file')}"
    meta["converted_from"] = {"file": source.name, "sha256": ckpt.sha256}
    if description is not None:
        meta["description"] = description
    state_dict = {k: v.detach().to(torch.float32) if v.is_floating_point() else v for k, v in state_dict.items()}
    # fields of an earlier version's file that this one does not know are carried over as they were
    new_meta = ModelMeta.from_dict(meta, f"convert | {source}: meta", unknown="keep")
    path = save_checkpoint(out, state_dict, config=ckpt.config, meta=new_meta, preset=ckpt.preset)
    log.info("convert | wrote %s (%s)", path, "still assumed: " + ", ".join(assumed) if assumed else "nothing assumed")
    return path, assumed
