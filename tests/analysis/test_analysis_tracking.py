"""SynapseTracker: stable ids through drift, gaps, new cells; synapse events; kinetics summary."""

import types

import numpy as np
import pytest

from deepis_rt import ConfigError, InputError
from deepis_rt.analysis import Cell, FrameAnalysis, Synapse, SynapseTracker, analyze, saturation


def frame(cells, synapses=()):
    """cells: list of (kind, (z, y, x), volume); synapses: list of (tcell index, target index, area)."""
    cs = [Cell(i + 1, kind, vol, 100.0, 1.36, 10.0, *pos) for i, (kind, pos, vol) in enumerate(cells)]
    ss = [Synapse(j + 1, a + 1, b + 1, area, 1.36, 1.0, 50.0) for j, (a, b, area) in enumerate(synapses)]
    return FrameAnalysis(
        np.zeros((1, 1, 1), np.uint8), np.zeros((1, 1, 1), np.int32), cs, ss, (0.5, 0.25, 0.25)
    )


def kinds(tracked):
    return {c.kind: c.track_id for c in tracked.cells}


def test_identity_through_drift_and_a_one_frame_gap():
    tr = SynapseTracker(max_link_distance_um=5.0, max_gap_frames=1)
    ids = []
    for f in range(12):
        cells = [("target", (8.0, 20.0 + 0.3 * f, 20.0), 900.0)]
        if f != 5:  # CAR-T missing in frame 5 (e.g. a failed segmentation)
            cells.insert(0, ("tcell", (8.0, 10.0 + 1.5 * f, 10.0 + 0.8 * f), 250.0))
        out = tr.update(frame(cells), time_s=4.0 * f)
        ids.append(kinds(out))
    assert ids[5] == {"target": ids[0]["target"]}
    assert all(i["target"] == ids[0]["target"] for i in ids)
    assert all(i["tcell"] == ids[0]["tcell"] for i in ids if "tcell" in i)
    assert ids[0]["tcell"] != ids[0]["target"]


def test_second_cell_entering_gets_a_new_id_and_old_ids_stay():
    tr = SynapseTracker(max_link_distance_um=5.0)
    first = newcomer = None
    for f in range(8):
        cells = [("tcell", (8.0, 10.0 + f, 10.0), 250.0), ("target", (8.0, 20.0, 20.0), 900.0)]
        if f >= 4:  # a second CAR-T enters from the edge, moving in
            cells.append(("tcell", (8.0, 40.0 - f, 5.0), 250.0))
        out = tr.update(frame(cells), time_s=float(f))
        tracks = [c.track_id for c in out.cells]
        if first is None:
            first = tracks[:2]
        assert tracks[:2] == first
        if f >= 4:
            assert tracks[2] not in first
            if newcomer is None:
                newcomer = tracks[2]
            assert tracks[2] == newcomer
    assert len({*first, newcomer}) == 3


def test_random_walks_with_dropouts_keep_their_ids():
    """Four well-separated cells, 0.7 um steps, 10 % of detections missing (gaps of 1-2 frames).

    laptrack's default alternative costs (from the spread of link costs) start new tracks here.
    """
    rng = np.random.default_rng(5)
    pos = np.array([[8, 10, 10], [8, 40, 10], [8, 10, 40], [8, 40, 40.0]])
    kinds_ = ["tcell", "tcell", "target", "target"]
    tr = SynapseTracker(max_link_distance_um=4.0, max_gap_frames=2)
    seen: dict[int, int] = {}
    for f in range(50):
        pos[:, 1:] += rng.normal(0, 0.7, (4, 2))
        present = [k for k in range(4) if rng.random() >= 0.1]
        out = tr.update(frame([(kinds_[k], tuple(pos[k]), 200.0) for k in present]), float(f))
        for k, c in zip(present, out.cells, strict=True):
            assert seen.setdefault(k, c.track_id) == c.track_id, f"frame {f}: cell {k} changed track"
    assert len(set(seen.values())) == 4


def test_far_jump_is_a_new_track():
    tr = SynapseTracker(max_link_distance_um=3.0)
    a = tr.update(frame([("tcell", (5.0, 5.0, 5.0), 200.0)]), 0.0).cells[0].track_id
    b = tr.update(frame([("tcell", (5.0, 30.0, 30.0), 200.0)]), 1.0).cells[0].track_id
    assert a != b


def test_synapse_formed_lost_reformed_and_threshold_events():
    received = []
    tr = SynapseTracker(area_threshold_um2=30.0, on_event=received.append)
    areas = [None, 10.0, 25.0, 35.0, 40.0, None, None, 20.0, 45.0]
    returned = []
    for f, area in enumerate(areas):
        cells = [("tcell", (8.0, 10.0 + 0.2 * f, 10.0), 250.0), ("target", (8.0, 16.0, 10.0), 900.0)]
        syn = [] if area is None else [(0, 1, area)]
        out = tr.update(frame(cells, syn), time_s=5.0 * f)
        returned.extend(out.events)
        for s in out.synapses:
            assert (s.tcell_track, s.target_track) == (out.cells[0].track_id, out.cells[1].track_id)
    assert received == returned
    got = [(e.kind, e.frame, e.direction) for e in returned]
    assert got == [
        ("formed", 1, None),
        ("area_threshold_crossed", 3, "up"),
        ("lost", 5, None),
        ("re-formed", 7, None),
        ("area_threshold_crossed", 8, "up"),
    ]
    assert len({(e.tcell_track, e.target_track) for e in returned}) == 1
    (summary,) = tr.summary()
    assert summary.onset_s == 5.0 and summary.duration_s == 35.0 and summary.n_frames == 6


