"""Validation metrics of a signed distance map: Dice per class and IS area.

Self-contained (no dependency on :mod:`deepis_rt.analysis`), following the paper's
post-processing: CAR-T mask = distance > half the voxel pitch, target mask =
distance < -half the pitch (the pitch is the smallest voxel edge), IS region =
overlap of both masks, each dilated by 2 voxels.

IS area: the area of the interface surface between the two masks inside the IS region:
the zero level set of ``dist_to_cart - dist_to_target`` (the surface half-way between
the masks, smoothed by 1 voxel) triangulated by marching cubes at the anisotropic voxel
size, keeping the triangles that lie in the IS region where both masks are within one
coarsest voxel pitch (so a one-voxel gap left by the thresholds still counts as contact,
the opening rim of the contact does not).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = ["MIN_IS_AREA_UM2", "masks_from_distance", "dice", "is_area_from_masks", "frame_metrics", "summarize"]

_CROSS = ndi.generate_binary_structure(3, 1)

#: Relative IS-area errors are computed only where the true area is at least this (um^2);
#: below it (first seconds of contact) a relative error says little.
MIN_IS_AREA_UM2 = 5.0


def masks_from_distance(distance_um: np.ndarray, voxel_size_um: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(CAR-T mask, target mask) by the paper's thresholds at +-half the voxel pitch."""
    from deepis_rt.analysis.masks import cell_masks, default_threshold_um

    return cell_masks(distance_um, default_threshold_um(voxel_size_um))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks (1.0 when both are empty)."""
    sa, sb = int(a.sum()), int(b.sum())
    if sa + sb == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / (sa + sb)


def is_area_from_masks(cart: np.ndarray, target: np.ndarray, voxel_size_um: Sequence[float],
                       dilation_voxels: int = 2, max_gap_um: float | None = None,
                       smooth_voxels: float = 1.0) -> float:
    """IS area (um^2) between a CAR-T mask and a target mask; 0 when they do not meet."""
    from skimage.measure import marching_cubes

    if not cart.any() or not target.any():
        return 0.0
    region = ndi.binary_dilation(cart, _CROSS, iterations=dilation_voxels) & \
        ndi.binary_dilation(target, _CROSS, iterations=dilation_voxels)
    if not region.any():
        return 0.0
    sl = ndi.find_objects(region.astype(np.uint8))[0]
    pad = dilation_voxels + 2
    sl = tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(sl, cart.shape, strict=False))
    c, t, r = cart[sl], target[sl], region[sl]
    vs = tuple(float(v) for v in voxel_size_um)
    dc = ndi.distance_transform_edt(~c, sampling=vs)
    dt = ndi.distance_transform_edt(~t, sampling=vs)
    g = dc - dt
    if g.min() >= 0 or g.max() <= 0 or min(g.shape) < 2:
        return 0.0
    # smoothing removes most of the staircase of voxel masks, which would inflate the area
    g = ndi.gaussian_filter(g.astype(np.float32), sigma=smooth_voxels) if smooth_voxels > 0 else g.astype(np.float32)
    verts, faces, _, _ = marching_cubes(g, level=0.0, spacing=vs)
    tri = verts[faces]
    centroid = tri.mean(axis=1) / np.asarray(vs)
    idx = np.clip(np.rint(centroid).astype(int), 0, np.asarray(r.shape) - 1)
    # a one-voxel background gap between the masks (the +-half-pitch thresholds leave one where the
    # distance crosses zero) still counts as contact; wider gaps (the rim of the contact) do not
    gap = max(vs) if max_gap_um is None else float(max_gap_um)
    i0, i1, i2 = idx[:, 0], idx[:, 1], idx[:, 2]
    # only where the cells (nearly) touch: not the rim, where the dilated masks overlap across a gap
    keep = r[i0, i1, i2] & (np.maximum(dc[i0, i1, i2], dt[i0, i1, i2]) <= gap)
    if not keep.any():
        return 0.0
    tri = tri[keep]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    return float(area.sum())


def frame_metrics(pred_um: np.ndarray, true_um: np.ndarray, voxel_size_um: Sequence[float],
                  true_is_area_um2: float | None = None) -> dict[str, float]:
    """Dice per class and IS areas of one predicted distance map against the truth.

    ``is_area_true_um2`` is the same estimator on the true distance map, so that
    ``is_area_error`` measures the segmentation alone; when ``true_is_area_um2`` (the
    generator's geometric area) is given, ``is_area_error_geometric`` compares with it.
    """
    pc, pt = masks_from_distance(pred_um, voxel_size_um)
    tc, tt = masks_from_distance(true_um, voxel_size_um)
    a_pred = is_area_from_masks(pc, pt, voxel_size_um)
    a_true = is_area_from_masks(tc, tt, voxel_size_um)
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
