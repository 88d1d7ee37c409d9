"""Agreement of two segmentations: Dice of masks and the error between distance maps.

Training validation, the benchmark's accuracy columns, export parity and the reduced-precision
parity report all judge a distance map against a reference with these two functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["dice", "DistanceErrors", "distance_errors"]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks; 1.0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


@dataclass(frozen=True)
class DistanceErrors:
    """Absolute error of a distance map against a reference, in um (0 for empty maps)."""

    #: Largest |test - reference|.
    max_abs_um: float
    #: Median |test - reference|.
    median_abs_um: float
    #: 99th percentile of |test - reference| (numpy's linear interpolation).
    p99_abs_um: float
    #: Largest |reference|: the scale against which relative tolerances are set.
    ref_max_abs_um: float


def distance_errors(reference: np.ndarray, test: np.ndarray) -> DistanceErrors:
    """Errors of ``test`` against ``reference`` (same shape, finite), computed in float64.

    Raises
    ------
    ValueError
        The shapes differ.
    """
    ref = np.asarray(reference, dtype=np.float64)
    err = np.abs(np.asarray(test, dtype=np.float64) - ref) if ref.shape == np.shape(test) else None
    if err is None:
        raise ValueError(f"distance map of shape {np.shape(test)} differs from the reference {ref.shape}")
    if not err.size:
        return DistanceErrors(0.0, 0.0, 0.0, 0.0)
    return DistanceErrors(
        max_abs_um=float(err.max()),
        median_abs_um=float(np.median(err)),
        p99_abs_um=float(np.percentile(err, 99)),
        ref_max_abs_um=float(np.abs(ref).max()),
    )