def test_accepts_frame_results_with_analysis_attribute_and_rejects_others():
    tr = SynapseTracker()
    result = types.SimpleNamespace(analysis=frame([("tcell", (1.0, 1.0, 1.0), 100.0)]), time_s=12.5)
    out = tr.update(result)
    assert out.time_s == 12.5 and out.cells[0].track_id == 1
    assert result.analysis.cells[0].track_id == 1  # filled in place
    with pytest.raises(InputError, match="FrameAnalysis"):
        tr.update(np.zeros((4, 4, 4)), 1.0)
    with pytest.raises(InputError, match="analysis is None"):
        tr.update(types.SimpleNamespace(analysis=None), 2.0)


@pytest.mark.parametrize(
    "kwargs", [{"max_link_distance_um": 0}, {"max_gap_frames": 0}, {"window_frames": 2, "max_gap_frames": 2}]
)
def test_invalid_settings(kwargs):
    with pytest.raises(ConfigError, match="tracker"):
        SynapseTracker(**kwargs)


def test_summary_fits_area_and_displacement():
    rng = np.random.default_rng(3)
    tr = SynapseTracker(max_link_distance_um=6.0)
    t = np.arange(0.0, 300.0, 6.0)
    area = saturation(t, 106.0, 40.0) + rng.normal(0, 3.0, t.size)
    disp = saturation(t, 6.0, 60.0)
    for k, tk in enumerate(t):
        cells = [("tcell", (8.0, 10.0 + disp[k], 10.0), 250.0), ("target", (8.0, 25.0, 10.0), 900.0)]
        tr.update(frame(cells, [(0, 1, max(area[k], 0.5))]), time_s=100.0 + tk)
    (s,) = tr.summary()
    assert s.onset_s == 100.0
    assert s.area_fit.a_max == pytest.approx(106.0, rel=0.06)
    assert s.area_fit.tau_half_s == pytest.approx(40.0, rel=0.2)
    assert s.displacement_fit.a_max == pytest.approx(6.0, rel=0.02)
    assert s.displacement_fit.tau_half_s == pytest.approx(60.0, rel=0.05)
    d = s.to_dict()
    assert {"onset_s", "duration_s", "A_max_um2", "tau_half_s", "r_squared", "displacement_fit"} <= set(d)


@pytest.mark.parametrize("formed_before_s", [20.0, 60.0])
def test_synapse_in_contact_from_the_first_frame_is_not_fitted_as_if_it_formed_then(formed_before_s):
    """Recording starts after the contact formed: the onset is not observed. The fit must not pin it to
    one interval before the first frame (that gave tau_half 14.7 +- 0.5 s or 3.6 +- 0.3 s for a true 40 s);
    it finds the onset itself, and the truth lies within its stated errors."""
    rng = np.random.default_rng(5)
    tr = SynapseTracker()
    t = np.arange(0.0, 150.0, 3.0)
    sigma = 1.5
    area = saturation(t + formed_before_s, 106.0, 40.0) + rng.normal(0, sigma, t.size)
    for k, tk in enumerate(t):
        f = frame([("tcell", (8.0, 10.0, 10.0), 250.0), ("target", (8.0, 25.0, 10.0), 900.0)], [(0, 1, area[k])])
        f.synapses[0].is_area_err_um2 = sigma
        tr.update(f, time_s=tk)
    (s,) = tr.summary()
    assert s.onset_observed is False and s.to_dict()["onset_observed"] is False
    fit = s.area_fit
    assert fit.success and fit.weighted
    assert abs(fit.tau_half_s - 40.0) < 3 * fit.tau_half_err_s + 2.0, (fit.tau_half_s, fit.tau_half_err_s)
    assert abs(fit.a_max - 106.0) < 3 * fit.a_max_err + 2.0, (fit.a_max, fit.a_max_err)
    assert fit.onset_offset_s == pytest.approx(-formed_before_s, abs=max(10.0, 3 * fit.tau_half_err_s))


