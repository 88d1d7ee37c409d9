"""Stream fixtures: a runner whose 'network' is the identity, fed distance maps encoded as RI.

A tomogram ``RI0 + RI_PER_UM * distance`` (plausible RI, 1.43-1.55) normalised with
``ri_normalization = {offset: RI0, scale: RI_PER_UM}`` reaches the identity network as the
distance map itself, so a test controls exactly which cells and synapses the stream sees,
without training a model. RI_PER_UM is a power of two, so the round trip is exact up to float32
rounding of the sum (~1e-5 um, far from the half-voxel mask thresholds).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from deepis_rt.backends.base import Runner, as_numpy_batch
from deepis_rt.runtime import Segmenter

VOXEL = (0.5, 0.25, 0.25)
SHAPE = (32, 64, 64)
RI0 = 1.5
RI_PER_UM = 1.0 / 64


class IdentityRunner(Runner):
    name = "identity"

    def __init__(self, delay_s: float = 0.0) -> None:
        super().__init__()
        self.delay_s = delay_s

    def activate_impl(self) -> None:
        pass

    def infer_impl(self, batch):
        import time

        if self.delay_s:
            time.sleep(self.delay_s)
        return as_numpy_batch(batch).copy()

    def describe(self):
        return {"backend": self.name, "device": "cpu", "precision": "fp32"}


def make_segmenter(delay_s: float = 0.0) -> Segmenter:
    meta = {"voxel_size_um": list(VOXEL), "ri_normalization": {"offset": RI0, "scale": RI_PER_UM},
            "medium_ri": RI0, "tile_zyx": list(SHAPE)}
    return Segmenter(IdentityRunner(delay_s), meta)


def conjugate_distance(contact_radius_um: float, shift_um: float = 0.0) -> np.ndarray:
    """Signed distance map of a CAR-T sphere (r 3 um) and a target sphere (r 4.5 um).

    ``contact_radius_um`` > 0: the spheres overlap, split at their radical plane, with a contact
    disk of that radius; 0: they are 2 um apart (no synapse). ``shift_um`` moves both along X.
    """
    r1, r2 = 3.0, 4.5
    if contact_radius_um > 0:
        sep = np.sqrt(r1**2 - contact_radius_um**2) + np.sqrt(r2**2 - contact_radius_um**2)
    else:
        sep = r1 + r2 + 2.0
    zc, yc = SHAPE[0] * VOXEL[0] / 2, SHAPE[1] * VOXEL[1] / 2
    x1 = 4.0 + shift_um
    c1, c2 = np.array([zc, yc, x1]), np.array([zc, yc, x1 + sep])
    axes = [np.arange(n) * h for n, h in zip(SHAPE, VOXEL, strict=True)]
    p = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    plane = (sep**2 + r1**2 - r2**2) / (2 * sep)
    s = (p - c1)[..., 2] - plane
    in1 = (np.linalg.norm(p - c1, axis=-1) < r1) & (s < 0)
    in2 = (np.linalg.norm(p - c2, axis=-1) < r2) & (s >= 0)
    d = ndi.distance_transform_edt(in1, sampling=VOXEL) - ndi.distance_transform_edt(in2, sampling=VOXEL)
    return d.astype(np.float32)


def as_tomogram(distance: np.ndarray) -> np.ndarray:
    """The RI volume that :func:`make_segmenter`'s identity network turns into ``distance``."""
    return (RI0 + RI_PER_UM * distance).astype(np.float32)


def conjugate_tomogram(contact_radius_um: float, shift_um: float = 0.0) -> np.ndarray:
    """:func:`conjugate_distance` as a tomogram for :func:`make_segmenter`."""
    return as_tomogram(conjugate_distance(contact_radius_um, shift_um))


@pytest.fixture(scope="session")
def contact_series():
    """Contact radii per frame: apart, forming, growing, broken, re-formed (tomograms)."""
    radii = [0.0, 2.0, 2.6, 3.0, 0.0, 2.8]
    return radii, [conjugate_tomogram(r, shift_um=0.1 * i) for i, r in enumerate(radii)]
