"""Keys of the per-machine measurement records (batch curves, PyTorch variants) kept in the cache."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from deepis_rt.core.machine import cpu_model

__all__ = ["curve_key"]


def curve_key(model: Mapping[str, Any], backend: str, precision: str | None, device: str | None,
              tile_zyx: Any, host: str | None = None) -> str:
    """The record's key: throughput depends on the architecture (not the weights), backend,
    precision, device, tile and host (the CPU model)."""
    arch = model.get("preset") or model.get("sha256") or model.get("name") or "?"
    tile = "x".join(str(int(v)) for v in tile_zyx) if tile_zyx else "?"
    kind = str(device or "?").split(":")[0]  # cuda:1 measures like cuda:0 on the same host
    return "|".join([str(arch), str(backend), str(precision or "fp32"), kind, tile, host or cpu_model()])
