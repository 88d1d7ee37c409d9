"""Planes through a conjugate: a side view along the cell-cell axis and an en-face view of the contact.

Both are resampled in micrometres (voxels may be anisotropic) with :func:`scipy.ndimage.map_coordinates`:
linear for the RI, nearest for the labels.

* **side view**: the plane through the IS that holds the axis from the CAR-T to the target centroid
  (horizontal) and the direction closest to z (vertical) — the conjugate seen from the side;
* **en-face view**: the plane through the IS perpendicular to that axis — the contact as the
  CAR-T cell sees it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from deepis_rt.runtime.result import LABEL_SYNAPSE, LABEL_TARGET, LABEL_TCELL

__all__ = ["ContactPlanes", "contact_planes", "mip"]


@dataclass
class ContactPlanes:
    """Side and en-face planes of one frame (``ri_*`` None when the RI is not at hand)."""

    side_labels: np.ndarray
    enface_labels: np.ndarray
    side_ri: np.ndarray | None
    enface_ri: np.ndarray | None
    half_width_um: float
    has_synapse: bool


def _centroid_um(mask: np.ndarray, voxel_size_um: Sequence[float]) -> np.ndarray | None:
    idx = np.argwhere(mask)
    return None if idx.size == 0 else idx.mean(axis=0) * np.asarray(voxel_size_um, float)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _sample(volume: np.ndarray, voxel_size_um: Sequence[float], centre: np.ndarray, u: np.ndarray,
            v: np.ndarray, half_um: float, n: int, order: int, cval: float) -> np.ndarray:
    from scipy import ndimage as ndi

    s = np.linspace(-half_um, half_um, n)
    a, b = np.meshgrid(s, s, indexing="ij")  # a: rows (along v, top to bottom), b: columns (along u)
    points = centre[:, None, None] - a[None] * v[:, None, None] + b[None] * u[:, None, None]
    coords = points / np.asarray(voxel_size_um, float)[:, None, None]
    return ndi.map_coordinates(volume, coords, order=order, mode="constant", cval=cval)


def contact_planes(labels: np.ndarray, voxel_size_um: Sequence[float], ri: np.ndarray | None = None,
                   n: int = 128) -> ContactPlanes | None:
    """Side and en-face planes through the contact of ``labels`` (None without both cells).

    Centred on the IS centroid (the midpoint of the two cells where no IS is segmented); the planes
    span 1.3 times the distance between the cell centroids, at least 8 um.
    """
    c_t = _centroid_um(labels == LABEL_TCELL, voxel_size_um)
    c_g = _centroid_um(labels == LABEL_TARGET, voxel_size_um)
    if c_t is None or c_g is None or np.allclose(c_t, c_g):
        return None
    c_is = _centroid_um(labels == LABEL_SYNAPSE, voxel_size_um)
    centre = c_is if c_is is not None else (c_t + c_g) / 2
    axis = _unit(c_g - c_t)
    up = np.array([1.0, 0.0, 0.0]) - axis[0] * axis  # z, made perpendicular to the axis
    if np.linalg.norm(up) < 1e-6:  # the cells sit above each other: y is "up" instead
        up = np.array([0.0, 1.0, 0.0]) - axis[1] * axis
    up = _unit(up)
    across = np.cross(axis, up)
    half = max(4.0, 0.65 * float(np.linalg.norm(c_g - c_t)))
    lab = np.asarray(labels)

    def planes(volume: np.ndarray, order: int, cval: float) -> tuple[np.ndarray, np.ndarray]:
        side = _sample(volume, voxel_size_um, centre, axis, up, half, n, order, cval)
        enface = _sample(volume, voxel_size_um, centre, across, up, half, n, order, cval)
        return side, enface

    side_l, enface_l = planes(lab, 0, 0)
    side_r = enface_r = None
    if ri is not None and np.isfinite(ri).any():
        background = float(np.nanmedian(ri))
        side_r, enface_r = planes(np.nan_to_num(np.asarray(ri, np.float32), nan=background), 1, background)
    return ContactPlanes(side_l.astype(np.uint8), enface_l.astype(np.uint8), side_r, enface_r, half,
                         c_is is not None)


def mip(volume: np.ndarray) -> np.ndarray:
    """Maximum-intensity projection along z, ignoring NaN (unwritten) voxels."""
    volume = np.asarray(volume)
    if np.issubdtype(volume.dtype, np.floating):
        return np.nanmax(np.where(np.isfinite(volume), volume, -np.inf), axis=0)
    return volume.max(axis=0)
