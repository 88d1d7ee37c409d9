"""Test-time augmentation (flips) and the quality flags of frames and synapses.

The runners here turn RI back into a distance map voxel by voxel (inside a cell RI = medium + 0.02 +
distance / 500, so both cells sit 0.015-0.025 above the medium as real cells do; the medium outside),
so an analytic conjugate of two spheres goes through the real Segmenter, tiling and analysis.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from deepis_rt.analysis.flips import area_sigma_with_flips_um2
from deepis_rt.analysis.quality import (
    AXIAL_CONTACT,
    CELL_AT_EDGE,
    FAINT_CELL,
    FLIPS_DISAGREE,
    NEAR_TILE_SEAM,
    QUALITY_OK,
    REASONS,
    RI_OUT_OF_RANGE,
    VOXEL_SIZE_OUT_OF_RANGE,
    TrainingRange,
    describe_training_inputs,
    faint_cells,
    join_reasons,
    split_reasons,
)
from deepis_rt.backends import FakeRunner
from deepis_rt.runtime.segmenter import Segmenter
from deepis_rt.runtime.tta import FLIP_AXES

VS = (0.5, 0.25, 0.25)
MEDIUM = 1.337
UM_PER_RI = 500.0  # inside a cell, distance (um) = (RI - medium - 0.02) x 500
CELL_RI = 0.02  # a cell's RI above the medium at its border (where the distance is 0)
# the normalised input is x = (RI - medium) / 0.02: 1 + distance / 10 inside a cell, 0 outside


class DistanceRunner(FakeRunner):
    """The distance map back from the RI of :func:`_ri` (flip-equivariant, like an ideal network).

    ``input_gain`` scales the input first: 10 reads cells from a tenth of a real cell's contrast."""

    input_gain = 1.0

    def infer_impl(self, batch):
        x = np.asarray(batch, dtype=np.float32) * np.float32(self.input_gain)
        self.calls.append(tuple(x.shape))
        return np.where(x > 0.5, (x - 1) * np.float32(CELL_RI * UM_PER_RI), 0).astype(np.float32)


class SidedRunner(DistanceRunner):
    """Not flip-equivariant: where the CAR-T cell (positive side) is on the right in X, it puts the
    target's border 0.3 um inside the target, which opens a gap between the cells; mirrored in X, it
    does not (a network with a bias)."""

    def infer_impl(self, batch):
        out = super().infer_impl(batch)
        half = out.shape[-1] // 2
        for o in out:
            if o[..., :half].sum() < o[..., half:].sum():
                o[o < 0] = np.minimum(o[o < 0] + np.float32(0.3), 0)
        return out


def _segmenter(runner, tile=(16, 48, 48), **kw):
    meta = {"voxel_size_um": list(VS), "ri_normalization": {"offset": MEDIUM, "scale": 0.02}, "medium_ri": MEDIUM,
            "tile_zyx": list(tile), **kw.pop("meta", {})}
    return Segmenter(runner, meta, **kw)


def _ri(shape=(16, 48, 48), origin_x_um=6.0, r=(2.2, 2.6), contact=1.4, axis=2, centre_um=(4.0, 6.0, 6.0)):
    """Two spheres along X whose contact disk (radius ``contact``) is centred at (4, 6, origin_x) um:
    the exact signed distance (CAR-T +, target -), written as RI. The plane lies 0.1 um past
    ``origin_x_um``, between voxel centres: on a voxel row it would read 0 there, a one-voxel gap between
    the two masks, which the IS-area estimator does not count as a contact (docs/analysis.md)."""
    origin_x_um = origin_x_um + 0.1
    p = np.stack(np.meshgrid(*[np.arange(n) * h for n, h in zip(shape, VS, strict=True)], indexing="ij"), -1)
    s = p[..., axis] - origin_x_um  # signed distance to the contact plane
    c1, c2 = np.array(centre_um, dtype=float), np.array(centre_um, dtype=float)
    c1[axis] = origin_x_um - math.sqrt(r[0] ** 2 - contact**2)
    c2[axis] = origin_x_um + math.sqrt(r[1] ** 2 - contact**2)
    rho1, rho2 = np.linalg.norm(p - c1, axis=-1), np.linalg.norm(p - c2, axis=-1)
    in1, in2 = (rho1 < r[0]) & (s < 0), (rho2 < r[1]) & (s >= 0)
    d = np.where(in1, np.minimum(r[0] - rho1, -s), 0.0) - np.where(in2, np.minimum(r[1] - rho2, s), 0.0)
    return (MEDIUM + np.where(in1 | in2, CELL_RI + d / UM_PER_RI, 0.0)).astype(np.float32)


