"""Masks and cell instances against a plain scipy.ndimage reference."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from deepis_rt import InputError
from deepis_rt.analysis import analyze, cell_masks, is_mask, label_volume
from deepis_rt.analysis.masks import default_threshold_um, label_instances

VS = (0.4, 0.2, 0.2)


def test_default_threshold_is_half_the_smallest_pitch():
    assert default_threshold_um(VS) == pytest.approx(0.1)
    with pytest.raises(InputError):
        default_threshold_um((0.4, 0.2))
    with pytest.raises(InputError):
        default_threshold_um((0.4, -0.2, 0.2))


def test_masks_and_labels_match_scipy_reference(geometry):
    d, _, _, _ = geometry.conjugate((30, 60, 60), VS, 3.0, 4.0, 2.0, (0, 0.6, 0.8), (6, 6, 6), "exact")
    rng = np.random.default_rng(0)
    d = d + rng.normal(0, 0.02, d.shape).astype(np.float32)
    t = default_threshold_um(VS)
    tcell, target = cell_masks(d, t)
    np.testing.assert_array_equal(tcell, d > 0.1)
    np.testing.assert_array_equal(target, d < -0.1)

    cross = ndi.generate_binary_structure(3, 1)
    ref_is = ndi.binary_dilation(tcell, cross, iterations=2) & ndi.binary_dilation(
        target, cross, iterations=2
    )
    np.testing.assert_array_equal(is_mask(tcell, target), ref_is)
    assert ref_is.any()

    ref_labels = np.zeros(d.shape, np.uint8)
    ref_labels[tcell] = 1
    ref_labels[target] = 2
    ref_labels[ref_is] = 3
    np.testing.assert_array_equal(label_volume(tcell, target), ref_labels)


def test_label_instances_drops_small_fragments():
    mask = np.zeros((10, 20, 20), bool)
    mask[1:6, 1:9, 1:9] = True  # 320 voxels
    mask[8, 15, 15] = True  # 1-voxel fragment
    mask[2:5, 12:16, 12:16] = True  # 48 voxels
    labels, n, dropped = label_instances(mask, voxel_volume_um3=0.5, min_volume_um3=10.0)
    assert (n, dropped) == (2, 1)
    assert labels.dtype == np.int32
    assert labels[8, 15, 15] == 0
    assert sorted(np.bincount(labels.ravel())[1:].tolist()) == [48, 320]


def test_analyze_labels_instances_and_drops_debris(geometry):
    vs = (0.5, 0.25, 0.25)
    shape = (24, 64, 96)
    tc1 = geometry.ellipsoid_mask(shape, vs, (6, 8, 6), (3, 3, 3))
    tc2 = geometry.ellipsoid_mask(shape, vs, (6, 8, 18), (3, 3, 3))
    debris = geometry.ellipsoid_mask(shape, vs, (6, 13, 12), (0.6, 0.6, 0.6))
    tgt = np.zeros(shape, bool)
    d = geometry.edt_signed(tc1 | tc2 | debris, tgt, vs)
    fa = analyze(d, None, vs, min_cell_volume_um3=20.0)
    assert [c.kind for c in fa.cells] == ["tcell", "tcell"]
    assert sorted(np.unique(fa.cell_labels).tolist()) == [0, 1, 2]
    assert not fa.labels[debris].any()
    assert fa.synapses == []
    assert fa.labels.dtype == np.uint8 and fa.labels.shape == shape


@pytest.mark.parametrize(
    "bad",
    [np.zeros((4, 4)), np.full((4, 4, 4), np.nan)],
)
def test_analyze_rejects_bad_input(bad):
    with pytest.raises(InputError, match="analysis"):
        analyze(bad, None, VS)


def test_analyze_rejects_mismatched_ri():
    with pytest.raises(InputError, match="RI volume"):
        analyze(np.zeros((4, 4, 4), np.float32), np.zeros((4, 4, 5), np.float32), VS)


def test_threshold_override_zero_works_and_negative_is_refused(geometry):
    """threshold_um=0 (the sign of an exact map) is a valid choice; a negative or NaN threshold
    would make a voxel both CAR-T and target (or no cell at all) and is refused."""
    d, tc, tg, _ = geometry.conjugate((30, 60, 60), VS, 3.0, 4.0, 2.0, (0, 0, 1), (6, 6, 6), "exact")
    fa = analyze(d, None, VS, threshold_um=0.0)
    assert fa.threshold_um == 0.0
    assert [c.kind for c in fa.cells] == ["tcell", "target"] and len(fa.synapses) == 1
    np.testing.assert_array_equal(fa.cell_labels > 0, (d > 0) | (d < 0))
    for bad in (-0.1, float("nan")):
        with pytest.raises(InputError, match="threshold_um"):
            analyze(d, None, VS, threshold_um=bad)
