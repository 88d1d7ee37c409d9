"""The validation generator's truth against analytic shapes, and its independence from training."""

import math
import subprocess
import sys

import numpy as np
import pytest

from deepis_rt.validation.phantoms import FINE, Scene, contact_area_um2, make_scene, render_truth
from deepis_rt.validation.shapes import PlaneCut, SphereCut, Superellipsoid
from deepis_rt.validation.texture import random_texture

VS = (0.4, 0.2, 0.2)


def _two_spheres(r1, r2, a, vs=VS, center=(6.1, 6.05, 6.02), direction=(0.3, 0.8, 0.52)):
    u = np.asarray(direction, float) / np.linalg.norm(direction)
    o = np.asarray(center, float)
    p1, p2 = math.sqrt(r1 * r1 - a * a), math.sqrt(r2 * r2 - a * a)
    t = Superellipsoid(o - u * p1, np.full(3, r1))
    g = Superellipsoid(o + u * p2, np.full(3, r2))
    return t, g, PlaneCut(o, u), u, p1


def _scene(tcell, target, cut, shape, vs=VS):
    rng = np.random.default_rng(0)
    return Scene("spheres", shape, vs, tcell, target, cut, random_texture(tcell, "tcell", rng),
                 random_texture(target, "target", rng), 0)


@pytest.mark.parametrize("a", [1.2, 2.5, 4.0])
def test_flat_cut_between_spheres_has_the_disc_area(a):
    t, g, cut, _, _ = _two_spheres(4.6, 6.0, a)
    assert contact_area_um2(t, g, cut) == pytest.approx(math.pi * a * a, rel=0.01)


def test_spherical_cut_has_the_cap_area():
    # the cut sphere (radius R) inside a CAR-T sphere (radius r, centres d apart): a spherical cap
    r, big_r, d = 4.0, 9.0, 11.0
    tcell = Superellipsoid(np.array([12.0, 12.0, 12.0]), np.full(3, r))
    target = Superellipsoid(np.array([12.0, 12.0, 12.0]), np.full(3, 30.0))  # holds the whole cap
    cut = SphereCut(np.array([12.0, 12.0, 12.0 - d]), big_r)
    x = (d * d + big_r * big_r - r * r) / (2 * d)  # plane of the intersection circle, from the cut's centre
    cap = 2 * math.pi * big_r * (big_r - x)
    assert contact_area_um2(tcell, target, cut) == pytest.approx(cap, rel=0.01)


def test_truth_on_two_spheres_matches_the_analytic_scene():
    r1, r2, a = 3.0, 4.0, 2.0
    t, g, cut, u, p1 = _two_spheres(r1, r2, a, center=(6.1, 7.05, 7.02))
    scene = _scene(t, g, cut, (32, 70, 70))
    truth = render_truth(scene)
    assert truth.is_area_um2 == pytest.approx(math.pi * a * a, rel=0.01)
    # fine-grid volumes: the CAR-T sphere less the cap beyond the cut (height r1 - p1)
    cap_h = r1 - p1
    v_t = 4 / 3 * math.pi * r1**3 - math.pi * cap_h**2 * (3 * r1 - cap_h) / 3
    assert truth.tcell_volume_um3 == pytest.approx(v_t, rel=0.01)
    # output labels: majority of the fine voxels, volume within 3 %
    voxel = float(np.prod(VS))
    assert (truth.labels == 1).sum() * voxel == pytest.approx(v_t, rel=0.03)
    # the distance map: distance to the CAR-T border (sphere or cut plane) within one fine voxel
    grid = np.stack(np.meshgrid(*[np.arange(n) * h for n, h in zip(truth.labels.shape, VS, strict=True)],
                                indexing="ij"), axis=-1)
    exact = np.minimum(r1 - np.linalg.norm(grid - t.center, axis=-1), -((grid - cut.point) @ u))
    inside = (truth.labels == 1) & (exact > 0.3)
    err = np.abs(truth.distance_um[inside] - exact[inside])
    assert err.max() <= max(VS) / FINE
    # voxels take the majority class; their centre's distance agrees to within one fine voxel
    assert truth.distance_um[truth.labels == 2].max() <= 0
    assert np.abs(truth.distance_um[truth.labels == 0]).max() <= max(VS) / FINE + 1e-6


@pytest.mark.parametrize("kind", ["pressed", "flattened"])
def test_scenes_reach_the_requested_contact(kind):
    scene = make_scene(kind, 2.5, (0.5, 0.25, 0.25), seed=3, field_um=(22.0, 26.0, 26.0))
    area = contact_area_um2(scene.tcell, scene.target, scene.cut)
    assert area == pytest.approx(math.pi * 2.5**2, rel=0.03)
    # same seed, same scene
    again = make_scene(kind, 2.5, (0.5, 0.25, 0.25), seed=3, field_um=(22.0, 26.0, 26.0))
    np.testing.assert_allclose(again.tcell.center, scene.tcell.center)


def test_unknown_scene_kind_is_refused():
    with pytest.raises(ValueError, match="scene kind 'cube'"):
        make_scene("cube", 2.0, VS, 0)


def test_training_never_imports_the_validation_generator():
    code = ("import sys, deepis_rt.train, deepis_rt.synth, deepis_rt.train.data, deepis_rt.train.loop; "
            "bad = [m for m in sys.modules if m.startswith('deepis_rt.validation')]; "
            "assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
