"""Imaging model for validation phantoms: what an optical diffraction tomograph reconstructs.

Physics (written from the Fourier diffraction theorem, Wolf 1969; Sung et al., Opt. Express
17:266, 2009; Lim et al., Opt. Express 23:16933, 2015), not shared with ``deepis_rt.synth``:

* A weak object's scattering potential is, to first order (Born/Rytov), proportional to
  ``n - n_medium``; every pair (illumination wave vector ``k_i``, detected wave vector ``k_s``,
  both of length ``n_medium / lambda``) measures the object's 3-D spectrum at ``k_s - k_i``.
* Illumination angles fill a disc of numerical aperture ``NA_ill``, detection a disc of
  ``NA_obj``: the union of the measured ``k_s - k_i`` (:func:`transfer_support`) reaches
  ``(NA_obj + NA_ill) / lambda`` laterally and ``(n_m - sqrt(n_m^2 - NA^2)) / lambda`` axially
  (``NA`` the larger of the two: on-axis detection of the most oblique illumination), and misses
  a cone around ``k_z`` (the "missing cone": nothing is measured at ``k_perp = 0, k_z != 0``).
* A raw reconstruction is the object's spectrum restricted to that support. ODT software
  fills part of the cone by iterating a non-negativity constraint (Gerchberg-Papoulis:
  ``n >= n_medium`` in space, the measured spectrum restored on the support; Lim 2015 uses
  100 iterations, ten already do most of the work).
* Noise (0.001-0.003 RI in reconstructions) enters with the measured data, so it lies on the
  support and the refill iterations work on noisy data, as in real instruments.

Defaults: lambda = 0.532 um, n_medium = 1.337, NA_obj = NA_ill = 1.2 (water-immersion objective
and condenser of the holotomograph used by DeepIS, Lee et al. 2020); a second instrument with
NA_obj = 0.95, NA_ill = 0.72 is in :data:`IMAGING_CONDITIONS`.
A Gaussian point-spread function (``mode="gaussian"``) is also provided for the simplest case.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft
from scipy import ndimage as ndi

__all__ = ["Imaging", "IMAGING_CONDITIONS", "transfer_support", "support_3d", "image"]


@dataclass(frozen=True)
class Imaging:
    """One imaging condition (see module docstring)."""

    name: str
    mode: str = "odt"  # "odt" | "gaussian"
    wavelength_um: float = 0.532
    na_objective: float = 1.2
    na_illumination: float = 1.2
    medium_ri: float = 1.337
    refill_iterations: int = 10
    blur_sigma_um: tuple[float, float, float] = (0.6, 0.1, 0.1)
    noise_ri: float = 0.002


#: the conditions the validation benchmark runs
IMAGING_CONDITIONS = {
    "gaussian": Imaging("gaussian", mode="gaussian", noise_ri=0.002),
    "odt-refilled": Imaging("odt-refilled", refill_iterations=10, noise_ri=0.002),
    "odt-raw": Imaging("odt-raw", refill_iterations=0, noise_ri=0.002),
    "odt-low-na": Imaging("odt-low-na", na_objective=0.95, na_illumination=0.72, refill_iterations=10,
                          noise_ri=0.0015),
}


@functools.lru_cache(maxsize=16)
def transfer_support(wavelength_um: float, na_objective: float, na_illumination: float, medium_ri: float,
                     bin_um_inv: float = 0.01) -> tuple[np.ndarray, float]:
    """The measured region of the object's spectrum in (k_perp, k_z), cycles/um.

    Returns
    -------
    support : ndarray of bool, shape (Q, 2 K + 1)
        ``support[i, K + j]`` covers ``k_perp`` in bin ``i`` and ``k_z`` in bin ``j``
        (bins of ``bin_um_inv``; ``j`` may be negative).
    bin_um_inv : float
    """
    k_m = medium_ri / wavelength_um
    ill_max, det_max = na_illumination / wavelength_um, na_objective / wavelength_um
    # the support is symmetric about k_z's axis: one illumination azimuth gives every (k_perp, k_z)
    p = np.linspace(0.0, ill_max, 121)
    g = np.linspace(-det_max, det_max, 241)
    sx, sy = np.meshgrid(g, g, indexing="ij")
    disc = sx**2 + sy**2 <= det_max**2
    sx, sy = sx[disc], sy[disc]
    sz = np.sqrt(k_m**2 - sx**2 - sy**2)
    q_bins = int(math.ceil((ill_max + det_max) / bin_um_inv)) + 2
    kz_half = int(math.ceil(k_m / bin_um_inv))
    support = np.zeros((q_bins, 2 * kz_half + 1), bool)
    for pi in p:
        kz = sz - math.sqrt(k_m**2 - pi**2)
        q = np.hypot(sx - pi, sy)
        support[np.round(q / bin_um_inv).astype(int), kz_half + np.round(kz / bin_um_inv).astype(int)] = True
    # (-k) is measured whenever k is (the object is real): symmetric in k_z; close the sampling gaps
    support |= support[:, ::-1]
    support = ndi.binary_closing(support, structure=np.ones((3, 3), bool), iterations=2, border_value=0) | support
    return support, bin_um_inv


def support_3d(shape: tuple[int, int, int], voxel_size_um, imaging: Imaging) -> np.ndarray:
    """The support on the FFT grid of a volume (``numpy.fft`` frequency order), bool."""
    support, step = transfer_support(imaging.wavelength_um, imaging.na_objective, imaging.na_illumination,
                                     imaging.medium_ri)
    fz, fy, fx = (np.fft.fftfreq(n, d=h) for n, h in zip(shape, voxel_size_um, strict=True))
    q = np.hypot(fy[:, None], fx[None, :])
    qi = np.minimum(np.round(q / step).astype(int), support.shape[0] - 1)
    half = support.shape[1] // 2
    zi = np.clip(np.round(fz / step).astype(int) + half, 0, support.shape[1] - 1)
    out = support[qi[None, :, :], zi[:, None, None]]
    out[:, qi >= support.shape[0] - 1] = False
    return out


def image(ri_object: np.ndarray, voxel_size_um, imaging: Imaging, rng: np.random.Generator) -> np.ndarray:
    """The tomogram an instrument reconstructs from ``ri_object`` (float32 RI, same grid)."""
    dn = np.asarray(ri_object, np.float32) - np.float32(imaging.medium_ri)
    vs = tuple(float(v) for v in voxel_size_um)
    if imaging.mode == "gaussian":
        out = ndi.gaussian_filter(dn, [s / h for s, h in zip(imaging.blur_sigma_um, vs, strict=True)], mode="constant")
        out += rng.normal(scale=imaging.noise_ri, size=dn.shape).astype(np.float32)
        return out + np.float32(imaging.medium_ri)
    if imaging.mode != "odt":
        raise ValueError(f"validation | imaging mode {imaging.mode!r}: expected 'odt' or 'gaussian'")
    support = support_3d(dn.shape, vs, imaging)
    noise = sfft.fftn(rng.normal(size=dn.shape).astype(np.float32), workers=1) * support
    noise_std = float(np.sqrt(support.mean())) or 1.0  # white noise keeps this fraction of its power
    measured = (sfft.fftn(dn, workers=1) + noise * np.float32(imaging.noise_ri / noise_std)) * support
    x = sfft.ifftn(measured, workers=1).real.astype(np.float32)
    for _ in range(imaging.refill_iterations):
        spectrum = sfft.fftn(np.maximum(x, 0.0), workers=1)
        spectrum[support] = measured[support]
        x = sfft.ifftn(spectrum, workers=1).real.astype(np.float32)
    return x + np.float32(imaging.medium_ri)
