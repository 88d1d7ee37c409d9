"""IS contact area from the sub-voxel information in a signed distance map.

The network's map carries, inside each cell, the distance (um) to that cell's
border: positive in the CAR-T cell, negative in the target, zero in the
background. Where the two cells touch, the map runs straight from + to -;
where they part, a zero band opens between them. The contact area is the area
of the surface where the gap between the two cells is zero.

The estimator (:func:`contact_surface`):

1. **Both cells' distance functions, extended outside.** ``phi_T`` = distance
   into the CAR-T cell (the map where it is positive) and, outside it, minus the
   distance to it, reconstructed from the map itself:
   ``phi_T(x) = max_y (d(y) - |x - y|)`` over CAR-T voxels ``y`` within a short
   reach (a grey dilation with a cone, :func:`scipy.ndimage.grey_dilation`).
   The ball of radius ``d(y)`` around ``y`` lies inside the cell, so this is the
   distance to the union of those balls -- sub-voxel accurate because it uses the
   map's values, not the mask. Same for the target (``phi_G`` from ``-d``).
2. **The mid-surface** ``phi_T = phi_G`` (equidistant from both cells; at the
   contact it is the contact surface itself, since there ``phi_T = -phi_G = d``)
   is meshed by marching cubes with the physical voxel spacing.
3. **The gap** ``Gamma = -(phi_T + phi_G)`` (the distance between the two
   surfaces, measured through the mid-surface) is interpolated at the mesh
   vertices. ``A(g)``, the area of the mesh where ``Gamma <= g``, is integrated
   exactly on the piecewise-linear mesh (each triangle clipped by the linear
   gap), for a fine ladder of ``g``.
4. **The rim.** Inside the contact ``Gamma`` is flat: ``g_ref``, the median gap on
   the faces in voxel cubes whose corners are all cell voxels of both kinds (the map
   runs from + to - directly), about 0 on exact maps; negative values (maps whose
   cells reach across the interface, as a network's smooth output does) count as 0,
   so the rim is where the reconstructed surfaces stop overlapping. Outside, ``Gamma`` grows with the opening
   angle of the two surfaces. Within about a voxel of the rim the voxel grid smears
   that kink, so ``A(g)`` just above ``g_ref`` is biased, whichever threshold one
   picks -- the reason counting voxels, or any fixed gap threshold, overestimates
   small contacts. Beyond the smear, the equivalent radius ``sqrt(A(g)/pi)`` grows
   linearly with ``g``; a straight line fitted there is extrapolated back to
   ``g_ref``: that is the contact radius, so the rim is located where the gap,
   continued inwards, closes.

Cells are in contact when their contact gap ``g_ref`` is at most
``touch_gap_um`` (default half the smallest voxel edge): two cells 0.2 um apart
on an exact map at 0.2 um voxels are not in contact. EDT-style maps (every
cell voxel carries at least about one voxel pitch: a distance transform of masks)
are first converted to distances to the voxel borders, so the same rules hold
for them: their cells touch when their masks touch.

Uncertainty (``area_err_um2``): one sigma, from the estimator's measured
behaviour (``benchmarks/is_area_phantoms.py``): a rim-position uncertainty
(a fraction of the voxel pitch, plus the map's noise divided by the gap's
opening rate) times the contact perimeter, a small relative term, and a floor.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage import measure

from deepis_rt.analysis.masks import dilate

log = logging.getLogger(__name__)

__all__ = ["ContactEstimate", "contact_surface", "gap_area_curve", "area_uncertainty_um2"]

#: uncertainty model (one sigma), calibrated on the phantoms of benchmarks/is_area_phantoms.py:
#: floor (um^2), relative term, rim position as a fraction of the mean voxel edge, noise gain
ERR_FLOOR_UM2 = 0.15
ERR_REL = 0.02
ERR_RIM_VOXELS = 0.12
ERR_NOISE_GAIN = 1.0
#: the rim fit: equivalent radii from the core's plus these many mean voxel edges (beyond the smear, before
#: the gap's curvature matters; chosen on two-sphere phantoms, validated on the others)
RIM_FIT_VOXELS = (1.25, 2.5)


@dataclass(frozen=True)
class ContactEstimate:
    """Result of :func:`contact_surface`.

    Attributes
    ----------
    area_um2 : float
        Contact area (0 when the cells do not touch).
    area_err_um2 : float
        One-sigma uncertainty of ``area_um2`` (0 when not in contact).
    gap_um : float
        The pair's contact gap ``g_ref`` (about 0 for touching cells; the closest
        approach when apart).
    rim_slope : float
        Opening rate of the gap at the rim (um of gap per um along the surface);
        NaN when the extrapolation could not be made.
    in_contact : bool
    """

    area_um2: float = 0.0
    area_err_um2: float = 0.0
    gap_um: float = math.inf
    rim_slope: float = math.nan
    in_contact: bool = False


def _cone(voxel_size_um: np.ndarray, reach_um: float) -> tuple[np.ndarray, np.ndarray]:
    r = [int(math.floor(reach_um / h + 1e-9)) for h in voxel_size_um]
    axes = [np.arange(-k, k + 1) * h for k, h in zip(r, voxel_size_um, strict=True)]
    off = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
    dist = np.linalg.norm(off, axis=-1)
    footprint = dist <= reach_um + 1e-9
    return footprint, np.where(footprint, -dist, 0.0)


def _extended_distance(inside: np.ndarray, depth: np.ndarray, voxel_size_um: np.ndarray, reach_um: float) -> np.ndarray:
    """``max_y (depth(y) - |x - y|)`` over ``inside`` voxels within ``reach_um``, clamped at ``-reach_um``."""
    footprint, structure = _cone(voxel_size_um, reach_um)
    src = np.where(inside, depth, np.float32(-4.0 * reach_um)).astype(np.float32)
    out = ndi.grey_dilation(src, footprint=footprint, structure=structure, mode="constant", cval=-4.0 * reach_um)
    return np.maximum(out, np.float32(-reach_um))


def _direct_faces(triangles: np.ndarray, voxel_size_um: np.ndarray, t_ext: np.ndarray, g_ext: np.ndarray) -> np.ndarray:
    """Faces lying in a voxel cube whose corners are all CAR-T or target, with both present."""
    corner = np.ones((2, 2, 2), dtype=bool)
    cells = ndi.minimum_filter(t_ext | g_ext, footprint=corner, origin=-1, mode="constant", cval=False)
    both = ndi.maximum_filter(t_ext, footprint=corner, origin=-1) & ndi.maximum_filter(g_ext, footprint=corner, origin=-1)
    cube = cells & both
    idx = np.floor(triangles.mean(axis=1) / voxel_size_um).astype(int)
    idx = np.clip(idx, 0, np.array(cube.shape) - 1)
    return cube[idx[:, 0], idx[:, 1], idx[:, 2]]


def _edt_like(distance: np.ndarray, cells: np.ndarray, h_min: float, noise_um: float) -> bool:
    """True for maps whose cells' border voxels all carry about one voxel pitch (EDT of masks)."""
    border = cells & ~ndi.binary_erosion(cells)
    if not border.any():
        return False
    return float(np.mean(np.abs(distance[border]) < 0.75 * h_min - 2.0 * noise_um)) < 0.05


