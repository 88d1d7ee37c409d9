"""Kinetics whose errors hold: an onset anywhere between two frames, flagged points left out."""

from __future__ import annotations

import numpy as np
import pytest

from deepis_rt.analysis import Cell, FrameAnalysis, Synapse, SynapseTracker, fit_saturation, saturation

A_MAX, TAU = 80.0, 25.0
DT = 3.0


def _series(rng, n=20):
    """Frames every DT from t = 0 (apart) on; the contact forms at a uniform time in (0, DT)."""
    onset = rng.uniform(0.0, DT)
    t = np.arange(1, n + 1) * DT
    sigma = 0.5 + 0.03 * saturation(t - onset, A_MAX, TAU)
    area = saturation(t - onset, A_MAX, TAU) + rng.normal(0.0, sigma)
    return t, area, sigma


def _coverage(window_s, seeds=range(40)):
    z = []
    for seed in seeds:
        t, area, sigma = _series(np.random.default_rng(seed))
        fit = fit_saturation(t - t[0], area, sigma=sigma, onset_window_s=window_s)
        assert fit.success
        z.append(((fit.a_max - A_MAX) / fit.a_max_err, (fit.tau_half_s - TAU) / fit.tau_half_err_s))
    z = np.abs(np.array(z))
    return (z < 1).mean(axis=0), (z < 2).mean(axis=0)


def test_the_truth_lies_within_the_stated_errors_over_many_onsets():
    one, two = _coverage(DT)
    assert (two >= 0.85).all(), two  # 95 % expected (40 draws)
    assert ((one >= 0.5) & (one <= 0.95)).all(), one  # 68 % expected


def test_pinning_the_onset_to_the_first_frame_breaks_the_errors():
    one, two = _coverage(0.0)  # what fitting from the first detected frame does
    assert two[1] < 0.7, two


def test_onset_is_reported_within_its_interval():
    t, area, sigma = _series(np.random.default_rng(7))
    fit = fit_saturation(t - t[0], area, sigma=sigma, onset_window_s=DT)
    assert -DT <= fit.onset_offset_s <= 0.0 and 0.0 < fit.onset_offset_err_s <= DT / 2
    pinned = fit_saturation(t - t[0], area, sigma=sigma)
    assert pinned.onset_offset_s == 0.0 and np.isnan(pinned.onset_offset_err_s)


def test_errors_grow_when_the_points_scatter_more_than_their_sigmas():
    rng = np.random.default_rng(3)
    t = np.arange(0.0, 90.0, 3.0)
    area = saturation(t, A_MAX, TAU) + rng.normal(0.0, 4.0, t.size)
    honest = fit_saturation(t, area, sigma=np.full(t.size, 4.0))
    small = fit_saturation(t, area, sigma=np.full(t.size, 1.0))  # sigmas 4x too small
    assert small.chi2_reduced > 4
    assert small.tau_half_err_s == pytest.approx(honest.tau_half_err_s, rel=0.2)


def _frame(area, quality, sigma=1.0):
    cells = [Cell(1, "tcell", 250.0, 100.0, 1.36, 10.0, 8.0, 10.0, 10.0),
             Cell(2, "target", 900.0, 100.0, 1.36, 10.0, 8.0, 25.0, 10.0)]
    syn = [] if area is None else [Synapse(1, 1, 2, area, 1.36, 1.0, 50.0, is_area_err_um2=sigma, quality=quality)]
    return FrameAnalysis(np.zeros((1, 1, 1), np.uint8), np.zeros((1, 1, 1), np.int32), cells, syn, (0.5, 0.25, 0.25))


def _track(qualities, corrupt):
    """A contact forming at 1.5 s (frames every 3 s from 0); ``corrupt`` frames measure half the area."""
    tracker = SynapseTracker()
    tracker.update(_frame(None, ""), time_s=0.0)
    for k, q in enumerate(qualities, start=1):
        area = float(saturation(k * DT - 1.5, A_MAX, TAU))
        tracker.update(_frame(area / 2 if k in corrupt else area, q), time_s=k * DT)
    (summary,) = tracker.summary()
    return summary


def test_flagged_points_are_left_out_of_the_fit_and_the_summary_says_so():
    corrupt = {6, 7, 8}
    qualities = ["cell_at_edge" if k in corrupt else "ok" for k in range(1, 16)]
    s = _track(qualities, corrupt)
    assert s.fit_excluded_frames == [6, 7, 8]
    assert s.fit_flagged == "3 flagged frame(s) excluded (cell_at_edge)" and s.quality == "cell_at_edge"
    assert s.area_fit.n_points == 12
    assert abs(s.area_fit.tau_half_s - TAU) < 2 * s.area_fit.tau_half_err_s
    assert s.onset_interval_s == (0.0, 3.0)
    d = s.to_dict()
    assert d["fit_excluded_frames"] == [6, 7, 8] and d["onset_interval_s"] == [0.0, 3.0]
    assert s.area_fit.chi2_reduced < 2
    # the same values, unflagged, pull the fit far off: the exclusion is what keeps it right
    blind = _track(["ok"] * 15, corrupt)
    assert blind.fit_excluded_frames == [] and blind.fit_flagged == "none flagged"
    assert blind.area_fit.chi2_reduced > 10 and abs(blind.area_fit.tau_half_s - TAU) > TAU / 2


def test_too_many_flagged_points_are_all_fitted_and_said_so():
    s = _track(["ri_out_of_range"] * 10, set())
    assert s.fit_excluded_frames == [] and s.area_fit.n_points == 10
    assert s.fit_flagged == "10 of 10 frame(s) flagged (ri_out_of_range): too few others, all fitted"


def test_points_whose_flips_disagree_stay_in_the_fit():
    s = _track(["flips_disagree"] * 3 + ["ok"] * 9, set())
    assert s.fit_excluded_frames == [] and s.area_fit.n_points == 12
    assert s.quality == "flips_disagree" and "weighted by their widened sigma" in s.fit_flagged
