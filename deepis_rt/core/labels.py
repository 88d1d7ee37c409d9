"""The paper's masks and label volume from a signed distance map.

The network predicts a signed distance map in um: positive inside the CAR-T cell, negative inside
the target cell, zero in the background and in the thin band at the synapse. The paper's
post-processing, as every layer uses it (training metrics, export parity, the runtime's labels and
the analysis):

- CAR-T mask: ``distance > threshold_um``; target mask: ``distance < -threshold_um``, with
  ``threshold_um`` half the voxel pitch (the smallest voxel edge).
- IS mask: the overlap of the two masks, each dilated by 2 voxels.
- Label volume: 0 background, 1 CAR-T, 2 target, 3 IS.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from deepis_rt.errors import InputError

__all__ = [
    "LABEL_NAMES",
    "LABEL_COLORS",
    "LABEL_BACKGROUND",
    "LABEL_TCELL",
    "LABEL_TARGET",
    "LABEL_IS",
    "CROSS",
    "check_voxel_size",
    "default_threshold_um",
    "cell_masks",
    "dilate",
    "is_mask",
    "label_volume",
    "labels_from_distance",
]

LABEL_BACKGROUND = 0
LABEL_TCELL = 1
LABEL_TARGET = 2
LABEL_IS = 3
#: What each label value is, in every output (OME-Zarr ``image-label`` properties, napari, the report).
LABEL_NAMES = {LABEL_TCELL: "CAR-T", LABEL_TARGET: "target", LABEL_IS: "IS"}
#: Fixed colour of every label value, RGBA 0-255 (0 transparent): CAR-T green, target magenta, IS yellow.
LABEL_COLORS = {LABEL_BACKGROUND: (0, 0, 0, 0), LABEL_TCELL: (46, 204, 64, 255), LABEL_TARGET: (240, 18, 190, 255),
                LABEL_IS: (255, 220, 0, 255)}

#: 6-connected structuring element: one dilation step moves one voxel along an axis
CROSS = ndi.generate_binary_structure(3, 1)


def check_voxel_size(voxel_size_um: Sequence[float]) -> tuple[float, float, float]:
    """``voxel_size_um`` as three positive finite floats (Z, Y, X), else :class:`InputError`."""
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
    return 0.5 * min(check_voxel_size(voxel_size_um))


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
    return ndi.binary_dilation(mask, structure=CROSS, iterations=int(voxels))


def is_mask(tcell: np.ndarray, target: np.ndarray, dilation_voxels: int = 2) -> np.ndarray:
    """The paper's IS mask: overlap of both masks, each dilated by ``dilation_voxels``."""
    return dilate(tcell, dilation_voxels) & dilate(target, dilation_voxels)


def label_volume(tcell: np.ndarray, target: np.ndarray, dilation_voxels: int = 2) -> np.ndarray:
    """The uint8 label volume: 0 background, 1 CAR-T, 2 target, 3 IS (IS drawn last)."""
    labels = np.zeros(tcell.shape, dtype=np.uint8)
    labels[tcell] = LABEL_TCELL
    labels[target] = LABEL_TARGET
    if tcell.any() and target.any():
        labels[is_mask(tcell, target, dilation_voxels)] = LABEL_IS
    return labels


def labels_from_distance(distance: np.ndarray, voxel_size_um: Sequence[float], dilation_voxels: int = 2) -> np.ndarray:
    """The paper's labels from a signed distance map, without the rest of the analysis.

    CAR-T = distance > half the voxel pitch, target = distance < minus half the pitch, IS = overlap of
    both masks each dilated by ``dilation_voxels`` voxels.
    """
    tcell, target = cell_masks(distance, default_threshold_um(voxel_size_um))
    return label_volume(tcell, target, dilation_voxels)