def test_flip_set_is_lateral_and_starts_with_identity():
    assert FLIP_AXES[0] == () and len(FLIP_AXES) == 4
    assert all(0 not in axes for axes in FLIP_AXES)  # Z is never mirrored


def test_tta_of_a_flip_equivariant_model_changes_nothing_but_costs_four_passes():
    ri = _ri()
    runner = DistanceRunner()
    seg = _segmenter(runner, batch_size=4)
    plain = seg.segment(ri, VS)
    assert runner.calls == [(1, 1, 16, 48, 48)]
    runner.calls.clear()
    tta = seg.segment(ri, VS, tta=True)
    assert runner.calls == [(4, 1, 16, 48, 48)]  # the four flips share one batch
    np.testing.assert_allclose(tta.distance, plain.distance, atol=1e-6)
    assert len(plain.synapses) == len(tta.synapses) == 1
    assert tta.synapses[0].is_area_err_um2 == pytest.approx(plain.synapses[0].is_area_err_um2)
    assert plain.quality == tta.quality == QUALITY_OK and tta.synapses[0].quality == QUALITY_OK
    assert tta.flip_distances is None  # dropped after the analysis


def test_tta_averages_the_flips_and_their_spread_widens_sigma():
    ri = _ri()
    seg = _segmenter(SidedRunner(), tta=True)  # the Segmenter's default
    tta = seg.segment(ri, VS)
    plain = seg.segment(ri, VS, tta=False)
    one = SidedRunner().activate()
    x = ((ri - MEDIUM) / 0.02)[None, None]
    flips = [np.flip(one.infer(np.ascontiguousarray(np.flip(x, tuple(a + 2 for a in axes))))[0, 0], axes)
             for axes in FLIP_AXES]
    np.testing.assert_allclose(tta.distance, np.mean(flips, axis=0), atol=1e-5)
    (s_tta,), (s_plain,) = tta.synapses, plain.synapses
    assert s_tta.is_area_err_um2 > 1.2 * s_plain.is_area_err_um2  # the flips' spread adds in quadrature
    assert FLIPS_DISAGREE in split_reasons(s_tta.quality) and FLIPS_DISAGREE in split_reasons(tta.quality)
    assert FLIPS_DISAGREE not in split_reasons(plain.quality)


def test_tta_on_a_tiled_volume_uses_the_same_plan_for_every_flip():
    ri = _ri(shape=(16, 48, 80), origin_x_um=9.0)
    runner = SidedRunner()
    seg = _segmenter(runner, batch_size=2)
    seg.segment(ri, VS)
    n_tiles = len(runner.calls)
    runner.calls.clear()
    tta = seg.segment(ri, VS, tta=True)
    assert len(runner.calls) == 4 * n_tiles and set(runner.calls) == {(2, 1, 16, 48, 48)}
    expected = np.mean([np.flip(seg.segment(np.ascontiguousarray(np.flip(ri, axes)), VS).distance, axes)
                        for axes in FLIP_AXES], axis=0)
    np.testing.assert_allclose(tta.distance, expected, atol=1e-5)


def test_area_sigma_with_flips_adds_the_spread_in_quadrature():
    assert area_sigma_with_flips_um2(0.3, [10.0, 10.0, 10.0, 10.0]) == pytest.approx(0.3)
    spread = float(np.std([9.0, 10.0, 11.0, 10.0], ddof=1))
    assert area_sigma_with_flips_um2(0.3, [9.0, 10.0, 11.0, 10.0]) == pytest.approx(math.hypot(0.3, spread))
    assert area_sigma_with_flips_um2(math.nan, [9.0, 11.0]) == pytest.approx(math.sqrt(2))
    assert math.isnan(area_sigma_with_flips_um2(math.nan, []))


