"""Synthetic conjugate time-lapses: determinism, truth consistency, RI ranges, files."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from click.testing import CliRunner

from deepis_rt.io import read_labels, read_tomogram
from deepis_rt.synth import MEDIUM_RI, generate_timelapse, write_timelapse


@pytest.fixture(scope="module")
def video():
    # seed 1: contact from early on; frames before and well after onset
    return generate_timelapse(30, 1, frames=[0, 8, 29])


def test_same_seed_same_video_and_frames_independent():
    a = generate_timelapse(20, 5, frames=[3, 12])
    b = generate_timelapse(20, 5, frames=[12])
    np.testing.assert_array_equal(a[1].ri, b[0].ri)
    np.testing.assert_array_equal(a[1].labels, b[0].labels)
    np.testing.assert_array_equal(a[1].distance_um, b[0].distance_um)
    assert a[1].truth == b[0].truth
    c = generate_timelapse(20, 6, frames=[12])[0]
    assert not np.array_equal(c.ri, b[0].ri)


def test_shapes_types_and_voxel_size(video):
    f = video[0]
    assert f.ri.shape == f.labels.shape == f.distance_um.shape == (64, 128, 128)
    assert f.ri.dtype == np.float32 and f.labels.dtype == np.uint8 and f.distance_um.dtype == np.float32
    assert f.voxel_size_um == (0.5, 0.25, 0.25)


def test_ri_ranges(video):
    for f in video:
        bg = f.labels == 0
        assert abs(float(np.median(f.ri[bg])) - MEDIUM_RI) < 0.002
        d = f.distance_um
        cart_core, target_core = d > 1.0, d < -1.0  # away from the blurred border
        assert 1.355 <= float(np.median(f.ri[cart_core])) <= 1.385
        assert 1.350 <= float(np.median(f.ri[target_core])) <= 1.380
        assert float(f.ri.max()) <= 1.40 and float(f.ri.min()) >= 1.31
        # the target (K562) is the larger cell
        assert f.truth["target_volume_um3"] > 2 * f.truth["cart_volume_um3"]


def test_distance_agrees_with_labels(video):
    for f in video:
        d, lab = f.distance_um, f.labels
        assert (d[lab == 1] > 0).all() and (d[lab == 2] < 0).all()
        assert (d[lab == 0] == 0).all()
        # IS voxels are cell voxels on either side of the interface
        if (lab == 3).any():
            assert (d[lab == 3] != 0).all()
            assert (d[lab == 3] > 0).any() and (d[lab == 3] < 0).any()
        # anisotropic EDT: a CAR-T border voxel is one pitch (0.25 or 0.5 um) from the background
        assert 0.25 <= float(d[d > 0].min()) <= 0.5


def _interface_area_from_faces(f) -> float:
    """IS area from the label geometry: CAR-T/target voxel faces, combined as a flat surface."""
    c, t = f.distance_um > 0, f.distance_um < 0
    per_axis = []
    for ax in range(3):
        lo, hi = [slice(None)] * 3, [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        count = ((c[tuple(lo)] & t[tuple(hi)]) | (t[tuple(lo)] & c[tuple(hi)])).sum()
        per_axis.append(count * np.prod([f.voxel_size_um[i] for i in range(3) if i != ax]))
    return float(np.linalg.norm(per_axis))


def test_truth_is_area_matches_label_geometry(video):
    contacts = [f for f in video if f.contact and f.is_area_um2 > 20]
    assert contacts, "the fixture video must contain contact frames"
    for f in contacts:
        est = _interface_area_from_faces(f)
        assert est == pytest.approx(f.is_area_um2, rel=0.15)
        assert f.truth["is_area_model_um2"] == pytest.approx(f.is_area_um2, rel=0.2)
    for f in video:
        assert f.contact == bool((f.labels == 3).any())
        if not f.contact:
            assert f.is_area_um2 == 0.0


def test_is_area_follows_saturating_kinetics():
    frames = generate_timelapse(40, 1, frames=list(range(0, 40, 6)), with_truth_area=False)
    model = [f.truth["is_area_model_um2"] for f in frames]
    assert all(b >= a for a, b in zip(model, model[1:], strict=False))
    steps = np.diff(model)
    assert steps[-1] < steps[0]  # it saturates


def test_some_videos_have_precontact_frames_or_second_cell():
    firsts = [generate_timelapse(30, s, frames=[0], with_truth_area=False)[0].truth for s in range(8)]
    assert any(not t["contact"] for t in firsts)
    assert any(t["second_cell"] for t in firsts)


@pytest.mark.parametrize("fmt", ["tiff", "npy", "tcf"])
def test_write_timelapse(tmp_path, fmt):
    out = write_timelapse(tmp_path / fmt, 2, 3, shape=(32, 64, 64), voxel_size_um=(1.0, 0.5, 0.5), fmt=fmt,
                          progress=False)
    suffix = {"tiff": ".tif", "npy": ".npy", "tcf": ".tcf"}[fmt]
    tomo = read_tomogram(out / f"frame_000001{suffix}")
    assert tomo.shape == (32, 64, 64) and tomo.voxel_size_um == pytest.approx((1.0, 0.5, 0.5))
    lab = read_labels(out / "labels" / "frame_000001.tif")
    ref = generate_timelapse(2, 3, shape=(32, 64, 64), voxel_size_um=(1.0, 0.5, 0.5), frames=[1])[0]
    np.testing.assert_array_equal(lab, ref.labels)
    np.testing.assert_array_equal(tomo.ri, ref.ri)
    dist = read_tomogram(out / "distance" / "frame_000001.tif", as_ri=False).ri  # um, not RI
    np.testing.assert_array_equal(dist, ref.distance_um)
    rows = list(csv.DictReader(open(out / "truth.csv")))
    assert [r["file"] for r in rows] == [f"frame_000000{suffix}", f"frame_000001{suffix}"]
    assert float(rows[1]["is_area_um2"]) == pytest.approx(ref.is_area_um2)


def test_cli_synth(tmp_path):
    from deepis_rt.cli.main import main

    res = CliRunner().invoke(main, ["synth", str(tmp_path / "v"), "--frames", "1", "--seed", "2",
                                    "--shape", "32", "64", "64", "--format", "npy"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "v" / "frame_000000.npy").is_file()
    assert (tmp_path / "v" / "frame_000000.json").is_file()
