"""The engine description: the input's optimisation profile, and how a precision is built with a TensorRT version.

Pure functions and values (no TensorRT import): the native TensorRT backend, the TensorRT execution
provider of ONNX Runtime and the export all describe an engine with them.

Precision: on TensorRT >= 10.12 the network is *strongly typed* and FP16 comes from the FP16 ONNX
graph (TensorRT 11 is always strongly typed and has no FP16 builder flag); on older 10.x the FP32
graph is parsed and ``BuilderFlag.FP16`` lets the builder choose FP16 kernels (also when no FP16
ONNX exists).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from deepis_rt.errors import ExportError

__all__ = ["EngineProfile", "profile_from_batch", "build_mode", "version_tuple"]

_STRONGLY_TYPED_SINCE = (10, 12)


@dataclass(frozen=True)
class EngineProfile:
    """The optimisation profile of the input tensor: min / opt / max shapes (N, 1, Z, Y, X)."""

    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]

    def to_dict(self) -> dict[str, list[int]]:
        return {"min": list(self.min_shape), "opt": list(self.opt_shape), "max": list(self.max_shape)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[int]]) -> EngineProfile:
        return cls(tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))

def profile_from_batch(
    batch: Sequence[int],
    tile_zyx: Sequence[int],
    dynamic_shape: bool = False,
    size_multiple: int = 16,
) -> EngineProfile:
    """One optimisation profile from ``(min, opt, max)`` batch sizes.

    With ``dynamic_shape`` the spatial axes range from ``size_multiple`` to twice the tile (opt = tile).
    """
    bmin, bopt, bmax = (int(b) for b in batch)
    if not 1 <= bmin <= bopt <= bmax:
        raise ExportError(f"export | --batch {bmin}:{bopt}:{bmax}: need 1 <= MIN <= OPT <= MAX")
    tile = tuple(int(s) for s in tile_zyx)
    if dynamic_shape:
        lo = (size_multiple,) * 3
        hi = tuple(2 * s for s in tile)
    else:
        lo = hi = tile
    return EngineProfile((bmin, 1, *lo), (bopt, 1, *tile), (bmax, 1, *hi))

def version_tuple(version: str) -> tuple[int, int]:
    nums = [int(n) for n in re.findall(r"\d+", version)[:2]]
    return (nums + [0, 0])[0], (nums + [0, 0])[1]

def build_mode(trt_version: str, precision: str) -> str:
    """How an engine of ``precision`` is built with TensorRT ``trt_version``.

    Returns ``"strongly-typed"`` (the graph's precision is used: FP16 ONNX for FP16) or
    ``"builder-flag"`` (FP32 ONNX, with ``BuilderFlag.FP16`` for FP16 engines, TensorRT < 10.12).
    """
    if precision not in {"fp16", "fp32"}:
        raise ExportError(f"export | precision {precision!r}: choose 'fp16' or 'fp32'")
    return "strongly-typed" if version_tuple(trt_version) >= _STRONGLY_TYPED_SINCE else "builder-flag"