def test_vocabulary_is_ordered_and_closed():
    assert join_reasons([]) == QUALITY_OK
    assert join_reasons([NEAR_TILE_SEAM, RI_OUT_OF_RANGE, NEAR_TILE_SEAM]) == "ri_out_of_range;near_tile_seam"
    assert split_reasons("ri_out_of_range;near_tile_seam") == {RI_OUT_OF_RANGE, NEAR_TILE_SEAM}
    assert split_reasons(QUALITY_OK) == set() == split_reasons("")
    assert len(set(REASONS)) == 7
    with pytest.raises(ValueError, match="unknown reason"):
        join_reasons(["blurry"])


def _quality(ri, vs=VS, **kw):
    result = _segmenter(DistanceRunner(), **kw).segment(ri, vs)
    return split_reasons(result.quality), [split_reasons(s.quality) for s in result.synapses]


def test_clean_input_raises_no_flag():
    frame, synapses = _quality(_ri())
    assert frame == set() and synapses == [set()]


def test_another_medium_is_outside_the_training_ri_range():
    frame, _ = _quality(_ri() - np.float32(0.004))  # PBS 1.333 instead of the training medium
    assert RI_OUT_OF_RANGE in frame


def test_bright_artefacts_are_outside_the_training_ri_range():
    ri = _ri()
    ri[:, :4, :] = 1.45  # a band of values no training frame had (more than 0.1 % of the voxels)
    frame, _ = _quality(ri)
    assert RI_OUT_OF_RANGE in frame


def test_a_recorded_training_range_replaces_the_default():
    recorded = {"training": {"input_range": {"ri": [1.336, 1.338], "medium_ri": [1.3365, 1.3375],
                                             "voxel_size_um_min": list(VS), "voxel_size_um_max": list(VS)}}}
    assert TrainingRange.from_meta(recorded).recorded and not TrainingRange.from_meta({}).recorded
    frame, _ = _quality(_ri(), meta=recorded)  # the cells are brighter than this model ever saw
    assert frame == {RI_OUT_OF_RANGE}


def test_describe_training_inputs_round_trips_through_the_meta():
    ri = _ri()
    rec = describe_training_inputs([ri], [VS])
    trained = TrainingRange.from_meta({"training": {"input_range": rec}})
    assert trained.recorded and trained.medium_low < MEDIUM < trained.medium_high
    assert trained.ri_low < ri.min() and trained.ri_high > ri.max()
    assert trained.voxel_min_um == VS == trained.voxel_max_um


def test_coarse_voxels_are_outside_the_training_range():
    ri = _ri()
    coarse = np.ascontiguousarray(ri[:, ::2, ::2])  # 0.5 um laterally; the model was trained at 0.25 um
    frame, _ = _quality(coarse, (0.5, 0.5, 0.5))
    assert VOXEL_SIZE_OUT_OF_RANGE in frame


def test_a_cell_cut_by_the_field_edge_is_flagged():
    frame, synapses = _quality(_ri(origin_x_um=9.0))  # the target cell reaches past x = 12 um
    assert CELL_AT_EDGE in frame and synapses == [{CELL_AT_EDGE}]


def test_a_contact_on_a_tile_seam_is_flagged_and_one_inside_a_tile_is_not():
    # tiles of 48 voxels along X over 80: starts 0 and 32, the overlap's middle at x = 40 voxels (10 um)
    frame, synapses = _quality(_ri(shape=(16, 48, 80), origin_x_um=10.0))
    assert NEAR_TILE_SEAM in frame and synapses == [{NEAR_TILE_SEAM}]
    frame, synapses = _quality(_ri(shape=(16, 48, 80), origin_x_um=5.5))
    assert synapses == [set()] and frame == set()


class FaintRunner(DistanceRunner):
    """Reads cells from a tenth of a real cell's RI contrast (as a network reading noise as cells)."""

    input_gain = 10.0


