"""Fields with conjugates that cross chunk borders, for the tests of deepis_rt.field."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

#: RI normalisation and a small tile: the fake runner's distance is 2 tanh((RI - 1.337) / 0.02)
META = {"voxel_size_um": [0.5, 0.25, 0.25], "ri_normalization": {"offset": 1.337, "scale": 0.02},
        "medium_ri": 1.337, "tile_zyx": [16, 32, 32]}
VOXEL_SIZE_UM = (0.5, 0.25, 0.25)


def conjugate_field(shape, centres, radius_vox=(4, 8, 8), seed=0):
    """RI with one CAR-T (RI above the medium) and one target (below) touching at each centre.

    The pairs lie along X, so contacts and cells fall wherever the centres put them (across chunk
    and block borders in the tests). A little smooth noise keeps the map from being exact.
    """
    zz, yy, xx = np.indices(shape, dtype=np.float32)
    rz, ry, rx = radius_vox
    tcell = np.zeros(shape, np.float32)
    target = np.zeros(shape, np.float32)
    for cz, cy, cx in centres:
        tcell += (((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx + rx - 1) / rx) ** 2 < 1)
        target += (((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx - rx + 1) / rx) ** 2 < 1)
    rng = np.random.default_rng(seed)
    target *= tcell == 0  # touching, not overlapping
    ri = 1.337 + 0.04 * ndi.gaussian_filter(np.minimum(tcell, 1) - np.minimum(target, 1), 0.5)
    ri += 0.001 * ndi.gaussian_filter(rng.standard_normal(shape), 1.0)
    return ri.astype(np.float32)
