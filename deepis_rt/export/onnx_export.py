"""PyTorch -> ONNX export of a DeepIS network (named tensors, dynamic batch axis)."""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from deepis_rt.errors import ExportError

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "META_KEY", "export_onnx", "read_onnx_meta", "set_onnx_meta"]

log = logging.getLogger(__name__)

#: Name of the graph input: (N, 1, Z, Y, X) float32 normalised RI.
INPUT_NAME = "tomogram"
#: Name of the graph output: (N, 1, Z, Y, X) float32 signed distance in um.
OUTPUT_NAME = "distance"
#: ONNX metadata_props key holding the checkpoint's JSON meta (voxel size, RI normalisation, tile, config).
META_KEY = "deepis_rt.meta"

DEFAULT_OPSET = 18


def export_onnx(
    model: torch.nn.Module,
    path: str | Path,
    tile_zyx: tuple[int, int, int],
    opset: int = DEFAULT_OPSET,
    dynamic_shape: bool = False,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Export ``model`` (eval mode, CPU, FP32) to ONNX with a dynamic batch axis.

    Parameters
    ----------
    model : nn.Module
        The DeepIS network.
    path : path-like
        Output ``.onnx`` file (written atomically).
    tile_zyx : tuple of int
        Spatial size fixed in the graph (unless ``dynamic_shape``).
    opset : int
        ONNX opset.
    dynamic_shape : bool
        Also make Z, Y, X dynamic (multiples of 16 at run time).
    meta : mapping, optional
        JSON-serialisable metadata stored in the graph's ``metadata_props`` under :data:`META_KEY`.
    """
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu().float()
    # example sizes of 1 (batch) or 16 (one 16-block) would be specialised by torch.export
    example = tuple(max(s, 32) for s in tile_zyx) if dynamic_shape else tuple(tile_zyx)
    x = torch.zeros((2, 1, *example), dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1, max=1024)
    dims: dict[int, Any] = {0: batch}
    if dynamic_shape:
        # sizes are 16 * k, so the graph's shape arithmetic stays exact
        for axis, name in zip((2, 3, 4), ("z", "y", "x"), strict=True):
            dims[axis] = 16 * torch.export.Dim(f"{name}16", min=1, max=256)
    tmp = path.with_name(path.name + ".tmp")
    # torch's exporter logs one warning per torchvision op it cannot register; none is used here
    registration_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    old_level = registration_log.level
    registration_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (x,),
                str(tmp),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=(dims,),
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise ExportError(f"export | ONNX export of the model failed: {type(exc).__name__}: {exc}") from exc
    finally:
        registration_log.setLevel(old_level)
    proto = onnx.load(str(tmp))
    if meta is not None:
        set_onnx_meta(proto, meta)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    log.debug("export: wrote %s", path)
    return path


def read_onnx_meta(path: str | Path) -> dict[str, Any]:
    """The deepis-rt metadata stored in an ONNX file ({} when there is none)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for prop in proto.metadata_props:
        if prop.key == META_KEY:
            return json.loads(prop.value)
    return {}


def set_onnx_meta(proto: Any, meta: Mapping[str, Any]) -> None:
    """Store ``meta`` (JSON) in ``proto.metadata_props`` under :data:`META_KEY`, replacing any earlier one."""
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != META_KEY]
    del proto.metadata_props[:]
    for key, value in kept:
        proto.metadata_props.add(key=key, value=value)
    proto.metadata_props.add(key=META_KEY, value=json.dumps(dict(meta), sort_keys=True))