def _edt_to_border_distance(d: np.ndarray, tcell: np.ndarray, target: np.ndarray,
                            voxel_size_um: np.ndarray) -> np.ndarray:
    """EDT-style values (distance to the nearest outside voxel centre) to distance to the voxel border.

    Subtracts, for each cell voxel, the distance from its centre to its own voxel's face
    along the direction of its nearest outside voxel (half a voxel, anisotropy included),
    so that both conventions put the cell border at the same place.
    """
    out = d.copy()
    for mask in (tcell, target):
        if not mask.any():
            continue
        _, idx = ndi.distance_transform_edt(mask, sampling=tuple(voxel_size_um), return_indices=True)
        pos = np.indices(mask.shape)
        vec = (idx - pos).astype(np.float32) * voxel_size_um[:, None, None, None].astype(np.float32)
        norm = np.sqrt((vec**2).sum(axis=0))
        with np.errstate(divide="ignore", invalid="ignore"):
            exit_um = np.min(0.5 * voxel_size_um[:, None, None, None] * norm / np.abs(vec), axis=0)
        half = np.where(np.isfinite(exit_um), exit_um, 0.5 * voxel_size_um.min()).astype(np.float32)
        shrink = np.sign(d) * np.maximum(np.abs(d) - half, 0.0)
        out = np.where(mask, shrink, out)
    return out.astype(np.float32)


