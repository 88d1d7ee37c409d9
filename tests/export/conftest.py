"""Shared, session-scoped exports: dynamo ONNX export takes ~10 s even for tiny models."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

#: Tiny models with the structure of each preset (same depth and GCN kernels; the paper preset's
#: skip width is twice its first width, the lite preset's equals it). Tile kept small for speed.
TINY_TILE = [16, 32, 32]
STRUCTURES = {
    "deepis-lite": {"widths": (4, 8, 8, 8, 8), "skip_width": 4},
    "deepis": {"widths": (4, 8, 8, 8, 8), "skip_width": 8},
}


class _Exports:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._done: dict[str, tuple] = {}

    def checkpoint(self, preset: str) -> Path:
        import torch

        from deepis_rt.checkpoint import save_checkpoint
        from deepis_rt.model import build_model

        path = self.root / "ckpt" / f"tiny-{preset}.pt"
        if not path.exists():
            torch.manual_seed(1)
            model = build_model(preset, **STRUCTURES[preset])
            # non-trivial BN statistics, so that folding BN into Conv is exercised
            with torch.no_grad():
                for m in model.modules():
                    if isinstance(m, torch.nn.BatchNorm3d):
                        m.running_mean.uniform_(-0.2, 0.2)
                        m.running_var.uniform_(0.5, 1.5)
                        m.weight.uniform_(0.5, 1.5)
                        m.bias.uniform_(-0.2, 0.2)
            save_checkpoint(path, model, meta={"tile_zyx": TINY_TILE, "description": f"tiny {preset}"})
        return path

    def get(self, preset: str):
        """(checkpoint path, ExportResult) of the tiny model of ``preset`` (exported once)."""
        if preset not in self._done:
            from deepis_rt.export.pipeline import export_model

            ckpt = self.checkpoint(preset)
            result = export_model(ckpt, out_dir=self.root / "export", trt=False)
            self._done[preset] = (ckpt, result)
        return self._done[preset]


@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> _Exports:
    return _Exports(tmp_path_factory.mktemp("exports"))


@pytest.fixture
def fake_onnx_export(monkeypatch, exports):
    """Replace the (slow) dynamo export by a copy of an already exported FP32 graph.

    Returns a setter: ``fake_onnx_export(preset)`` chooses which preset's graph is copied.
    """
    state = {"preset": "deepis-lite"}
    for preset in STRUCTURES:  # the real exports must exist before export_onnx is replaced
        exports.get(preset)

    def fake(model, path, tile_zyx, opset=18, dynamic_shape=False, meta=None):
        _, result = exports.get(state["preset"])
        shutil.copy(result.onnx_fp32, path)
        return Path(path)

    import deepis_rt.export.onnx_export as onnx_export

    monkeypatch.setattr(onnx_export, "export_onnx", fake)

    def choose(preset: str) -> None:
        state["preset"] = preset

    return choose
