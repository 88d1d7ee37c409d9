"""Validation metrics of a signed distance map: Dice per class and IS area.

Masks follow the paper's post-processing (:mod:`deepis_rt.analysis.masks`): CAR-T mask =
distance > half the voxel pitch, target mask = distance < -half the pitch (the pitch is the
smallest voxel edge).

IS area: measured by the product's own estimator, :func:`deepis_rt.analysis.analyze` (the
number ``synapses.csv`` reports; method and bias in ``docs/analysis.md``), summed over the
synapses of the frame, so that a validation figure is exactly what a user of the checkpoint
would read.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from deepis_rt.analysis import analyze
from deepis_rt.core.labels import cell_masks, default_threshold_um
from deepis_rt.core.metrics import dice

__all__ = ["MIN_IS_AREA_UM2", "masks_from_distance", "dice", "is_area_um2", "frame_metrics", "summarize"]

#: Relative IS-area errors are computed only where the true area is at least this (um^2);
#: below it (first seconds of contact) a relative error says little.
MIN_IS_AREA_UM2 = 5.0


def masks_from_distance(distance_um: np.ndarray, voxel_size_um: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(CAR-T mask, target mask) by the paper's thresholds at +-half the voxel pitch."""
    return cell_masks(distance_um, default_threshold_um(voxel_size_um))


def is_area_um2(distance_um: np.ndarray, voxel_size_um: Sequence[float]) -> float:
    """Total IS contact area (um^2) in a signed distance map, as ``synapses.csv`` reports it.

    The sum of ``is_area_um2`` over the synapses found by :func:`deepis_rt.analysis.analyze`
    (one estimator for training, evaluation and the product); 0 when the cells do not touch.
    """
    return float(sum(s.is_area_um2 for s in analyze(distance_um, None, voxel_size_um).synapses))


def frame_metrics(pred_um: np.ndarray, true_um: np.ndarray, voxel_size_um: Sequence[float],
                  true_is_area_um2: float | None = None) -> dict[str, float]:
    """Dice per class and IS areas of one predicted distance map against the truth.

    ``is_area_true_um2`` is the same estimator (:func:`is_area_um2`) on the true distance map,
    so that ``is_area_error`` measures the segmentation alone; when ``true_is_area_um2`` (the
    generator's exact contact area) is given, ``is_area_error_geometric`` compares with it:
    that is the error a user reads in ``synapses.csv``.
    """
    pc, pt = masks_from_distance(pred_um, voxel_size_um)
    tc, tt = masks_from_distance(true_um, voxel_size_um)
    a_pred = is_area_um2(pred_um, voxel_size_um)
    a_true = is_area_um2(true_um, voxel_size_um)
    out = {
        "dice_cart": dice(pc, tc),
        "dice_target": dice(pt, tt),
        "is_area_pred_um2": a_pred,
        "is_area_true_um2": a_true,
        "is_area_error": abs(a_pred - a_true) / a_true if a_true >= MIN_IS_AREA_UM2 else float("nan"),
    }
    if true_is_area_um2 is not None:
        g = float(true_is_area_um2)
        out["is_area_geometric_um2"] = g
        out["is_area_error_geometric"] = abs(a_pred - g) / g if g >= MIN_IS_AREA_UM2 else float("nan")
    return out


def summarize(rows: list[dict[str, float]]) -> dict[str, float]:
    """Means of Dice, medians of IS-area errors (over frames with contact), counts."""
    if not rows:
        return {}

    def finite(key: str) -> np.ndarray:
        v = np.array([r.get(key, np.nan) for r in rows], dtype=float)
        return v[np.isfinite(v)]

    out: dict[str, float] = {"frames": len(rows)}
    for key in ("dice_cart", "dice_target"):
        v = finite(key)
        out[f"{key}_mean"] = float(v.mean()) if v.size else float("nan")
        out[f"{key}_min"] = float(v.min()) if v.size else float("nan")
    for key in ("is_area_error", "is_area_error_geometric"):
        v = finite(key)
        if v.size:
            out[f"{key}_median"] = float(np.median(v))
            out[f"{key}_p90"] = float(np.percentile(v, 90))
            out[f"{key}_frames"] = int(v.size)
    return out
