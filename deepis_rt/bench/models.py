"""The model a benchmark runs: a checkpoint or a preset with random weights, and its cached ONNX files.

The ONNX export is made with :func:`deepis_rt.export.export_onnx` directly (no parity pass: that
takes minutes for the paper preset on a small CPU, and the benchmark measures accuracy itself
against the PyTorch FP32 reference). Files are cached under ``<cache>/bench/<key>/`` where the
key covers the weights (the checkpoint's sha256, or preset + seed), the tile and the versions of
deepis-rt and torch, so a second run of the same benchmark does not export again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepis_rt.errors import ConfigError

__all__ = ["BenchModel", "resolve_model"]

log = logging.getLogger(__name__)


@dataclass
class BenchModel:
    """A network to benchmark.

    Attributes
    ----------
    name : str
        Short label (the preset, or the checkpoint's file name).
    source : str
        Where it came from, in words (a path, or ``preset deepis, random weights (seed 0)``).
    checkpoint : deepis_rt.checkpoint.Checkpoint
        Architecture, weights and meta (``tile_zyx`` is the tile benchmarked).
    key : str
        Cache key of the exported files.
    cache_dir : Path
        Folder of this model's exported files.
    """

    name: str
    source: str
    checkpoint: Any
    key: str
    cache_dir: Path
    _module: Any = field(default=None, repr=False)

    @property
    def config(self) -> Any:
        return self.checkpoint.config

    @property
    def preset(self) -> str | None:
        return self.checkpoint.preset

    @property
    def tile_zyx(self) -> tuple[int, int, int]:
        return self.checkpoint.tile_zyx

    @property
    def voxel_size_um(self) -> tuple[float, float, float]:
        return self.checkpoint.voxel_size_um

    def module(self) -> Any:
        """The PyTorch network (FP32, eval, CPU); built once and shared."""
        if self._module is None:
            self._module = self.checkpoint.build()
        return self._module

    def onnx_fp32(self) -> Path:
        """The FP32 ONNX graph (dynamic batch, fixed tile), exported once per cache key."""
        from deepis_rt.export import export_onnx

        path = self.cache_dir / "model.fp32.onnx"
        if not path.is_file():
            log.info("bench | %s: exporting ONNX FP32 to %s", self.name, path)
            meta = {"meta": dict(self.checkpoint.meta), "config": self.config.to_dict(), "preset": self.preset}
            export_onnx(self.module(), path, self.tile_zyx, meta=meta)
        return path

    def onnx_fp16(self) -> Path:
        """The FP16 ONNX graph (float32 I/O), converted from the FP32 one."""
        import onnx

        from deepis_rt.export.fp16 import convert_to_fp16

        path = self.cache_dir / "model.fp16.onnx"
        if not path.is_file():
            log.info("bench | %s: converting ONNX to FP16 (%s)", self.name, path)
            half = convert_to_fp16(onnx.load(str(self.onnx_fp32())))
            tmp = path.with_name(path.name + ".tmp")
            onnx.save(half, str(tmp))
            tmp.replace(path)
        return path

    def describe(self) -> dict[str, Any]:
        from deepis_rt.model import complexity

        cx = complexity(self.config, tuple(self.tile_zyx))
        return {
            "name": self.name,
            "source": self.source,
            "preset": self.preset,
            "parameters": cx.parameters,
            "tile_zyx": list(self.tile_zyx),
            "voxel_size_um": list(self.voxel_size_um),
            "flops_per_tile": cx.flops_per_tile,
            "gflops_per_tile": round(cx.gflops_per_tile, 3),
            "sha256": self.checkpoint.sha256,
        }


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def resolve_model(
    model_path: str | Path | None = None,
    preset: str | None = None,
    tile_zyx: tuple[int, int, int] | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    **overrides: Any,
) -> BenchModel:
    """The model to benchmark.

    Parameters
    ----------
    model_path : path, optional
        A checkpoint (``.pt``). Without it and without ``preset``: the bundled demo checkpoint.
    preset : str, optional
        ``"deepis"`` or ``"deepis-lite"`` with random weights (seed ``seed``); throughput does not
        depend on the weights' values.
    tile_zyx : (Z, Y, X), optional
        Benchmark this tile instead of the model's (multiples of 16; small tiles for quick runs).
    cache_dir : path, optional
        Parent of the export cache (default: ``deepis_rt.backends.files.default_cache_dir()``).
    **overrides
        Config overrides for a preset (e.g. tiny widths in tests).
    """
    import torch

    from deepis_rt import __version__
    from deepis_rt.checkpoint import Checkpoint, bundled_checkpoint_path, load_checkpoint
    from deepis_rt.model import build_model
    from deepis_rt.runtime.source import default_cache_dir

    if model_path is not None and preset is not None:
        raise ConfigError("bench: give --model or --preset, not both")
    if preset is not None:
        torch.manual_seed(int(seed))
        net = build_model(preset, **overrides).eval()
        ckpt = Checkpoint(config=net.config, state_dict=net.state_dict(), preset=preset)
        name = preset + ("-custom" if overrides else "")
        source = f"preset {preset}{' ' + str(overrides) if overrides else ''}, random weights (seed {seed})"
        weights_key: Any = (preset, net.config.to_dict(), int(seed))
        module = net
    else:
        path = Path(model_path) if model_path is not None else bundled_checkpoint_path()
        ckpt = load_checkpoint(path)
        name, source, weights_key, module = path.stem, str(path), ckpt.sha256, None
    if tile_zyx is not None:
        tile = tuple(int(v) for v in tile_zyx)
        multiple = int(ckpt.config.size_multiple)
        if len(tile) != 3 or any(v < multiple or v % multiple for v in tile):
            raise ConfigError(f"bench: --tile {tile}: three sizes, each a multiple of {multiple}")
        ckpt.meta = ckpt.meta.replace(tile_zyx=tile)
    key = _key(weights_key, list(ckpt.tile_zyx), __version__, torch.__version__)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return BenchModel(name=name, source=source, checkpoint=ckpt, key=key, cache_dir=root / "bench" / key,
                      _module=module)