def test_a_cell_barely_above_the_background_is_flagged_faint():
    ri = _ri()
    faint = (MEDIUM + (ri - MEDIUM) * np.float32(0.1)).astype(np.float32)  # cells 0.0015-0.0025 above
    result = _segmenter(FaintRunner()).segment(faint, VS)
    assert len(result.synapses) == 1 and {c.kind for c in result.analysis.cells} == {"tcell", "target"}
    assert split_reasons(result.quality) == {FAINT_CELL} and split_reasons(result.synapses[0].quality) == {FAINT_CELL}
    # the same cells at a real cell's contrast are not
    assert _quality(ri) == (set(), [set()])


def test_faint_cells_compares_each_cells_mean_ri_with_the_background():
    class C:
        def __init__(self, cell_id, mean_ri):
            self.cell_id, self.mean_ri = cell_id, mean_ri

    cells = [C(1, MEDIUM + 0.02), C(2, MEDIUM + 0.004), C(3, MEDIUM - 0.001), C(4, math.nan)]
    assert faint_cells(cells, MEDIUM) == {2, 3}
    assert faint_cells(cells, MEDIUM, min_contrast=0.001) == {3}
    assert faint_cells(cells, math.nan) == set()  # no background known: nothing judged


class NoisyRunner(DistanceRunner):
    """Adds a little noise everywhere, as a network's map has (so the network's part of sigma applies)."""

    def infer_impl(self, batch):
        out = super().infer_impl(batch)
        return out + np.random.default_rng(0).normal(scale=0.02, size=out.shape).astype(np.float32)


def _network_record(rel, resolution=0.0, ambiguity=0.0):
    return {"uncertainty": {"network": {"rel": rel, "resolution_voxels": resolution, "ambiguity": ambiguity,
                                        "fitted_on": "a test"}}}


def test_the_checkpoints_own_network_uncertainty_sets_sigma(caplog):
    from deepis_rt.analysis.contact import DEFAULT_NETWORK_ERROR

    ri = _ri()
    with caplog.at_level("WARNING"):
        default = _segmenter(NoisyRunner())
    assert "carries no calibration" in caplog.text
    assert default.network_error == DEFAULT_NETWORK_ERROR and not default.uncertainty_record()["from_checkpoint"]
    narrow = _segmenter(NoisyRunner(), meta=_network_record(0.0))
    wide = _segmenter(NoisyRunner(), meta=_network_record(0.5))
    assert wide.uncertainty_record() == {"network": {"rel": 0.5, "resolution_voxels": 0.0, "noise_gain": 1.0,
                                                     "ambiguity": 0.0, "fitted_on": "a test"},
                                         "from_checkpoint": True}
    s_default, s_narrow, s_wide = (seg.segment(ri, VS).synapses[0] for seg in (default, narrow, wide))
    assert s_narrow.is_area_um2 == s_wide.is_area_um2 == s_default.is_area_um2  # the area does not change
    assert s_narrow.is_area_err_um2 < min(s_default.is_area_err_um2, s_wide.is_area_err_um2)
    assert s_wide.is_area_err_um2 >= 0.5 * s_wide.is_area_um2


def test_a_malformed_network_uncertainty_is_refused():
    from deepis_rt.errors import InputError

    with pytest.raises(InputError, match="uncertainty"):
        _segmenter(DistanceRunner(), meta={"uncertainty": {"network": {"rel": 0.1}}})  # fields missing
    with pytest.raises(InputError, match="rel"):
        _segmenter(DistanceRunner(), meta=_network_record(-0.1))


def test_a_contact_facing_the_optical_axis_is_flagged():
    # the same pair stacked along Z (the CAR-T under its target, contact plane at z = 8 um)
    stacked = _ri(shape=(32, 48, 48), origin_x_um=8.0, axis=0, centre_um=(8.0, 6.0, 6.0))
    frame, synapses = _quality(stacked, tile=(32, 48, 48))  # one tile: no seam
    assert synapses == [{AXIAL_CONTACT}] and frame == {AXIAL_CONTACT}
    result = _segmenter(DistanceRunner(), tile=(32, 48, 48)).segment(stacked, VS)
    assert result.analysis.contacts[1].tilt_from_optical_axis_deg < 10
    # side by side along X it is seen edge-on: no flag
    side = _segmenter(DistanceRunner()).segment(_ri(), VS)
    assert side.analysis.contacts[1].tilt_from_optical_axis_deg > 80 and side.synapses[0].quality == QUALITY_OK
