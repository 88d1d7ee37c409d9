"""Prescribed kinetics in the synthetic generator, and the truth helpers."""

import json

import pytest

from deepis_rt.errors import ConfigError
from deepis_rt.synth import generate_timelapse, write_timelapse
from deepis_rt.synth.scene import make_video
from deepis_rt.synth.truth import compare_kinetics, kinetics_truth

PAPER = {"a_max_um2": 106.0, "tau_half_s": 40.0, "onset_s": 3.0, "frame_interval_s": 3.0}


def test_prescribed_kinetics_replace_the_drawn_ones_only():
    drawn = make_video(5, (64, 128, 128), (0.5, 0.25, 0.25), 40)
    fixed = make_video(5, (64, 128, 128), (0.5, 0.25, 0.25), 40, PAPER)
    assert (fixed.a_max_um2, fixed.tau_half_s, fixed.onset_s, fixed.frame_interval_s) == (106.0, 40.0, 3.0, 3.0)
    assert (fixed.normal == drawn.normal).all() and fixed.cart.radius_um == drawn.cart.radius_um
    # the target is made large enough to carry a contact disc of A_max
    assert fixed.target.radius_um >= drawn.target.radius_um


def test_frames_follow_the_prescribed_law():
    frames = generate_timelapse(40, 5, frames=[0, 1, 11, 21], kinetics=PAPER)
    law = [f.truth["is_area_model_um2"] for f in frames]
    assert law[0] == 0.0 and law[1] == 0.0  # before onset (3 s)
    assert law[2] == pytest.approx(106.0 * 30 / 70) and law[3] == pytest.approx(106.0 * 60 / 100)
    assert frames[3].truth["contact"] and frames[3].is_area_um2 > 0.6 * law[3]


@pytest.mark.parametrize("bad", [{"a_max": 1.0}, {"tau_half_s": -1.0}, {"frame_interval_s": None}])
def test_bad_kinetics_are_refused(bad):
    with pytest.raises(ConfigError):
        make_video(1, (32, 64, 64), (0.5, 0.25, 0.25), 4, bad)


def test_truth_round_trip(tmp_path):
    out = write_timelapse(tmp_path / "v", 2, 1, shape=(16, 32, 32), voxel_size_um=(1.0, 0.5, 0.5), fmt="npy",
                          progress=False, kinetics=PAPER)
    truth = kinetics_truth(out)
    assert truth["a_max_um2"] == 106.0 and truth["tau_half_s"] == 40.0 and truth["seed"] == 1
    assert kinetics_truth(tmp_path) is None
    (tmp_path / "synth.json").write_text("{not json")
    assert kinetics_truth(tmp_path) is None
    cmp = compare_kinetics(truth, [{"synapse_id": 1, "n_frames": 2, "A_max_um2": 100.0, "A_max_err_um2": 3.0,
                                    "tau_half_s": 44.0, "tau_half_err_s": 2.0},
                                   {"synapse_id": 2, "n_frames": 9, "A_max_um2": 110.6, "A_max_err_um2": 2.3,
                                    "tau_half_s": 38.0, "tau_half_err_s": 4.0}])
    assert cmp["synapse_id"] == 2
    assert cmp["A_max_um2"]["rel_error"] == pytest.approx(110.6 / 106 - 1)
    assert cmp["A_max_um2"]["z"] == pytest.approx(2.0)
    assert cmp["tau_half_s"]["z"] == pytest.approx(-0.5)
    json.dumps(cmp)
    empty = compare_kinetics(truth, [])
    assert empty["synapse_id"] is None and empty["A_max_um2"]["fitted"] is None
