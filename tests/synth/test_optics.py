"""The holotomography imaging model against analytic cases: support, cut-offs, missing cone, sphere, refill."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import fft as sfft
from scipy import ndimage as ndi
from scipy.special import j0

from deepis_rt.errors import ConfigError
from deepis_rt.synth.optics import (
    IMAGING_RANGES,
    TOMOCUBE,
    Imaging,
    cutoffs,
    draw_imaging,
    kz_range,
    reconstruct,
    transfer_support,
)

NOISELESS = Imaging(noise_ri=0.0, nonneg_iterations=0)  # Tomocube-like: NA 1.2 / 1.0, 532 nm, n 1.337


def _freq_grid(shape, vs):
    kz = sfft.fftfreq(shape[0], vs[0])[:, None, None]
    ky = sfft.fftfreq(shape[1], vs[1])[None, :, None]
    kx = sfft.rfftfreq(shape[2], vs[2])[None, None, :]
    q = np.broadcast_to(np.sqrt(ky**2 + kx**2), (shape[0], shape[1], shape[2] // 2 + 1))
    return np.broadcast_to(kz, q.shape), q


def test_kz_range_reaches_the_formula_cutoffs_and_leaves_the_cone_empty():
    n, lam, na_o, na_i = 1.337, 0.532, 1.2, 1.0
    lateral, axial = cutoffs(NOISELESS)
    assert lateral == pytest.approx((na_o + na_i) / lam)
    assert axial == pytest.approx((n - np.sqrt(n**2 - na_o**2)) / lam)
    q = np.linspace(0, 1.2 * lateral, 400)
    lo, hi = kz_range(NOISELESS, q)
    reach = np.isfinite(lo)
    assert q[reach].max() == pytest.approx(lateral, abs=0.02)  # nothing beyond (NA_obj + NA_ill) / lambda
    assert np.max(np.maximum(np.abs(lo[reach]), np.abs(hi[reach]))) == pytest.approx(axial, rel=0.01)
    # the cone: near the axis, |K_z| <= q NA_ill / sqrt(n^2 - NA_ill^2) (first order in q; the
    # half-width cancels the second-order term)
    slope = na_i / np.sqrt(n**2 - na_i**2)
    small = np.array([0.02, 0.05])
    lo_s, hi_s = kz_range(NOISELESS, small)
    assert (hi_s - lo_s) / 2 == pytest.approx(small * slope, rel=0.01)
    assert kz_range(NOISELESS, np.array([0.0])) == (0.0, 0.0)


def test_support_agrees_with_a_direct_mapping_of_ewald_caps():
    """Scatter random (illumination, detection) pairs onto the grid as ODT mapping does."""
    shape, vs = (48, 48, 48), (0.1, 0.1, 0.1)
    support = transfer_support(shape, vs, NOISELESS)
    rng = np.random.default_rng(0)
    k, a, b = 1.337 / 0.532, 1.0 / 0.532, 1.2 / 0.532

    def disc(r, n):
        t, rr = rng.uniform(0, 2 * np.pi, n), r * np.sqrt(rng.uniform(0, 1, n))
        return np.stack([rr * np.cos(t), rr * np.sin(t)], 1)

    ki, ks = disc(a, 100_000), disc(b, 100_000)
    lat = np.concatenate([ks - ki, ki - ks])
    kz = np.sqrt(k * k - (ks**2).sum(1)) - np.sqrt(k * k - (ki**2).sum(1))
    kz = np.concatenate([kz, -kz])
    step = [1 / (n * v) for n, v in zip(shape, vs, strict=True)]
    iz = np.round(kz / step[0]).astype(int) % shape[0]
    iy = np.round(lat[:, 1] / step[1]).astype(int) % shape[1]
    ix = np.round(lat[:, 0] / step[2]).astype(int)
    keep = ix >= 0
    mapped = np.zeros(support.shape, bool)
    mapped[iz[keep], iy[keep], ix[keep]] = True
    # every mapped frequency is in the support or next to its edge, and the support holds nothing else
    assert (mapped & ndi.binary_dilation(support)).sum() == mapped.sum()
    assert (mapped & support).sum() > 0.9 * mapped.sum()
    assert (support & ndi.binary_dilation(mapped)).sum() > 0.99 * support.sum()


def test_filtered_delta_has_the_cone_missing_and_the_cutoffs_in_place():
    shape, vs = (64, 64, 64), (0.1, 0.1, 0.1)  # Nyquist 5 /um: beyond both cut-offs
    delta = np.zeros(shape, np.float32)
    delta[0, 0, 0] = 1.0
    spectrum = np.abs(sfft.rfftn(reconstruct(delta, vs, NOISELESS)))
    kz, q = _freq_grid(shape, vs)
    on = spectrum > 0.5
    assert np.allclose(spectrum[on], 1.0, atol=1e-4) and np.allclose(spectrum[~on], 0.0, atol=1e-4)
    lateral, axial = cutoffs(NOISELESS)
    step = 1 / (64 * 0.1)
    assert lateral - step <= q[on].max() <= lateral
    assert axial - step <= np.abs(kz[on]).max() <= axial
    # the k_z axis is empty but for K = 0, and so is a cone around it
    assert on[:, 0, 0].sum() == 1 and on[0, 0, 0]
    cone = (np.abs(kz) > 2.5 * q) & (np.abs(kz) > 0)  # steeper than the illumination's 1.12 (see above)
    assert cone.sum() > 100 and not on[cone].any()
    # while the same axial frequencies are kept away from the axis
    assert on[(np.abs(kz) > 0.5) & (np.abs(kz) < 0.8 * q) & (q < 2.0)].mean() > 0.9


def _sphere(shape, vs, radius_um, dn, sub=3):
    z, y, x = (((np.arange(n) - n / 2) * v).astype(np.float32) for n, v in zip(shape, vs, strict=True))
    out = np.zeros(shape, np.float32)
    for o in np.ndindex(sub, sub, sub):  # partial volumes: sub^3 samples per voxel
        d = [((i + 0.5) / sub - 0.5) * v for i, v in zip(o, vs, strict=True)]
        out += ((z[:, None, None] + d[0]) ** 2 + (y[None, :, None] + d[1]) ** 2 + (x[None, None, :] + d[2]) ** 2
                < radius_um**2)
    return out * np.float32(dn / sub**3), z, x


def _sphere_profiles_reference(imaging, radius_um, dn, z_um, x_um, fill_cone=False):
    """Profiles through a uniform sphere's centre, from its analytic spectrum times the support.

    f(r) = integral of F(|K|) S(q, K_z) exp(2 pi i K.r) d^3K in cylindrical coordinates: along z with
    cos(2 pi K_z z), along x with J0(2 pi q x); F(k) = dn 4 pi R^3 (sin u - u cos u) / u^3, u = 2 pi k R.
    """
    lateral, axial = cutoffs(imaging)
    qg, kg = np.linspace(0, lateral, 700), np.linspace(-axial, axial, 481)
    lo, hi = kz_range(imaging, qg)
    Q, KZ = np.meshgrid(qg, kg, indexing="ij")
    inside = ((KZ >= lo[:, None]) & (KZ <= hi[:, None])) | ((-KZ >= lo[:, None]) & (-KZ <= hi[:, None]))
    if fill_cone:
        inside = np.isfinite(lo)[:, None] & (np.abs(KZ) <= axial)
    u = 2 * np.pi * np.sqrt(Q**2 + KZ**2) * radius_um
    with np.errstate(all="ignore"):
        F = np.where(u > 1e-6, 4 * np.pi * radius_um**3 * (np.sin(u) - u * np.cos(u)) / u**3, 4 / 3 * np.pi * radius_um**3)
    w = dn * F * inside * 2 * np.pi * Q * (qg[1] - qg[0]) * (kg[1] - kg[0])
    along_z = np.array([np.sum(w * np.cos(2 * np.pi * KZ * v)) for v in z_um])
    along_x = np.array([np.sum(w * j0(2 * np.pi * Q * v)) for v in x_um])
    return along_z, along_x


def test_sphere_profile_matches_the_analytic_reference():
    shape, vs, radius, dn = (96, 96, 96), (0.125, 0.1, 0.1), 1.5, 0.02
    sphere, z, x = _sphere(shape, vs, radius, dn)
    rec = reconstruct(sphere, vs, NOISELESS)
    zs, xs = np.abs(z) <= 3.0, np.abs(x) <= 3.0  # away from the periodic images
    prof_z, prof_x = rec[:, 48, 48][zs][::2], rec[48, 48, :][xs][::2]
    ref_z, ref_x = _sphere_profiles_reference(NOISELESS, radius, dn, z[zs][::2], x[xs][::2])
    assert np.abs(prof_z - ref_z).max() < 0.08 * dn
    assert np.abs(prof_x - ref_x).max() < 0.1 * dn  # the sharper lateral edge aliases more
    # the missing cone shapes the profile: with the cone filled the reference is far off
    fill_z, fill_x = _sphere_profiles_reference(NOISELESS, radius, dn, z[zs][::2], x[xs][::2], fill_cone=True)
    assert np.abs(prof_z - fill_z).max() > 0.3 * dn
    assert np.abs(prof_x - fill_x).max() > 0.2 * dn


def test_nonnegativity_refills_part_of_the_cone_and_keeps_the_measured_data():
    shape, vs, dn = (64, 64, 64), (0.15, 0.12, 0.12), 0.02
    sphere, _, _ = _sphere(shape, vs, 1.5, dn, sub=2)
    support = transfer_support(shape, vs, NOISELESS)
    true = sfft.rfftn(sphere)
    raw = reconstruct(sphere, vs, NOISELESS)
    ten = reconstruct(sphere, vs, Imaging(noise_ri=0.0, nonneg_iterations=10))

    def cone_error(v):
        return np.linalg.norm((sfft.rfftn(v) - true)[~support]) / np.linalg.norm(true[~support])

    assert cone_error(raw) == pytest.approx(1.0)  # a raw reconstruction knows nothing there
    assert cone_error(ten) < 0.6
    np.testing.assert_allclose(sfft.rfftn(ten)[support], true[support], atol=1e-3 * np.abs(true).max())
    # the missing cone's dark halo (RI < medium) is what the constraint removes
    assert raw.min() < -0.15 * dn
    assert ten.min() > -0.1 * dn


def test_noise_is_band_limited_at_the_stated_level_and_refill_keeps_ri_above_medium():
    shape, vs, dn, sigma = (64, 64, 64), (0.15, 0.12, 0.12), 0.02, 0.001
    sphere, z, x = _sphere(shape, vs, 1.5, dn, sub=1)
    r2 = z[:, None, None] ** 2 + ((np.arange(64) - 32) * 0.12)[None, :, None] ** 2 + x[None, None, :] ** 2
    background = r2 > 3.5**2
    raw = reconstruct(sphere, vs, Imaging(noise_ri=sigma, nonneg_iterations=0), np.random.default_rng(1))
    ten = reconstruct(sphere, vs, Imaging(noise_ri=sigma, nonneg_iterations=10), np.random.default_rng(1))
    assert float(raw[background].std()) == pytest.approx(sigma, rel=0.25)
    support = transfer_support(shape, vs, NOISELESS)
    noise_spectrum = np.abs(sfft.rfftn(raw - reconstruct(sphere, vs, NOISELESS)))
    assert noise_spectrum[~support].max() < 1e-3 * noise_spectrum[support].max()  # float32 rounding only
    # below the medium by more than 3 sigma: the raw halo does it, the constrained volume hardly ever
    assert (raw < -3 * sigma).mean() > 10 * max((ten < -3 * sigma).mean(), 1e-6)
    assert (ten < -3 * sigma).mean() < 1e-3


def test_drawn_conditions_stay_in_their_ranges_and_bad_ones_are_refused():
    rng = np.random.default_rng(0)
    draws = [draw_imaging(rng) for _ in range(200)]
    for key in ("na_obj", "wavelength_um", "medium_ri", "noise_ri"):
        lo, hi = IMAGING_RANGES[key]
        values = [getattr(d, key) for d in draws]
        assert lo <= min(values) and max(values) <= hi
    assert all(d.na_ill <= d.na_obj for d in draws)
    assert {d.scan for d in draws} == {"disc", "ring"}
    assert any(d.nonneg_iterations == 0 for d in draws) and max(d.nonneg_iterations for d in draws) > 5
    assert TOMOCUBE.na_obj == 1.2 and TOMOCUBE.wavelength_um == 0.532
    with pytest.raises(ConfigError, match="na_obj"):
        Imaging(na_obj=1.5)
    with pytest.raises(ConfigError, match="scan"):
        Imaging(scan="spiral")
