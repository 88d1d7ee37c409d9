"""Masks from a signed distance map, as in the DeepIS paper.

The network predicts a signed distance map in um: positive inside the CAR-T
cell, negative inside the target cell, zero in the background and in the thin
band at the synapse. The paper's post-processing, implemented here:

- CAR-T mask: ``distance > threshold_um``; target mask: ``distance < -threshold_um``,
  with ``threshold_um`` half the voxel pitch (the smallest voxel edge by default).
- IS mask: the overlap of the two masks, each dilated by 2 voxels.
- Cell instances: connected components (6-connectivity) of each mask; fragments
  smaller than a minimum volume are dropped (noise, debris, tile seams).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from deepis_rt.errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "LABEL_BACKGROUND",
    "LABEL_TCELL",
    "LABEL_TARGET",
    "LABEL_IS",
    "default_threshold_um",
    "cell_masks",
    "dilate",
    "is_mask",
    "label_instances",
    "label_volume",
]

LABEL_BACKGROUND = 0
LABEL_TCELL = 1
LABEL_TARGET = 2
LABEL_IS = 3

#: 6-connected structuring element: one dilation step moves one voxel along an axis
_CROSS = ndi.generate_binary_structure(3, 1)


def _voxel_size(voxel_size_um: Sequence[float]) -> tuple[float, float, float]:
    try:
        vs = tuple(float(v) for v in voxel_size_um)
    except TypeError as exc:
        raise InputError(
            f"analysis | voxel_size_um={voxel_size_um!r}: expected three numbers (Z, Y, X) in um"
        ) from exc
    if len(vs) != 3 or not all(np.isfinite(v) and v > 0 for v in vs):
        raise InputError(
            f"analysis | voxel_size_um={voxel_size_um!r}: expected three positive numbers (Z, Y, X) in um"
        )
    return vs  # type: ignore[return-value]


def default_threshold_um(voxel_size_um: Sequence[float]) -> float:
    """Half the voxel pitch: the paper's mask threshold on the distance map.

    With anisotropic voxels the smallest edge is used, so that a voxel whose
    centre lies one (lateral) voxel inside a cell is always in its mask.
    """
    return 0.5 * min(_voxel_size(voxel_size_um))


def cell_masks(distance: np.ndarray, threshold_um: float) -> tuple[np.ndarray, np.ndarray]:
    """CAR-T and target masks: ``distance > t`` and ``distance < -t``.

    Parameters
    ----------
    distance : ndarray, shape (Z, Y, X)
        Signed distance map in um.
    threshold_um : float
        The threshold ``t`` (half the voxel pitch in the paper).

    Returns
    -------
    tcell, target : ndarray of bool
    """
    return distance > threshold_um, distance < -threshold_um


def dilate(mask: np.ndarray, voxels: int) -> np.ndarray:
    """Binary dilation by ``voxels`` steps of the 6-connected cross (scipy.ndimage)."""
    if voxels <= 0:
        return mask.copy()
    return ndi.binary_dilation(mask, structure=_CROSS, iterations=int(voxels))


def is_mask(tcell: np.ndarray, target: np.ndarray, dilation_voxels: int = 2) -> np.ndarray:
    """The paper's IS mask: overlap of both masks, each dilated by ``dilation_voxels``."""
    return dilate(tcell, dilation_voxels) & dilate(target, dilation_voxels)


def label_instances(
    mask: np.ndarray, voxel_volume_um3: float, min_volume_um3: float
) -> tuple[np.ndarray, int, int]:
    """Connected components of ``mask`` without fragments below ``min_volume_um3``.

    Returns
    -------
    labels : ndarray of int32
        0 outside, 1..n for the kept components (consecutive, in scan order).
    n : int
        Number of kept components.
    dropped : int
        Number of fragments dropped.
    """
    labels, n = ndi.label(mask, structure=_CROSS)
    if n == 0:
        return labels.astype(np.int32, copy=False), 0, 0
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    keep = counts * voxel_volume_um3 >= min_volume_um3
    keep[0] = False
    remap = np.zeros(n + 1, dtype=np.int32)
    remap[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    dropped = int(n - keep.sum())
    if dropped:
        log.debug("dropped %d fragment(s) below %.1f um^3", dropped, min_volume_um3)
    return remap[labels], int(keep.sum()), dropped


def label_volume(tcell: np.ndarray, target: np.ndarray, dilation_voxels: int = 2) -> np.ndarray:
    """The uint8 label volume: 0 background, 1 CAR-T, 2 target, 3 IS (IS drawn last)."""
    labels = np.zeros(tcell.shape, dtype=np.uint8)
    labels[tcell] = LABEL_TCELL
    labels[target] = LABEL_TARGET
    if tcell.any() and target.any():
        labels[is_mask(tcell, target, dilation_voxels)] = LABEL_IS
    return labels
