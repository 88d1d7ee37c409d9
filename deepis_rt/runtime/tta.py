"""Test-time augmentation: the network run on mirrored copies of a tomogram.

The four flips of the lateral axes (none, Y, X, Y and X) are symmetries of both the optics and
the sample: the holotomograph's transfer function is rotationally symmetric about the optical
axis, and a mirrored field of view is as plausible as the original. The axial axis is left alone:
the missing cone and the coverslip below the cells make "up" and "down" different, so a Z flip
would show the network a sample it may never have seen (a cell hanging from the coverslip) and
double the cost for an answer about something else. Each flip keeps the volume's shape, so every
flip goes through the same tile plan as the original.

The distance maps of the flips (mirrored back) are averaged into the map the analysis uses; how
far they differ is the network's own uncertainty (see :mod:`deepis_rt.analysis.flips`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["FLIP_AXES", "flip", "mean_of_flips"]

#: the axes each test-time flip mirrors, (Z, Y, X) numbering; the first is the identity
FLIP_AXES: tuple[tuple[int, ...], ...] = ((), (1,), (2,), (1, 2))


def flip(volume: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """``volume`` mirrored along ``axes`` (a view; the same call mirrors it back)."""
    return np.flip(volume, axes) if axes else volume


def mean_of_flips(outputs: list[np.ndarray]) -> np.ndarray:
    """The voxel-wise mean of distance maps already mirrored back to the input's orientation."""
    total = np.zeros(outputs[0].shape, np.float32)
    for out in outputs:
        total += out
    total /= np.float32(len(outputs))
    return total
