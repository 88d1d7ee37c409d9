"""Fixtures of the cluster tests (helpers live in cluster_helpers.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cluster_helpers import TILE, pointwise_onnx


@pytest.fixture
def export_dir(tmp_path: Path) -> Path:
    """A folder shaped like `deepis-rt export` output (ONNX files + manifest.json)."""
    from deepis_rt.checkpoint import file_sha256

    folder = tmp_path / "export" / "tiny"
    fp32 = pointwise_onnx(folder / "tiny.fp32.onnx")
    fp16 = pointwise_onnx(folder / "tiny.fp16.onnx")
    manifest = {
        "format": "deepis-rt-export",
        "format_version": 1,
        "name": "tiny",
        "files": [
            {"path": fp32.name, "precision": "fp32", "sha256": file_sha256(fp32)},
            {"path": fp16.name, "precision": "fp16", "sha256": file_sha256(fp16)},
        ],
        "batch_profile": {"min": [1, 1, *TILE], "opt": [1, 1, *TILE], "max": [4, 1, *TILE]},
        "engine": None,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder
