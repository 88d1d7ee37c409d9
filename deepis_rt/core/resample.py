"""Resampling a volume to another grid (inputs to the model's voxel size, maps back to the input's)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from deepis_rt.errors import InputError

__all__ = ["resample"]


def resample(volume: np.ndarray, shape: Sequence[int], order: int = 1) -> np.ndarray:
    """Resample ``volume`` to exactly ``shape`` (float32), voxel edges aligned (``grid_mode=True``).

    Linear interpolation (``order=1``) keeps distances and RI values within their input range.
    """
    from scipy import ndimage

    shape = tuple(int(s) for s in shape)
    if tuple(volume.shape) == shape:
        return np.asarray(volume, dtype=np.float32)
    zoom = [s / n for s, n in zip(shape, volume.shape, strict=False)]
    out = ndimage.zoom(
        np.asarray(volume, dtype=np.float32), zoom, output=np.float32, order=order, mode="nearest", grid_mode=True
    )
    if out.shape != shape:  # zoom rounds; make sure the caller gets what it asked for
        raise InputError(f"resample: got shape {out.shape}, expected {shape}")
    return out
