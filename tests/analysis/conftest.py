"""Analytic signed-distance maps for the analysis tests (no dependency on deepis_rt.synth).

Two conventions are produced, because both occur in practice:

- ``"exact"``: the exact Euclidean distance to the cell's border (sphere
  surface or the contact plane), positive in the CAR-T cell, negative in the target;
- ``"edt"``: scipy's Euclidean distance transform of the analytic masks
  (inside voxels carry >= 1 voxel pitch), the usual way ground truth is made.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
from scipy import ndimage as ndi


def grid_um(shape, voxel_size_um):
    axes = [np.arange(n) * h for n, h in zip(shape, voxel_size_um, strict=True)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def edt_signed(tcell, target, voxel_size_um):
    return (
        ndi.distance_transform_edt(tcell, sampling=voxel_size_um)
        - ndi.distance_transform_edt(target, sampling=voxel_size_um)
    ).astype(np.float32)


def two_spheres(shape, voxel_size_um, c1, r1, c2, r2, convention="edt"):
    """CAR-T sphere (c1, r1) and target sphere (c2, r2) split at their radical plane.

    Returns (distance, tcell_mask, target_mask, contact_radius_um).
    """
    p = grid_um(shape, voxel_size_um)
    c1, c2 = np.asarray(c1, float), np.asarray(c2, float)
    sep = np.linalg.norm(c2 - c1)
    u = (c2 - c1) / sep
    plane = (sep**2 + r1**2 - r2**2) / (2 * sep)  # radical plane, distance from c1
    s = (p - c1) @ u - plane
    rho1 = np.linalg.norm(p - c1, axis=-1)
    rho2 = np.linalg.norm(p - c2, axis=-1)
    in1 = (rho1 < r1) & (s < 0)
    in2 = (rho2 < r2) & (s >= 0)
    a = float(np.sqrt(max(r1**2 - plane**2, 0.0))) if sep < r1 + r2 else 0.0
    if convention == "exact":
        d = np.where(in1, np.minimum(r1 - rho1, -s), 0.0) - np.where(in2, np.minimum(r2 - rho2, s), 0.0)
        d = d.astype(np.float32)
    else:
        d = edt_signed(in1, in2, voxel_size_um)
    return d, in1, in2, a


def conjugate(shape, voxel_size_um, r1, r2, contact_radius_um, direction, origin, convention="edt"):
    """Two spheres placed so that their contact disk has the requested radius."""
    u = np.asarray(direction, float)
    u /= np.linalg.norm(u)
    p1 = np.sqrt(r1**2 - contact_radius_um**2)
    p2 = np.sqrt(r2**2 - contact_radius_um**2)
    c1 = np.asarray(origin, float) - u * p1
    return two_spheres(shape, voxel_size_um, c1, r1, c1 + u * (p1 + p2), r2, convention)


def ellipsoid_mask(shape, voxel_size_um, centre, semi_axes_um):
    p = grid_um(shape, voxel_size_um) - np.asarray(centre, float)
    return ((p / np.asarray(semi_axes_um, float)) ** 2).sum(-1) < 1.0


def ellipsoid_surface_um2(a, b, c):
    """Knud Thomsen's approximation (relative error < 1.1 %)."""
    k = 1.6075
    return 4 * np.pi * (((a * b) ** k + (a * c) ** k + (b * c) ** k) / 3) ** (1 / k)


@pytest.fixture(scope="session")
def geometry():
    return types.SimpleNamespace(
        grid_um=grid_um,
        edt_signed=edt_signed,
        two_spheres=two_spheres,
        conjugate=conjugate,
        ellipsoid_mask=ellipsoid_mask,
        ellipsoid_surface_um2=ellipsoid_surface_um2,
    )
