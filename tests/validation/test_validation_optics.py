"""The validation imaging model: ODT support (lateral and axial cut-offs, missing cone), refill, noise."""

import math

import numpy as np
import pytest

from deepis_rt.validation.optics import Imaging, image, support_3d, transfer_support

ODT = Imaging("odt", wavelength_um=0.532, na_objective=1.2, na_illumination=1.2, refill_iterations=0, noise_ri=0.0)


def test_support_reaches_the_lateral_and_axial_cut_offs():
    support, step = transfer_support(0.532, 1.2, 1.2, 1.337)
    q_idx, kz_idx = np.nonzero(support)
    half = support.shape[1] // 2
    q_max = q_idx.max() * step
    assert q_max == pytest.approx((1.2 + 1.2) / 0.532, abs=3 * step)
    k_m = 1.337 / 0.532
    # on-axis detection with the most oblique illumination (and the reverse): n_m - sqrt(n_m^2 - NA^2)
    kz_max = k_m - math.sqrt(k_m**2 - (1.2 / 0.532) ** 2)
    assert (kz_idx - half).max() * step == pytest.approx(kz_max, abs=3 * step)
    # the missing cone: on the k_z axis only k_z = 0 is measured, and the gap widens with |k_z|
    assert support[0, half] and not support[0, half + 10:].any() and not support[0, : half - 10].any()
    first_q = [np.argmax(support[:, half + j]) for j in (20, 40, 60)]
    assert first_q[0] > 0 and first_q[0] < first_q[1] < first_q[2]


def test_raw_reconstruction_has_no_energy_in_the_cone_or_beyond_the_cut_off():
    vs = (0.25, 0.1, 0.1)
    shape = (48, 96, 96)
    grid = np.stack(np.meshgrid(*[np.arange(n) * h for n, h in zip(shape, vs, strict=True)], indexing="ij"), -1)
    sphere = np.linalg.norm(grid - np.array([6.0, 4.8, 4.8]), axis=-1) < 2.5
    ri = np.where(sphere, 1.367, 1.337).astype(np.float32)
    out = image(ri, vs, ODT, np.random.default_rng(0))
    spec = np.abs(np.fft.fftn(out - 1.337))
    inside = support_3d(shape, vs, ODT)
    assert spec[~inside].max() < 1e-3 * spec.max()
    assert spec[1:6, 0, 0].max() < 1e-3 * spec.max()  # the k_z axis (the cone's centre)
    # the mean contrast (k = 0) survives; the cone's loss blurs the sphere along Z and lowers its RI
    assert (out - 1.337).mean() == pytest.approx((ri - 1.337).mean(), rel=1e-3)
    assert out[sphere].mean() < 1.367 - 0.002


def test_refill_recovers_part_of_the_cone_and_removes_negative_halos():
    vs = (0.25, 0.1, 0.1)
    shape = (48, 96, 96)
    grid = np.stack(np.meshgrid(*[np.arange(n) * h for n, h in zip(shape, vs, strict=True)], indexing="ij"), -1)
    sphere = np.linalg.norm(grid - np.array([6.0, 4.8, 4.8]), axis=-1) < 2.5
    ri = np.where(sphere, 1.367, 1.337).astype(np.float32)
    raw = image(ri, vs, ODT, np.random.default_rng(0))
    refilled = image(ri, vs, Imaging("r", refill_iterations=10, noise_ri=0.0), np.random.default_rng(0))
    err_raw = np.abs(raw - ri).mean()
    err_refilled = np.abs(refilled - ri).mean()
    assert err_refilled < 0.7 * err_raw
    assert refilled.min() > raw.min() + 0.002


@pytest.mark.parametrize("mode", ["odt", "gaussian"])
def test_noise_level_is_as_requested(mode):
    vs = (0.4, 0.2, 0.2)
    blank = np.full((32, 64, 64), 1.337, np.float32)
    out = image(blank, vs, Imaging("n", mode=mode, refill_iterations=0, noise_ri=0.002), np.random.default_rng(1))
    assert out.std() == pytest.approx(0.002, rel=0.1)
