"""Shape families, contact surfaces, imaging conditions and domain-randomised training frames."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq

from deepis_rt.errors import ConfigError
from deepis_rt.synth import MEDIUM_RI, generate_timelapse
from deepis_rt.synth.geometry import CellShape, ContactSurface, Grid
from deepis_rt.synth.randomize import ACQUISITION_VOXEL_RANGE_UM, draw_acquisition_voxel, randomized_frame
from deepis_rt.synth.scene import _layout, make_video

TILE, VS = (32, 64, 64), (1.0, 0.5, 0.5)


def _sphere(center, radius):
    return CellShape(center_um=np.asarray(center, float), axes_um=np.full(3, float(radius)), rotation=np.eye(3))


@pytest.mark.parametrize("kappa", [0.0, 0.08, 0.15])
def test_contact_surface_area_matches_the_analytic_paraboloid(kappa):
    """Paraboloid h(r) = kappa/2 (r^2 - rho^2) inside a sphere centred on its axis: area in closed form."""
    rho, c0, radius = 3.0, 0.4, 4.0
    n = np.array([0.3, 0.5, 0.81])
    n /= np.linalg.norm(n)
    point = np.array([0.2, -0.5, 1.0])
    surface = ContactSurface(point_um=point, normal=n, curvature_per_um=kappa, rim_radius_um=rho)
    ball = _sphere(point + c0 * n, radius)
    r_star = brentq(lambda r: r * r + (kappa / 2 * (r * r - rho * rho) - c0) ** 2 - radius**2, 0.0, radius)
    if kappa == 0:
        expected = np.pi * r_star**2
    else:
        expected = 2 * np.pi / (3 * kappa**2) * ((1 + kappa**2 * r_star**2) ** 1.5 - 1)
    assert surface.area_inside([ball], radius + 0.5, step_um=0.02) == pytest.approx(expected, rel=0.01)
    # the surface divides space: the side function vanishes on it and changes sign across it
    z, y, x = (point + 0.5 * n)[:, None]
    assert surface.side(z, y, x)[0] > 0


def test_coverslip_cuts_the_contact_surface():
    surface = ContactSurface(point_um=np.zeros(3), normal=np.array([0.0, 1.0, 0.0]))
    ball = _sphere([0.0, 0.0, 0.0], 3.0)
    full = surface.area_inside([ball], 3.5)
    assert surface.area_inside([ball], 3.5, above_z_um=0.0) == pytest.approx(full / 2, rel=0.02)


def test_randomized_videos_keep_the_kinetics_and_draw_every_shape_family():
    videos = [make_video(s, TILE, VS, 40, randomize=True, imaging="random") for s in range(24)]
    for s, v in enumerate(videos[:4]):
        d = make_video(s, TILE, VS, 40)
        assert (v.a_max_um2, v.tau_half_s, v.onset_s, v.frame_interval_s) == (d.a_max_um2, d.tau_half_s, d.onset_s,
                                                                            d.frame_interval_s)
    assert any(v.coverslip_depth is not None for v in videos) and any(v.coverslip_depth is None for v in videos)
    assert any(v.curvature_per_um > 0 for v in videos) and any(v.curvature_per_um == 0 for v in videos)
    assert any(v.target.flatten < 1 for v in videos)
    assert any(len(v.cart.modulation["wave_amps"]) > 5 for v in videos)  # ruffles on top of the 5 long waves
    assert any(np.ptp(v.target.axes_scale) > 0.25 for v in videos)  # clearly elongated
    assert len({round(v.imaging.na_obj, 3) for v in videos}) > 20
    assert any(v.cart.interior.nucleus_dri < 0 for v in videos)
    with pytest.raises(ConfigError, match="imaging"):
        make_video(0, TILE, VS, 4, imaging="confocal")


def _curved_video():
    for seed in range(200):
        v = make_video(seed, TILE, VS, 40, randomize=True, imaging="random")
        if v.curvature_per_um > 0.08 and v.onset_s is not None and v.onset_s < 20 and v.coverslip_depth is not None:
            return seed, v
    raise AssertionError("no curved, flattened contact video among 200 seeds")


def test_pressed_contact_and_coverslip_in_the_labels():
    seed, video = _curved_video()
    frame = generate_timelapse(40, seed, TILE, VS, frames=[39], randomize=True, imaging="random")[0]
    assert frame.contact and frame.is_area_um2 > 5
    lay = _layout(video, 39 * video.frame_interval_s, np.random.default_rng([seed, 104729, 39]))
    grid = Grid(TILE, VS)
    # IS voxels lie on the curved interface (within a voxel), CAR-T on its positive side
    is_idx = np.argwhere(frame.labels == 3)
    coords = [grid.axis_um(i)[is_idx[:, i]] for i in range(3)]
    assert np.abs(lay["surface"].side(*coords)).max() < 1.2
    cart_idx = np.argwhere(frame.labels == 1)
    cart_side = lay["surface"].side(*[grid.axis_um(i)[cart_idx[:, i]] for i in range(3)])
    near = np.linalg.norm(np.stack([c - p for c, p in zip([grid.axis_um(i)[cart_idx[:, i]] for i in range(3)],
                                                           lay["surface"].point_um, strict=True)]), axis=0) < 3
    assert (cart_side[near] > 0).all()
    # nothing below the coverslip
    z = grid.axis_um(0)
    below = z < lay["coverslip_z_um"]
    assert below.any() and not frame.labels[below].any()


def test_imaging_conditions_of_the_default_video():
    legacy = generate_timelapse(20, 4, TILE, VS, frames=[15], imaging="legacy")[0]
    tomo = generate_timelapse(20, 4, TILE, VS, frames=[15])[0]  # the default
    raw = generate_timelapse(20, 4, TILE, VS, frames=[15], imaging="raw")[0]
    assert legacy.imaging["model"] == "gaussian-otf" and tomo.imaging["model"] == "odt"
    assert tomo.imaging["nonneg_iterations"] == 10 and raw.imaging["nonneg_iterations"] == 0
    np.testing.assert_array_equal(legacy.labels, tomo.labels)  # same scene, other optics
    for f in (legacy, tomo, raw):
        assert abs(float(np.median(f.ri[f.labels == 0])) - MEDIUM_RI) < 0.002
    # the raw reconstruction's missing cone darkens the medium next to the cells; the constraint lifts it
    assert float(raw.ri.min()) < float(tomo.ri.min())


def test_acquisition_voxels_cover_the_range():
    rng = np.random.default_rng(0)
    draws = np.array([draw_acquisition_voxel(rng) for _ in range(500)])
    lo, hi = ACQUISITION_VOXEL_RANGE_UM
    assert draws.min() >= lo and draws.max() <= hi
    assert draws[:, 1].min() < 0.12 and draws[:, 1].max() > 0.45
    assert (draws[:, 0] >= draws[:, 1]).all() and (draws[:, 1] == draws[:, 2]).all()


def _frame_at(monkeypatch, acq, **kw):
    import deepis_rt.synth.randomize as rnd

    monkeypatch.setattr(rnd, "draw_acquisition_voxel", lambda rng, voxel_range_um=None: acq)
    return randomized_frame(3, 30, 40, TILE, VS, min_shape=(16, 32, 32), **kw)


@pytest.mark.parametrize("acq", [(0.5, 0.3, 0.3), (1.25, 0.6, 0.6)])  # finer and coarser than the model grid
def test_resampled_acquisition_stays_aligned_with_the_truth(acq, monkeypatch):
    """RI made at another voxel size and resampled as the runtime does lines up with the same scene made
    directly on the model grid."""
    ref = _frame_at(monkeypatch, VS, max_acquisition_voxels=10**7)
    frame = _frame_at(monkeypatch, acq, max_acquisition_voxels=10**7)
    assert frame.imaging["acquisition_voxel_um"] == pytest.approx(acq, rel=0.05)
    assert frame.ri.shape == frame.labels.shape == ref.ri.shape == TILE
    np.testing.assert_array_equal(frame.labels, ref.labels)
    medium = frame.imaging["medium_ri"]
    cells = frame.labels > 0
    assert float(np.median(frame.ri[cells & (np.abs(frame.distance_um) > 1.0)])) > medium + 0.005
    assert abs(float(np.median(frame.ri[~cells])) - medium) < 0.003
    # the contrast's centre of mass where the model-grid rendering has it (a misaligned grid would shift it)
    idx = np.indices(ref.ri.shape).reshape(3, -1)

    def centre(ri):
        w = np.clip(ri - medium, 0, None).ravel()
        return (idx * w).sum(1) / w.sum() * np.array(VS)

    assert np.abs(centre(frame.ri) - centre(ref.ri)).max() < 0.15  # a 0.3 um shift of one grid gives 0.2-0.35
    assert np.corrcoef(frame.ri.ravel(), ref.ri.ravel())[0, 1] > 0.8


def test_fine_acquisition_gets_a_smaller_field_around_the_conjugate(monkeypatch):
    a = _frame_at(monkeypatch, (0.3, 0.25, 0.25), max_acquisition_voxels=100_000)
    b = _frame_at(monkeypatch, (0.3, 0.25, 0.25), max_acquisition_voxels=100_000)
    np.testing.assert_array_equal(a.ri, b.ri)  # deterministic in (seed, frame)
    assert all(s % 16 == 0 for s in a.ri.shape) and a.ri.shape < TILE
    assert a.ri.shape >= (16, 32, 32) and (a.labels > 0).mean() > 0.1
    full = _frame_at(monkeypatch, (0.3, 0.25, 0.25), max_acquisition_voxels=10**7)
    assert full.ri.shape == TILE


@pytest.mark.parametrize("imaging, model", [("legacy", "gaussian-otf"), ("tomocube", "odt")])
def test_synth_cli_writes_the_chosen_imaging_condition(tmp_path, imaging, model):
    import json

    from click.testing import CliRunner

    from deepis_rt.cli import main

    out = tmp_path / imaging
    res = CliRunner().invoke(main, ["synth", str(out), "--frames", "1", "--shape", "16", "32", "32", "--voxel-size",
                                    "1", "0.5", "0.5", "--imaging", imaging, "--no-progress"])
    assert res.exit_code == 0, res.output
    meta = json.loads((out / "synth.json").read_text())
    assert meta["imaging"]["model"] == model
    assert CliRunner().invoke(main, ["synth", str(tmp_path / "x"), "--imaging", "confocal"]).exit_code == 2


def test_some_randomized_contacts_face_the_optical_axis():
    """A share of the randomised videos put the CAR-T on top of its target (normal near z); the
    labels then stack the cells along z and the IS lies across the optical axis."""
    videos = {s: make_video(s, TILE, VS, 40, randomize=True, imaging="random") for s in range(60)}
    axial = [s for s, v in videos.items() if abs(v.normal[0]) >= np.cos(np.pi / 4)]
    lateral = [s for s, v in videos.items() if abs(v.normal[0]) < 0.35]
    assert 8 <= len(axial) <= 30 and len(lateral) >= 25
    on_glass = [s for s in axial if videos[s].coverslip_depth is not None]
    assert on_glass and all(videos[s].normal[0] > 0 and videos[s].cart.flatten == 1.0 for s in on_glass)
    # the default (not randomised) videos keep their lateral contacts
    assert sum(abs(make_video(s, TILE, VS, 40).normal[0]) >= np.cos(np.pi / 4) for s in videos) <= 3
    seed = next(s for s in on_glass if videos[s].onset_s is not None and videos[s].onset_s < 20 * videos[s].frame_interval_s)
    frame = generate_timelapse(40, seed, TILE, VS, frames=[39], randomize=True, imaging="random")[0]
    assert frame.contact and frame.is_area_um2 > 5
    z = np.arange(TILE[0])
    zc = {c: float((z[:, None, None] * (frame.labels == c)).sum() / (frame.labels == c).sum()) for c in (1, 2)}
    assert zc[1] > zc[2] + 4  # the CAR-T sits above its target, away from the glass
    is_idx = np.argwhere(frame.labels == 3)
    # an interface across z: the IS voxels spread laterally far more than along z (in um)
    spread = is_idx.std(axis=0) * np.array(VS)
    assert spread[0] < 0.6 * max(spread[1], spread[2])