def gap_area_curve(triangles: np.ndarray, gaps: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Area of a triangle mesh where a per-vertex linear field is ``<= level``, for each level.

    Parameters
    ----------
    triangles : ndarray, shape (F, 3, 3)
        Vertex coordinates (um).
    gaps : ndarray, shape (F, 3)
        The field at each triangle's vertices (linear inside the triangle).
    levels : ndarray, shape (L,)

    Returns
    -------
    ndarray, shape (L,)
        Exact areas (um^2) of the sub-level sets on the piecewise-linear mesh.
    """
    lv = np.asarray(levels, dtype=float)
    if len(triangles) == 0:
        return np.zeros(len(lv))
    cross = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    area = 0.5 * np.linalg.norm(cross, axis=1)
    g = np.sort(gaps, axis=1)
    g0, g1, g2 = g[:, 0], g[:, 1], g[:, 2]
    order = np.argsort(lv)
    sorted_lv = lv[order]
    # triangles entirely below a level count fully (cumulative sum over their largest vertex value)
    by_top = np.argsort(g2)
    cum = np.concatenate([[0.0], np.cumsum(area[by_top])])
    out_sorted = cum[np.searchsorted(g2[by_top], sorted_lv, side="right")]
    # triangles that a level cuts: only the (triangle, level) pairs with g0 < level < g2
    i0 = np.searchsorted(sorted_lv, g0, side="right")
    i2 = np.searchsorted(sorted_lv, g2, side="left")
    counts = np.maximum(i2 - i0, 0)
    if counts.sum():
        tri_idx = np.repeat(np.arange(len(area)), counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        lev_idx = np.repeat(i0, counts) + offsets
        L = sorted_lv[lev_idx]
        a0, a1, a2 = g0[tri_idx], g1[tri_idx], g2[tri_idx]
        with np.errstate(divide="ignore", invalid="ignore"):
            # a linear field's sub-level set in a triangle: a corner triangle, then its complement
            low = (L - a0) ** 2 / ((a1 - a0) * (a2 - a0))
            high = 1.0 - (a2 - L) ** 2 / ((a2 - a1) * (a2 - a0))
        frac = np.clip(np.nan_to_num(np.where(L <= a1, low, high), nan=1.0), 0.0, 1.0)
        out_sorted += np.bincount(lev_idx, weights=area[tri_idx] * frac, minlength=len(lv))
    out = np.empty(len(lv))
    out[order] = out_sorted
    return out


def area_uncertainty_um2(area_um2: float, voxel_size_um: Sequence[float], noise_um: float = 0.0,
                         rim_slope: float = math.nan) -> float:
    """One-sigma uncertainty of a contact area from the estimator's known behaviour.

    ``sqrt(floor^2 + (rel * A)^2 + (P * s_rim)^2)`` with the disc-equivalent
    perimeter ``P = 2 sqrt(pi A)`` and the rim-position uncertainty
    ``s_rim = ERR_RIM_VOXELS * mean voxel edge (+) ERR_NOISE_GAIN * noise / rim_slope``
    (added in quadrature; the noise term is dropped when the slope is unknown,
    and the slope is floored at 0.2).
    """
    if not area_um2 > 0:
        return 0.0
    h = float(np.mean(voxel_size_um))
    s_rim = ERR_RIM_VOXELS * h
    if noise_um > 0:
        slope = rim_slope if math.isfinite(rim_slope) else 0.5
        s_rim = math.hypot(s_rim, ERR_NOISE_GAIN * noise_um / max(slope, 0.2))
    perimeter = 2.0 * math.sqrt(math.pi * area_um2)
    return float(math.sqrt(ERR_FLOOR_UM2**2 + (ERR_REL * area_um2) ** 2 + (perimeter * s_rim) ** 2))


def contact_surface(
    tcell: np.ndarray,
    target: np.ndarray,
    distance: np.ndarray,
    voxel_size_um: Sequence[float],
    threshold_um: float,
    band_fraction: float = 0.05,
    noise_um: float = 0.0,
    touch_gap_um: float | None = None,
) -> ContactEstimate:
    """Contact area (and its uncertainty) between one CAR-T and one target cell.

    Parameters
    ----------
    tcell, target : ndarray of bool, shape (Z, Y, X)
        The two cells' masks, cropped to the region around their interface
        (a margin of 3 voxels around the paper's IS mask is enough).
    distance : ndarray, same shape
        The signed distance map (um) on the same crop; other cells zeroed.
    voxel_size_um : sequence of 3 floats
        Voxel size (Z, Y, X) in um.
    threshold_um : float
        The mask threshold ``t`` used to make the masks.
    band_fraction : float
        Voxels next to a mask join it when ``|distance| > band_fraction * t`` with
        its sign (restores the cells' true borders on exact maps, ignores noise on
        network output; :func:`~deepis_rt.analysis.analyze` sets it from the noise).
    noise_um : float
        Noise of the map (for the uncertainty).
    touch_gap_um : float, optional
        Largest contact gap counted as touching; default half the smallest voxel edge.

    Returns
    -------
    ContactEstimate
    """
    vs = np.asarray(voxel_size_um, dtype=float)
    if not tcell.any() or not target.any():
        return ContactEstimate()
    h_min, h_max = float(vs.min()), float(vs.max())
    touch = 0.5 * h_min if touch_gap_um is None else float(touch_gap_um)
    d = np.asarray(distance, dtype=np.float32)
    if _edt_like(d, tcell | target, h_min, noise_um):
        d = _edt_to_border_distance(d, tcell, target, vs)
    eps = band_fraction * threshold_um
    t_ext = tcell | (dilate(tcell, 1) & (d > eps) & ~target)
    g_ext = target | (dilate(target, 1) & (d < -eps) & ~t_ext)
    reach = max(2.0 * h_max, 4.0 * h_min)
    phi_t = _extended_distance(t_ext, d, vs, reach)
    phi_g = _extended_distance(g_ext, -d, vs, reach)
    valid = (phi_t > -reach) & (phi_g > -reach)
    if not valid.any():
        return ContactEstimate()
    mid = phi_t - phi_g
    if not (mid[valid].min() < 0.0 < mid[valid].max()):
        return ContactEstimate()
    try:
        verts, faces, _, _ = measure.marching_cubes(mid, 0.0, spacing=tuple(vs), mask=valid)
    except (ValueError, RuntimeError):
        return ContactEstimate()
    if len(faces) == 0:
        return ContactEstimate()
    gap_field = -(phi_t + phi_g)
    gv = ndi.map_coordinates(gap_field, (verts / vs).T, order=1, mode="nearest")
    tri, gf = verts[faces], gv[faces]
    face_gap = gf.mean(axis=1)
    cap = 1.6 * reach  # gaps beyond this are not resolved by the extension
    near = face_gap <= cap
    if not near.any():
        return ContactEstimate()
    tri, gf, face_gap = tri[near], gf[near], face_gap[near]
    # faces in cubes whose 8 corners are all cell voxels of both kinds: the map crosses from + to -
    # directly there, so these faces are inside the contact whatever the map's convention
    direct = _direct_faces(tri, vs, t_ext, g_ext)
    core_width = max(0.1 * h_min, 3.0 * noise_um)
    if direct.any():
        # where the two reconstructed surfaces overlap (negative gap: maps whose cells reach across the
        # interface, as a network's smooth output does) the cells touch; the rim is where the gap is 0
        g_ref = max(float(np.median(face_gap[direct])), 0.0)
    else:
        g_ref = float(np.percentile(face_gap, 5))
    g_core = g_ref + core_width
    # direct faces at the contact's own gap are certainly in contact: a lower bound for the area
    sure = direct & (face_gap <= g_core)
    r_direct = 0.0
    if sure.any():
        cross = np.cross(tri[sure, 1] - tri[sure, 0], tri[sure, 2] - tri[sure, 0])
        r_direct = math.sqrt(0.5 * float(np.linalg.norm(cross, axis=1).sum()) / math.pi)
    if g_ref > touch:
        return ContactEstimate(gap_um=g_ref)
    step = 0.005
    levels = g_ref + step * np.arange(0, int(math.ceil((cap - g_ref) / step)) + 1)
    area = gap_area_curve(tri, gf, levels)
    radius = np.sqrt(area / math.pi)
    r_core = float(np.interp(g_core, levels, radius))
    # beyond the grid's smear of the rim (about a voxel each side), the radius grows linearly with the gap
    h_mean = float(vs.mean())
    w1, w2 = r_core + RIM_FIT_VOXELS[0] * h_mean, r_core + RIM_FIT_VOXELS[1] * h_mean
    fit = (radius >= w1) & (radius <= w2)
    rim_slope = math.nan
    if fit.sum() >= 4 and np.ptp(levels[fit]) > 0:
        beta, alpha = np.polyfit(levels[fit] - g_ref, radius[fit], 1)
        if beta > 0:
            r0 = float(np.clip(alpha, 0.0, w1))
            rim_slope = 1.0 / float(beta)
        else:
            r0 = r_core
    else:
        # the mid-surface ends before the fit range (e.g. a cell cut by the field of view)
        r0 = r_core
    # the lower bound binds where the gap jumps by whole coarse voxels just outside the rim (EDT-style
    # maps with the contact along Z), which defeats the extrapolation
    r0 = max(r0, r_direct)
    a0 = math.pi * r0 * r0
    if a0 <= 0:
        return ContactEstimate(gap_um=g_ref)
    err = area_uncertainty_um2(a0, vs, noise_um, rim_slope)
    return ContactEstimate(area_um2=a0, area_err_um2=err, gap_um=g_ref, rim_slope=rim_slope, in_contact=True)
