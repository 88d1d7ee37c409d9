"""The bounded-memory path gives the in-memory path's results: distance, labels, cells, synapses."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import zarr
from field_scenes import VOXEL_SIZE_UM, conjugate_field

from deepis_rt.analysis.quality import CELL_AT_EDGE, FAINT_CELL, split_reasons
from deepis_rt.errors import InputError
from deepis_rt.field import FieldStore
from deepis_rt.field.segment import segment_field

SHAPE = (40, 100, 120)
#: conjugates across the 32-voxel chunk borders (Y 32/64, X 32/64/96) and 16-voxel Z borders
CENTRES = [(16, 32, 64), (12, 70, 64), (30, 30, 90), (20, 66, 100), (30, 90, 20)]


@pytest.fixture(scope="module")
def field_volume():
    return conjugate_field(SHAPE, CENTRES)


@pytest.fixture(scope="module")
def in_memory(fake_segmenter, field_volume):
    return fake_segmenter.segment(field_volume, VOXEL_SIZE_UM)


def _assert_same_results(result, reference):
    np.testing.assert_array_equal(np.asarray(result.distance), reference.distance)
    np.testing.assert_array_equal(np.asarray(result.labels), reference.labels)
    np.testing.assert_array_equal(np.asarray(result.analysis.cell_labels), reference.analysis.cell_labels)
    assert result.cells == reference.cells
    assert result.synapses == reference.synapses
    assert result.analysis.background_noise_um == reference.analysis.background_noise_um
    assert result.quality == reference.quality


@pytest.fixture(scope="module", params=[(16, 32, 32), (32, 64, 64)], ids=["chunk-blocks", "8-chunk-blocks"])
def by_blocks(request, fake_segmenter, field_volume, tmp_path_factory):
    out = tmp_path_factory.mktemp("field")
    result = segment_field(fake_segmenter, field_volume, VOXEL_SIZE_UM, out=out, chunks=(16, 32, 32),
                           block_zyx=request.param)
    return result, request.param, out


def test_equals_the_in_memory_path_with_cells_across_blocks(by_blocks, in_memory):
    result, block_zyx, out = by_blocks
    assert len(in_memory.synapses) == len(CENTRES) and len(in_memory.cells) == 2 * len(CENTRES)
    # every conjugate crosses a block border
    cell_labels = np.asarray(result.analysis.cell_labels)
    for syn in result.synapses:
        where = np.nonzero((cell_labels == syn.tcell_id) | (cell_labels == syn.target_id))
        assert any(len(np.unique(w // b)) > 1 for w, b in zip(where, block_zyx, strict=True)), syn
    _assert_same_results(result, in_memory)
    assert isinstance(result.distance, zarr.Array)
    store = FieldStore.open(out / "field.ome.zarr", mode="r")
    assert store.provisional is None and store.attrs["synapses"] == len(CENTRES)
    assert store.attrs["plan"]["block_zyx"] == list(block_zyx)


def test_cells_split_by_blocks_are_merged_once(by_blocks):
    """Blocks cut the conjugates; each cell still comes out once, with its whole volume."""
    result = by_blocks[0]
    cell_labels = np.asarray(result.analysis.cell_labels)
    for cell in result.cells:
        assert (cell_labels == cell.cell_id).sum() * np.prod(VOXEL_SIZE_UM) == pytest.approx(cell.volume_um3)
    assert sorted(np.unique(cell_labels)[1:]) == [c.cell_id for c in result.cells]


def test_segment_routes_a_field_over_the_budget(fake_segmenter, field_volume, in_memory, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="deepis_rt.field"):
        result = fake_segmenter.segment(field_volume, VOXEL_SIZE_UM, max_memory_gb=0.012, store=tmp_path / "s.zarr")
    assert isinstance(result.labels, zarr.Array)
    assert "field plan:" in caplog.text and str(tmp_path / "s.zarr") in caplog.text
    _assert_same_results(result, in_memory)
    # within the default budget the in-memory path runs, as before
    assert isinstance(fake_segmenter.segment(field_volume, VOXEL_SIZE_UM).distance, np.ndarray)


def test_without_analysis_the_labels_are_the_thresholds(fake_segmenter, field_volume, tmp_path):
    reference = fake_segmenter.segment(field_volume, VOXEL_SIZE_UM, analyze=False)
    result = segment_field(fake_segmenter, field_volume, out=tmp_path, chunks=(16, 32, 32), analyze=False)
    assert result.analysis is None
    np.testing.assert_array_equal(np.asarray(result.labels), reference.labels)
    assert result.quality == reference.quality


def test_other_voxel_sizes_are_refused_with_the_fix(fake_segmenter, field_volume, tmp_path):
    with pytest.raises(InputError, match="resample the field first"):
        segment_field(fake_segmenter, field_volume, (0.4, 0.2, 0.2), out=tmp_path)
    with pytest.raises(InputError, match="expected a 3-D volume"):
        segment_field(fake_segmenter, np.zeros((4, 4), np.float32), out=tmp_path)


def test_each_synapse_keeps_its_own_quality_in_both_paths(fake_segmenter, tmp_path):
    """One conjugate cut by the field's X edge, one whole: only the cut one's synapse says cell_at_edge,
    in the bounded path as in the in-memory one (a synapse must not inherit a neighbour's reasons)."""
    shape = (24, 64, 96)
    field = conjugate_field(shape, [(12, 32, 60), (12, 32, 8)])  # the second CAR-T runs past x = 0
    reference = fake_segmenter.segment(field, VOXEL_SIZE_UM)
    result = segment_field(fake_segmenter, field, VOXEL_SIZE_UM, out=tmp_path, chunks=(16, 32, 32),
                           block_zyx=(16, 32, 32))
    for res in (reference, result):
        cell_labels = np.asarray(res.analysis.cell_labels)
        by_x = {}
        for syn in res.synapses:
            xs = np.nonzero((cell_labels == syn.tcell_id) | (cell_labels == syn.target_id))[2]
            by_x["cut" if xs.min() == 0 else "whole"] = split_reasons(syn.quality)
        assert set(by_x) == {"cut", "whole"}
        assert by_x["cut"] - by_x["whole"] == {CELL_AT_EDGE} and CELL_AT_EDGE not in by_x["whole"], by_x
        assert CELL_AT_EDGE in split_reasons(res.quality)
        # the scene's targets are darker than the medium: both paths call them faint, and each synapse
        assert FAINT_CELL in split_reasons(res.quality) and all(FAINT_CELL in r for r in by_x.values())
    assert result.synapses == reference.synapses and result.quality == reference.quality
