"""Holotomography (optical diffraction tomography, ODT) imaging model of the synthetic tomograms.

An ODT system illuminates the sample with a plane wave from many angles and records the
scattered field of each in a hologram; the refractive-index (RI) tomogram is reconstructed
with the Fourier diffraction theorem (first Born or Rytov approximation; Wolf 1969,
Devaney 1981). Each illumination wave vector ``k_i`` maps the scattered field onto a cap of
the Ewald sphere, ``K = k_s - k_i`` with ``|k_s| = |k_i| = n_m / lambda`` and
``|k_s,perp| <= NA_obj / lambda``. The union of the caps over the illumination angles
(``|k_i,perp| <= NA_ill / lambda``), together with its mirror image (the RI is real, so
``F(-K) = F(K)*``), is the part of the object spectrum a reconstruction can know:

* lateral cut-off ``|K_perp| <= (NA_obj + NA_ill) / lambda``;
* axial cut-off ``|K_z| <= (n_m - sqrt(n_m^2 - NA^2)) / lambda`` with ``NA = max(NA_obj, NA_ill)``;
* a **missing cone** around the ``k_z`` axis: at lateral frequency ``q`` only
  ``|K_z| <~ q tan(theta_ill)`` is reached, so flat-topped structures lose their axial
  edges, objects are elongated along z and have dark (RI < medium) halos above and
  below them (Lim et al. 2015; Park, Shin & Park 2018).

:func:`transfer_support` computes this support on an FFT grid exactly (per lateral
frequency, the range of ``K_z`` over all illumination / scattering pairs, for a scan
that fills the illumination disc or a ring at NA_ill). :func:`reconstruct` applies it to
an RI contrast volume (the first-order scattering potential is proportional to
``n - n_m``), adds measurement noise inside the support, and optionally runs the
iterative non-negativity constraint that ODT software uses to fill part of the cone
(Gerchberg-Papoulis iterations with RI >= medium; Sung et al. 2009; Kim et al. 2014;
compared with other regularisers by Lim et al. 2015).

Ranges (used by :func:`draw_imaging` for domain randomisation; um, RI units):

* Tomocube HT-1 / HT-2 (the instrument family of the DeepIS data, Lee et al. 2020):
  532 nm laser, water-immersion objective NA 1.2, illumination scanned by a DMD up to an
  NA of about 1.0; medium RI 1.333-1.340 (PBS, culture media). The cut-offs above then
  give half-periods of 0.12 um lateral and 0.36 um axial.
* Other published ODT set-ups: objective NA 0.95-1.4, illumination NA 0.6-1.2
  (limited by the condenser and by NA_obj), wavelengths 0.45-0.70 um (Kim et al. 2014;
  Lim et al. 2015; Park et al. 2018).
* Reconstruction: raw (Rytov with zero-filled cone) or non-negativity iterations
  (Sung et al. 2009 and Lim et al. 2015 use tens to a hundred; most of the refill comes
  in the first few, so training draws 3-12 to keep the generator fast).
* Noise: background fluctuation of reconstructed tomograms about 0.001-0.003 RI units
  (the 1e-3 RI sensitivity usually quoted for ODT); sub-micrometre RI texture inside
  cells of a few 1e-3.
* Voxel sizes of exported tomograms: about 0.1 um lateral and 0.2 um axial at full
  resolution; down-sampled exports and lower-NA systems up to 0.5 um.

References
----------
Wolf E. (1969) Opt. Commun. 1:153. Devaney A.J. (1981) Opt. Lett. 6:374.
Sung Y. et al. (2009) Optical diffraction tomography for high resolution live cell imaging. Opt. Express 17:266.
Kim K. et al. (2014) High-resolution three-dimensional imaging of red blood cells parasitized by
Plasmodium falciparum and in situ hemozoin crystals using optical diffraction tomography. J. Biomed. Opt. 19:011005.
Lim J. et al. (2015) Comparative study of iterative reconstruction algorithms for missing cone problems in
optical diffraction tomography. Opt. Express 23:16933.
Park C., Shin S., Park Y. (2018) Generalized quantification of three-dimensional resolution in optical
diffraction tomography using the projection of maximal spatial bandwidths. J. Opt. Soc. Am. A 35:1891.
Lee M. et al. (2020) Deep-learning-based three-dimensional label-free tracking and analysis of immunological
synapses of CAR-T cells. eLife 9:e49023.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import fft as sfft

from deepis_rt.errors import ConfigError

__all__ = [
    "Imaging",
    "GaussianOTF",
    "IMAGING_CONDITIONS",
    "TOMOCUBE",
    "IMAGING_RANGES",
    "draw_imaging",
    "cutoffs",
    "kz_range",
    "transfer_support",
    "reconstruct",
]


@dataclass(frozen=True)
class Imaging:
    """One holotomography acquisition and reconstruction.

    Attributes
    ----------
    na_obj : float
        Numerical aperture of the objective (detection).
    na_ill : float
        Largest numerical aperture of the illumination scan.
    wavelength_um : float
        Vacuum wavelength of the laser, um.
    medium_ri : float
        RI of the immersion / culture medium (the reference of the reconstruction).
    scan : str
        ``"disc"``: illumination angles fill the disc up to NA_ill (dense or spiral
        scans); ``"ring"``: they lie on the circle at NA_ill (circular scans).
    nonneg_iterations : int
        Non-negativity (RI >= medium) iterations after the raw reconstruction; 0: raw.
    noise_ri : float
        Standard deviation of the reconstruction noise, RI units (band-limited to the support).
    """

    na_obj: float = 1.2
    na_ill: float = 1.0
    wavelength_um: float = 0.532
    medium_ri: float = 1.337
    scan: str = "disc"
    nonneg_iterations: int = 10
    noise_ri: float = 0.001

    def __post_init__(self) -> None:
        if not 0 < self.na_obj < self.medium_ri:
            raise ConfigError(f"imaging: na_obj={self.na_obj} must be in (0, medium_ri={self.medium_ri})")
        if not 0 <= self.na_ill < self.medium_ri:
            raise ConfigError(f"imaging: na_ill={self.na_ill} must be in [0, medium_ri={self.medium_ri})")
        if not self.wavelength_um > 0:
            raise ConfigError(f"imaging: wavelength_um={self.wavelength_um} must be positive (um)")
        if self.scan not in ("disc", "ring"):
            raise ConfigError(f"imaging: scan={self.scan!r}; expected 'disc' or 'ring'")
        if self.nonneg_iterations < 0 or self.noise_ri < 0:
            raise ConfigError("imaging: nonneg_iterations and noise_ri must be >= 0")

    def as_dict(self) -> dict:
        return {"model": "odt", **asdict(self)}

    def reconstruct(self, contrast: np.ndarray, voxel_size_um: Sequence[float],
                    rng: np.random.Generator | None = None) -> np.ndarray:
        """See :func:`reconstruct`."""
        return reconstruct(contrast, voxel_size_um, self, rng)


#: Tomocube HT-1/HT-2-like condition (the synthetic videos' default).
TOMOCUBE = Imaging()

#: Domain-randomisation ranges (see the module docstring for their sources).
IMAGING_RANGES: dict[str, tuple[float, float]] = {
    "na_obj": (0.95, 1.3),
    "na_ill_fraction": (0.6, 1.0),  # NA_ill as a fraction of min(NA_obj, 1.2)
    "wavelength_um": (0.45, 0.70),
    "medium_ri": (1.333, 1.340),
    "nonneg_iterations": (3, 12),
    "noise_ri": (0.0005, 0.003),
}


def draw_imaging(rng: np.random.Generator, raw_fraction: float = 0.15) -> Imaging:
    """A random imaging condition from :data:`IMAGING_RANGES` (domain randomisation).

    ``raw_fraction`` of the draws are raw reconstructions (no non-negativity iterations).
    """
    r = IMAGING_RANGES
    na_obj = float(rng.uniform(*r["na_obj"]))
    na_ill = float(rng.uniform(*r["na_ill_fraction"]) * min(na_obj, 1.2))
    iters = 0 if rng.random() < raw_fraction else int(rng.integers(int(r["nonneg_iterations"][0]),
                                                                   int(r["nonneg_iterations"][1]) + 1))
    return Imaging(
        na_obj=na_obj,
        na_ill=na_ill,
        wavelength_um=float(rng.uniform(*r["wavelength_um"])),
        medium_ri=float(rng.uniform(*r["medium_ri"])),
        scan="ring" if rng.random() < 0.3 else "disc",
        nonneg_iterations=iters,
        noise_ri=float(np.exp(rng.uniform(np.log(r["noise_ri"][0]), np.log(r["noise_ri"][1])))),
    )


@dataclass(frozen=True)
class GaussianOTF:
    """The earlier, simpler model: an anisotropic Gaussian OTF, a cone damped to ``cone_gain``, white noise.

    The bundled demo checkpoint was trained on it; the demo and ``deepis-rt synth`` keep
    it as their default (``imaging="legacy"``) until a checkpoint trained on the
    holotomography model is bundled.
    """

    sigma_um: tuple[float, float, float] = (0.45, 0.16, 0.16)
    cone_slope: float = 1.5
    cone_gain: float = 0.4
    noise_ri: float = 0.0007
    medium_ri: float = 1.337

    def as_dict(self) -> dict:
        return {"model": "gaussian-otf", **asdict(self)}

    def reconstruct(self, contrast: np.ndarray, voxel_size_um: Sequence[float],
                    rng: np.random.Generator | None = None) -> np.ndarray:
        shape = contrast.shape
        kz, _ = _freqs(shape, voxel_size_um)
        ky = sfft.fftfreq(shape[1], d=float(voxel_size_um[1])).astype(np.float32)[None, :, None]
        kx = sfft.rfftfreq(shape[2], d=float(voxel_size_um[2])).astype(np.float32)[None, None, :]
        kz = kz.astype(np.float32)
        sz, sy, sx = self.sigma_um
        otf = np.exp(-np.float32(2 * np.pi**2) * ((sz * kz) ** 2 + (sy * ky) ** 2 + (sx * kx) ** 2))
        cone = (np.abs(kz) > self.cone_slope * np.sqrt(ky**2 + kx**2)) & (np.abs(kz) > 0)
        otf = np.where(cone, otf * np.float32(self.cone_gain), otf).astype(np.float32)
        out = sfft.irfftn(sfft.rfftn(contrast, workers=1) * otf, s=shape, workers=1).astype(np.float32)
        if rng is not None and self.noise_ri > 0:
            out += rng.normal(scale=self.noise_ri, size=shape).astype(np.float32)
        return out


#: Named imaging conditions of the synthetic videos (``generate_timelapse(imaging=...)``).
IMAGING_CONDITIONS = ("legacy", "tomocube", "raw", "random")


def cutoffs(imaging: Imaging) -> tuple[float, float]:
    """(lateral, axial) cut-off spatial frequencies of the support, cycles/um."""
    lam, n = imaging.wavelength_um, imaging.medium_ri
    na = max(imaging.na_obj, imaging.na_ill)
    return (imaging.na_obj + imaging.na_ill) / lam, (n - np.sqrt(n * n - na * na)) / lam


def kz_range(imaging: Imaging, q: np.ndarray, samples: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """Range ``[lo, hi]`` of ``K_z`` reached at lateral spatial frequency ``q`` (cycles/um).

    One half of the support (before the mirror ``K -> -K``): for the lateral frequency
    ``(q, 0)``, ``K_z = sqrt(k^2 - |q + k_i|^2) - sqrt(k^2 - |k_i|^2)`` over every
    illumination ``k_i`` of the scan with ``|q + k_i| <= NA_obj / lambda``. ``K_z`` is
    continuous on a connected set (a lens-shaped region or an arc), so its range is an
    interval; it is found from dense samples of the region and of its boundary.
    ``lo = inf, hi = -inf`` where ``q`` is out of reach.
    """
    q = np.atleast_1d(np.asarray(q, dtype=np.float64))
    k = imaging.medium_ri / imaging.wavelength_um
    a = imaging.na_ill / imaging.wavelength_um
    b = imaging.na_obj / imaging.wavelength_um
    phi = np.linspace(0.0, 2 * np.pi, 4 * samples, endpoint=False)
    unit = np.stack([np.cos(phi), np.sin(phi)], axis=1)
    if imaging.scan == "disc":
        rad = np.linspace(0.0, 1.0, samples // 3 + 1)[:, None, None]
        own = (rad * a * unit[None]).reshape(-1, 2)
    else:
        own = a * unit
    # per q: the scan's own points, the detection circle |q + k_i| = b (disc scans: where it
    # lies in the disc) and, for rings, the arc's ends where the two circles cross
    qv = q[:, None, None]
    ki_own = np.broadcast_to(own[None], (len(q),) + own.shape)
    ki_det = np.concatenate([-qv[..., :1] + b * unit[None, :, :1], np.broadcast_to(b * unit[None, :, 1:], (len(q), len(phi), 1))], axis=2)
    ki_cross = np.stack([_circle_crossings(a, float(qj), b) for qj in q])
    ki = np.concatenate([ki_own, ki_det, ki_cross], axis=1)  # (Q, P, 2)
    r_ill = np.hypot(ki[..., 0], ki[..., 1])
    ks_x = ki[..., 0] + qv[..., 0]
    r_det = np.hypot(ks_x, ki[..., 1])
    valid = np.isfinite(r_ill) & (r_det <= b * (1 + 1e-9))
    if imaging.scan == "disc":
        valid &= r_ill <= a * (1 + 1e-9)
    else:
        valid &= np.abs(r_ill - a) <= a * 1e-6 + 1e-12
    kz = np.sqrt(np.maximum(k * k - r_det**2, 0.0)) - np.sqrt(np.maximum(k * k - r_ill**2, 0.0))
    lo = np.where(valid, kz, np.inf).min(axis=1)
    hi = np.where(valid, kz, -np.inf).max(axis=1)
    return lo, hi


def _circle_crossings(a: float, q: float, b: float) -> np.ndarray:
    """The two points where |p| = a meets |p + (q, 0)| = b (NaN when the circles do not cross)."""
    none = np.full((2, 2), np.nan)
    if q <= 0 or a <= 0:
        return none
    x = (b * b - a * a - q * q) / (2 * q)
    y2 = a * a - x * x
    if y2 < 0:
        return none
    y = np.sqrt(y2)
    return np.array([[x, y], [x, -y]])


def _freqs(shape: Sequence[int], voxel_size_um: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    kz = sfft.fftfreq(int(shape[0]), d=float(voxel_size_um[0]))[:, None, None]
    ky = sfft.fftfreq(int(shape[1]), d=float(voxel_size_um[1]))[None, :, None]
    kx = sfft.rfftfreq(int(shape[2]), d=float(voxel_size_um[2]))[None, None, :]
    return kz, np.sqrt(ky * ky + kx * kx)


def transfer_support(shape: Sequence[int], voxel_size_um: Sequence[float], imaging: Imaging) -> np.ndarray:
    """Support of the reconstruction on the ``rfftn`` grid of a volume: boolean (Z, Y, X // 2 + 1).

    True where a Born / Rytov reconstruction with ``imaging`` knows the object's spectrum
    (both halves: the caps and their mirror image), False outside the cut-offs and in the
    missing cone. A frequency voxel is in when its centre is.
    """
    kz, q = _freqs(shape, voxel_size_um)
    q_max = (imaging.na_obj + imaging.na_ill) / imaging.wavelength_um
    table_q = np.linspace(0.0, q_max, 97)
    lo, hi = kz_range(imaging, table_q)
    reach = np.isfinite(lo)
    lo_q = np.interp(q, table_q[reach], lo[reach], right=np.inf)
    hi_q = np.interp(q, table_q[reach], hi[reach], right=-np.inf)
    inside = ((kz >= lo_q) & (kz <= hi_q)) | ((-kz >= lo_q) & (-kz <= hi_q))
    inside &= q <= q_max
    inside[0, 0, 0] = True  # the mean RI contrast (K = 0) is always measured
    return inside


def reconstruct(contrast: np.ndarray, voxel_size_um: Sequence[float], imaging: Imaging,
                rng: np.random.Generator | None = None, support: np.ndarray | None = None,
                workers: int = 2) -> np.ndarray:
    """RI contrast (``n - n_medium``) as an ODT reconstruction with ``imaging`` would give it.

    The spectrum of ``contrast`` (plus white noise, so that the noise too is band-limited
    like a real reconstruction's) is kept on the support and zeroed elsewhere (the raw
    Rytov reconstruction). With ``imaging.nonneg_iterations = N > 0``, N Gerchberg-Papoulis
    iterations follow: clip the RI below the medium to the medium, then restore the
    measured frequencies. The result ends on the measured data, so small negative values
    (noise) remain where the measurement says so; the cone is partly refilled.

    Parameters
    ----------
    contrast : (Z, Y, X) float array
        True RI minus the medium RI.
    voxel_size_um : (Z, Y, X)
    imaging : Imaging
    rng : numpy.random.Generator, optional
        Noise source (no noise when None or ``imaging.noise_ri == 0``).
    support : bool array, optional
        A precomputed :func:`transfer_support` of this shape and imaging.
    workers : int
        FFT threads.

    Returns
    -------
    numpy.ndarray
        float32, same shape.
    """
    shape = contrast.shape
    if support is None:
        support = transfer_support(shape, voxel_size_um, imaging)
    data = np.asarray(contrast, dtype=np.float32)
    if rng is not None and imaging.noise_ri > 0:
        # white noise of this std keeps noise_ri after the band limit
        fraction = max(float(support.mean()), 1e-6)
        noise = rng.standard_normal(size=shape, dtype=np.float32) * np.float32(imaging.noise_ri / np.sqrt(fraction))
        data = data + noise
    measured = sfft.rfftn(data, workers=workers)
    measured[~support] = 0
    x = sfft.irfftn(measured, s=shape, workers=workers)
    for _ in range(int(imaging.nonneg_iterations)):
        np.maximum(x, 0, out=x)
        spec = sfft.rfftn(x, workers=workers)
        spec[support] = measured[support]
        x = sfft.irfftn(spec, s=shape, workers=workers)
    return x.astype(np.float32, copy=False)
