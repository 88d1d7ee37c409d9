"""The IS area of each synapse in each test-time flip, and the uncertainty it adds.

With test-time augmentation the network sees mirrored copies of a tomogram
(:mod:`deepis_rt.runtime.tta`); each copy's distance map is analysed on its own, and its synapses
are matched to those of the averaged map by the cells they join (the cells that share the most
voxels). A synapse missing from a flip counts there with area 0: that flip saw no contact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["flip_areas_um2", "area_sigma_with_flips_um2"]


def _cell_map(reference: np.ndarray, other: np.ndarray) -> dict[int, int]:
    """For each cell id of ``other``, the id of the ``reference`` cell it overlaps most."""
    both = (reference > 0) & (other > 0)
    if not both.any():
        return {}
    ref, oth = reference[both].astype(np.int64), other[both].astype(np.int64)
    pairs, counts = np.unique(oth * (int(ref.max()) + 1) + ref, return_counts=True)
    best: dict[int, tuple[int, int]] = {}
    for key, n in zip(pairs.tolist(), counts.tolist(), strict=True):
        o, r = divmod(key, int(ref.max()) + 1)
        if n > best.get(o, (0, 0))[1]:
            best[o] = (r, n)
    return {o: r for o, (r, _) in best.items()}


def flip_areas_um2(reference, flips: Sequence) -> list[list[float]]:
    """Per synapse of ``reference``, its IS area (um^2) in each analysed flip.

    Parameters
    ----------
    reference : FrameAnalysis
        The analysis of the averaged distance map.
    flips : sequence of FrameAnalysis
        The analyses of each flip's distance map (mirrored back to the input's orientation).

    Returns
    -------
    list of list of float
        ``[synapse][flip]``; a synapse that a flip did not find has area 0 there (two synapses of a
        flip that join the same reference cells add up).
    """
    areas = [[0.0] * len(flips) for _ in reference.synapses]
    index = {(s.tcell_id, s.target_id): k for k, s in enumerate(reference.synapses)}
    for f, flipped in enumerate(flips):
        mapping = _cell_map(np.asarray(reference.cell_labels), np.asarray(flipped.cell_labels))
        for s in flipped.synapses:
            k = index.get((mapping.get(s.tcell_id), mapping.get(s.target_id)))
            if k is not None:
                areas[k][f] += float(s.is_area_um2)
    return areas


def area_sigma_with_flips_um2(model_sigma_um2: float, flip_areas: Sequence[float]) -> float:
    """One-sigma IS-area uncertainty with the network's own: the estimator's sigma and the spread
    (sample standard deviation) of the area across flips, in quadrature.

    The flips are not independent measurements (one network, one tomogram), so the spread is not
    divided by sqrt(number of flips): it stands for how much one pass of the network may be off.
    A missing model sigma (NaN) leaves the spread alone; fewer than two flips add nothing.
    """
    areas = np.asarray(flip_areas, dtype=float)
    spread = float(np.std(areas, ddof=1)) if areas.size >= 2 else 0.0
    if not math.isfinite(model_sigma_um2):
        return spread if areas.size >= 2 else math.nan
    return math.hypot(float(model_sigma_um2), spread)
