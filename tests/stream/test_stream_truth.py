"""A synthetic source (synth.json in the folder) gets its truth next to the fitted kinetics in summary.json."""

import csv
import json

import numpy as np
import pytest
from stream_support import VOXEL, conjugate_tomogram, make_segmenter

from deepis_rt.stream import Stream


def _write_series(cam, radii):
    cam.mkdir()
    for i, r in enumerate(radii):
        np.save(cam / f"frame_{i:04d}.npy", conjugate_tomogram(r, shift_um=0.05 * i))


def test_summary_reports_truth_next_to_fit_and_uses_the_uncertainty(tmp_path):
    cam, out = tmp_path / "cam", tmp_path / "out"
    _write_series(cam, [1.6, 2.2, 2.6, 2.8, 2.9])
    truth = {"generator": "deepis_rt.synth", "seed": 3, "a_max_um2": 30.0, "tau_half_s": 8.0, "onset_s": 0.0,
             "frame_interval_s": 3.0}
    (cam / "synth.json").write_text(json.dumps(truth))
    summary = Stream(cam, out, make_segmenter(), once=True, settle_s=0.0, use_events=False, voxel_size_um=VOXEL,
                     frame_interval_s=3.0, write_masks=False).run()
    (syn,) = summary["synapses"]
    assert syn["area_fit"]["weighted"] is True
    block = summary["truth"]
    assert block["truth"]["a_max_um2"] == 30.0 and block["truth"]["tau_half_s"] == 8.0
    assert block["A_max_um2"]["fitted"] == pytest.approx(syn["A_max_um2"])
    assert block["tau_half_s"]["fitted"] == pytest.approx(syn["tau_half_s"])
    assert block["A_max_um2"]["rel_error"] == pytest.approx(syn["A_max_um2"] / 30.0 - 1)
    assert json.loads((out / "summary.json").read_text())["truth"]["synapse_id"] == syn["synapse_id"]
    rows = list(csv.DictReader(open(out / "synapses.csv")))
    assert rows and all(float(r["is_area_err_um2"]) > 0 for r in rows)


def test_no_truth_for_real_sources(tmp_path):
    cam, out = tmp_path / "cam", tmp_path / "out"
    _write_series(cam, [2.0, 2.5, 3.0])
    (cam / "synth.json").write_text(json.dumps({"generator": "a microscope"}))
    summary = Stream(cam, out, make_segmenter(), once=True, settle_s=0.0, use_events=False, voxel_size_um=VOXEL,
                     frame_interval_s=3.0, write_masks=False).run()
    assert summary["truth"] is None


def test_resumed_run_keeps_the_uncertainties_in_the_fit(tmp_path):
    cam, out = tmp_path / "cam", tmp_path / "out"
    # apart first, so that the onset is bounded and the fit well posed (a fit whose A_max runs off with
    # tau_half cannot agree to 1e-4 between areas read back from the CSV and full-precision ones)
    _write_series(cam, [0.0, 1.6, 2.2, 2.6])
    kw = dict(once=True, settle_s=0.0, use_events=False, voxel_size_um=VOXEL, frame_interval_s=3.0, write_masks=False)
    Stream(cam, out, make_segmenter(), **kw).run()
    for i, r in enumerate([2.8, 2.9], start=4):
        np.save(cam / f"frame_{i:04d}.npy", conjugate_tomogram(r, shift_um=0.05 * i))
    first = Stream(cam, out, make_segmenter(), **kw).run()["synapses"][0]
    fresh_out = tmp_path / "fresh"
    fresh = Stream(cam, fresh_out, make_segmenter(), **kw).run()["synapses"][0]
    assert first["n_frames"] == 5 and first["area_fit"]["weighted"] is True
    assert first["A_max_err_um2"] == pytest.approx(fresh["A_max_err_um2"], rel=1e-4)
