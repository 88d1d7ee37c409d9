"""Refractive-index texture of a validation cell, evaluated at arbitrary points.

The model (values are RI above the medium, 1.337):

* **Cytoplasm**: a base contrast (CAR-T 0.018-0.035, target 0.013-0.028: RI 1.350-1.372, the
  range holotomography reports for lymphocytes and leukaemia lines) plus a smooth "cloud":
  a sum of plane waves with random directions, wavelengths 1-5 um and a total amplitude of
  0.001-0.003.
* **Cortex**: a shell of 0.3-0.5 um under the membrane, +0.001-0.004 (actin cortex).
* **Nucleus**: an off-centre ellipsoid (45-65 % of the cell), contrast -0.004 ... +0.006 against
  the cytoplasm (nuclei read both darker and brighter than their cytoplasm in ODT), with 1-3
  nucleoli (Gaussian blobs, +0.006-0.012).
* **Granules / lipid droplets**: Gaussian blobs (sigma 0.12-0.3 um, peak +0.01-0.04), 3-15 per cell.

Unlike the training generator's hard-edged spheres of constant RI, every inclusion here has a
smooth profile, and the cytoplasm is textured by plane waves rather than by filtered noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from deepis_rt.validation.shapes import Body, Superellipsoid, random_rotation

__all__ = ["CellTexture", "random_texture"]


@dataclass
class CellTexture:
    """RI contrast inside one cell (see module docstring); :meth:`contrast` evaluates it."""

    base: float
    waves: np.ndarray  # (W, 5): k-vector (3, rad/um), phase, amplitude
    cortex_um: float
    cortex_dri: float
    nucleus: Body
    nucleus_dri: float
    blobs: np.ndarray = field(default_factory=lambda: np.zeros((0, 5)))  # (B, 5): centre (3), sigma, peak

    def contrast(self, points: np.ndarray, level: np.ndarray, scale_um: float) -> np.ndarray:
        """RI above the medium at ``points`` (..., 3) inside the cell.

        ``level`` is the cell body's implicit level at the points and ``scale_um`` the body's
        size, so that ``-level * scale_um`` approximates the depth below the membrane.
        """
        p = np.asarray(points, np.float32)
        out = np.full(p.shape[:-1], np.float32(self.base))
        for k0, k1, k2, phase, amp in self.waves:
            out += np.float32(amp) * np.cos(p[..., 0] * k0 + p[..., 1] * k1 + p[..., 2] * k2 + np.float32(phase))
        out += np.float32(self.cortex_dri) * (-level * scale_um < self.cortex_um)
        out += np.float32(self.nucleus_dri) * self.nucleus.contains(p)
        for cz, cy, cx, sigma, peak in self.blobs:
            r2 = (p[..., 0] - cz) ** 2 + (p[..., 1] - cy) ** 2 + (p[..., 2] - cx) ** 2
            near = r2 < (4 * sigma) ** 2
            if near.any():
                out[near] += np.float32(peak) * np.exp(-r2[near] / np.float32(2 * sigma * sigma))
        return out


def _points_inside(body: Body, center: np.ndarray, reach_um: float, n: int, rng: np.random.Generator) -> np.ndarray:
    pts = center + rng.uniform(-reach_um, reach_um, size=(max(40 * n, 200), 3))
    return pts[body.contains(pts)][:n]


def random_texture(body: Superellipsoid, kind: str, rng: np.random.Generator) -> CellTexture:
    """A random texture for a CAR-T (``kind="tcell"``) or target (``"target"``) cell body."""
    base = rng.uniform(0.018, 0.035) if kind == "tcell" else rng.uniform(0.013, 0.028)
    n_waves = 10
    directions = rng.normal(size=(n_waves, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    wavelengths = rng.uniform(1.0, 5.0, n_waves)
    k = directions * (2 * math.pi / wavelengths)[:, None]
    amps = rng.uniform(0.5, 1.0, n_waves)
    amps *= rng.uniform(0.001, 0.003) / amps.sum() * 2.0  # a sum of cosines reaches about half its amplitude sum
    waves = np.column_stack([k, rng.uniform(0, 2 * math.pi, n_waves), amps])
    offset = rng.normal(scale=0.15, size=3) * body.semi_axes
    nucleus_axes = body.semi_axes * rng.uniform(0.45, 0.65) * rng.uniform(0.9, 1.1, 3)
    nucleus = Superellipsoid(center=body.center + body.rotation @ offset, semi_axes=nucleus_axes,
                             rotation=random_rotation(rng))
    n_nucleoli = int(rng.integers(1, 4))
    nucleoli = _points_inside(nucleus, nucleus.center, float(nucleus_axes.max()), n_nucleoli, rng)
    n_granules = int(rng.integers(3, 16))
    granules = _points_inside(body, body.center, float(body.semi_axes.max()), n_granules, rng)
    blobs = [(*c, rng.uniform(0.25, 0.45), rng.uniform(0.006, 0.012)) for c in nucleoli]
    blobs += [(*c, rng.uniform(0.12, 0.3), rng.uniform(0.01, 0.04)) for c in granules]
    return CellTexture(
        base=float(base),
        waves=waves,
        cortex_um=float(rng.uniform(0.3, 0.5)),
        cortex_dri=float(rng.uniform(0.001, 0.004)),
        nucleus=nucleus,
        nucleus_dri=float(rng.uniform(-0.004, 0.006)),
        blobs=np.array(blobs, dtype=float).reshape(-1, 5),
    )