def test_a_first_area_indistinguishable_from_zero_means_the_contact_has_just_formed():
    """In contact from the first frame, but at 1.9 +- 5.8 um^2 (the demo's first frame): the contact
    formed then, not long before. Its onset counts as observed, within one interval, and the fit
    recovers the kinetics with the truth inside its errors (with the onset free far back it gave
    A_max 1e8 um^2)."""
    rng = np.random.default_rng(3)
    cells = [("tcell", (8.0, 10.0, 10.0), 250.0), ("target", (8.0, 25.0, 10.0), 900.0)]
    t = np.arange(0.0, 63.0, 3.2)
    sigma = 4.0
    area = saturation(t + 0.5, 77.0, 24.0) + rng.normal(0, sigma, t.size)
    area[0] = 1.9
    tr = SynapseTracker()
    for k, tk in enumerate(t):
        f = frame(cells, [(0, 1, area[k])])
        f.synapses[0].is_area_err_um2 = sigma
        tr.update(f, time_s=tk)
    (s,) = tr.summary()
    assert s.onset_observed is True
    fit = s.area_fit
    assert fit.success and fit.constrained and -3.2 <= fit.onset_offset_s <= 0.0
    assert abs(fit.a_max - 77.0) <= 2 * fit.a_max_err and abs(fit.tau_half_s - 24.0) <= 2 * fit.tau_half_err_s


def test_a_fit_that_does_not_constrain_its_parameters_says_so():
    """A contact still rising linearly: A_max and tau_half run off together; the fit says it is not
    constrained, and the display says so instead of showing the number."""
    from deepis_rt.analysis.kinetics import fit_saturation, parameter_text

    t = np.arange(0.0, 30.0, 3.0)
    fit = fit_saturation(t, 2.0 * t + 1.0, sigma=np.full(t.size, 3.0), onset_window_s=300.0)
    assert fit.success and not fit.constrained and "not constrained" in fit.message
    assert parameter_text(fit.a_max, fit.a_max_err, "um^2").startswith("not constrained (")
    assert parameter_text(77.5, 3.0, "um^2") == "77.5 +- 3.0 um^2"
    assert parameter_text(None, None) == "-"


def test_a_synapse_that_forms_while_recording_has_an_observed_onset():
    tr = SynapseTracker()
    cells = [("tcell", (8.0, 10.0, 10.0), 250.0), ("target", (8.0, 25.0, 10.0), 900.0)]
    for k in range(8):
        tr.update(frame(cells, [(0, 1, 10.0 * k)] if k >= 2 else []), time_s=3.0 * k)
    (s,) = tr.summary()
    assert s.onset_observed is True and s.onset_s == 6.0
    assert -3.0 <= s.area_fit.onset_offset_s <= 0.0  # within the interval since the last frame apart


def test_a_pair_that_parts_and_meets_again_is_fitted_on_one_contact():
    """Two contacts (the cells part for 5 frames, then meet again and stay): one curve through both
    cannot follow a second rise from zero; the fit describes the longest contact, from its own onset.
    A dropout of one frame (a missed segmentation) does not split a contact."""
    rng = np.random.default_rng(2)
    cells = [("tcell", (8.0, 10.0, 10.0), 250.0), ("target", (8.0, 25.0, 10.0), 900.0)]
    tr = SynapseTracker()
    dt = 3.0
    first = [saturation(dt * k + 1.0, 106.0, 40.0) for k in range(6)]  # a brief first contact
    times, k = [], 0
    for a in first:
        tr.update(frame(cells, [(0, 1, a)]), time_s=dt * k)
        k += 1
    for _ in range(5):  # apart
        tr.update(frame(cells), time_s=dt * k)
        k += 1
    second_onset = dt * k
    for j in range(40):
        if j == 12:  # one frame missed by the segmentation: the same contact goes on
            tr.update(frame(cells), time_s=dt * k)
        else:
            area = saturation(dt * j + 1.0, 106.0, 40.0) + rng.normal(0, 1.0)
            tr.update(frame(cells, [(0, 1, area)]), time_s=dt * k)
            times.append(dt * k)
        k += 1
    (s,) = tr.summary()
    assert s.episodes == 2 and s.onset_s == 0.0 and s.fit_onset_s == second_onset and s.onset_observed
    assert s.area_fit.n_points == 39
    assert s.area_fit.tau_half_s == pytest.approx(40.0, rel=0.2) and s.area_fit.a_max == pytest.approx(106.0, rel=0.1)
    d = s.to_dict()
    assert d["episodes"] == 2 and d["fit_onset_s"] == second_onset


def test_end_to_end_with_analyze(geometry):
    """Real distance maps: a CAR-T drifts onto a target, touches, and keeps its track."""
    vs = (0.5, 0.25, 0.25)
    shape = (32, 64, 96)
    tr = SynapseTracker()
    outs = []
    for f, x1 in enumerate([5.0, 6.5, 8.0, 8.6]):
        d, _, _, _ = geometry.two_spheres(shape, vs, (8, 8, x1), 3.5, (8, 8, 16.0), 5.0)
        outs.append(tr.update(analyze(d, None, vs), time_s=3.0 * f))
    tracks = [(kinds(o)["tcell"], kinds(o)["target"]) for o in outs]
    assert len(set(tracks)) == 1
    assert [len(o.synapses) for o in outs] == [0, 0, 1, 1]
    assert [e.kind for o in outs for e in o.events] == ["formed"]
    assert outs[3].synapses[0].is_area_um2 > outs[2].synapses[0].is_area_um2 > 0
