"""``deepis-rt segment-field`` with a real backend (ONNX Runtime, a tiny network) equals ``load().segment()``."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from field_scenes import VOXEL_SIZE_UM, conjugate_field

import deepis_rt
from deepis_rt.cli.main import main
from deepis_rt.field import FieldStore
from deepis_rt.io import readers

SHAPE = (16, 64, 96)


@pytest.mark.parametrize("suffix", [".npy", ".tif"])
def test_segment_field_command_equals_the_in_memory_path(tiny_field_checkpoint, tmp_path, monkeypatch, suffix):
    """The field is read region by region (never whole), and the results equal the in-memory path."""
    volume = conjugate_field(SHAPE, [(8, 32, 48)], radius_vox=(4, 10, 10))
    path = tmp_path / f"field{suffix}"
    if suffix == ".npy":
        np.save(path, volume)
    else:
        tifffile.imwrite(path, volume, bigtiff=True)

    def whole_read(*args, **kwargs):
        raise AssertionError("segment-field read the whole field")

    monkeypatch.setattr(readers, "read_tomogram", whole_read)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [
        "segment-field", str(path), "--out", str(out), "--model", str(tiny_field_checkpoint),
        "--backend", "onnxruntime", "--max-memory", "0.005", "--voxel-size", *map(str, VOXEL_SIZE_UM),
        "--no-progress"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["plan"]["blocks"] > 1 and summary["plan"]["max_memory_gb"] == 0.005

    monkeypatch.undo()
    with deepis_rt.load(tiny_field_checkpoint, backend="onnxruntime") as seg:
        reference = seg.segment(volume, VOXEL_SIZE_UM)
    store = FieldStore.open(out / "field.ome.zarr", mode="r")
    np.testing.assert_allclose(store.distance[:], reference.distance, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(store.labels[:], reference.labels)
    np.testing.assert_array_equal(store.cell_labels[:], reference.analysis.cell_labels)
    with open(out / "cells.csv") as fh:
        cells = list(csv.DictReader(fh))
    assert [int(c["cell_id"]) for c in cells] == [c.cell_id for c in reference.cells]
    assert [float(c["volume_um3"]) for c in cells] == [c.volume_um3 for c in reference.cells]
    assert summary["cells"] == len(reference.cells) and summary["synapses"] == len(reference.synapses)
    assert summary["quality"] == reference.quality


def test_a_budget_too_small_is_one_clear_line(tiny_field_checkpoint, tmp_path):
    np.save(tmp_path / "field.npy", np.full((16, 64, 64), 1.337, np.float32))
    result = CliRunner().invoke(main, [
        "segment-field", str(tmp_path / "field.npy"), "--out", str(tmp_path / "out"), "--model",
        str(tiny_field_checkpoint), "--backend", "onnxruntime", "--max-memory", "0.001"])
    assert result.exit_code == 2
    assert "deepis-rt: error: field plan: max_memory_gb=0.001" in result.output and "give at least" in result.output
