"""Masks from a signed distance map, as in the DeepIS paper.

The network predicts a signed distance map in um: positive inside the CAR-T
cell, negative inside the target cell, zero in the background and in the thin
band at the synapse. The paper's post-processing, implemented here:

- CAR-T mask: ``distance > threshold_um``; target mask: ``distance < -threshold_um``,
  with ``threshold_um`` half the voxel pitch (the smallest voxel edge by default).
- IS mask: the overlap of the two masks, each dilated by 2 voxels.
- Cell instances: connected components (6-connectivity) of each mask; fragments
  smaller than a minimum volume are dropped (noise, debris, tile seams).

Thresholds, dilation and the label volume are defined in :mod:`deepis_rt.core.labels` (shared by
every layer) and re-exported here; the cell instances are the analysis's own.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage as ndi

from deepis_rt.core.labels import (
    CROSS,
    LABEL_BACKGROUND,
    LABEL_IS,
    LABEL_TARGET,
    LABEL_TCELL,
    cell_masks,
    default_threshold_um,
    dilate,
    is_mask,
    label_volume,
)

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
    labels, n = ndi.label(mask, structure=CROSS)
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
