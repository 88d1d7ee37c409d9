"""IS contact area between two cells, and its uncertainty.

The contact area is the area of the surface where the CAR-T and the target cell touch. It is
measured on the two cells' **bisector** -- the surface as far from one cell as from the other --
with the local gap between the cells read on it (:func:`contact_surface`):

1. **Cells.** The masks (the map thresholded at +-t, as the paper segments), each joined by the
   voxels next to it where the map still has its sign above the noise (``|d| > band_fraction * t``).
2. **Each cell's signed distance.** Every cell voxel ``c`` at depth ``d(c)`` (the map's value: its
   distance to the cell's border) carries a ball of that radius inside the cell; the envelope
   ``psi(x) = max_c (d(c) - |x - c|)`` (a grey dilation with a cone) is the cell's signed distance,
   exact inside and following a smooth border to a fraction of a voxel outside. It keeps what the
   masks lose: a contact whose interface lies on a row of voxel centres leaves that row at ``d = 0``,
   in neither mask, yet both cells' distances are 0 there. Only noise-free distance maps are read
   so. A map of voxel masks (a distance transform, whose border voxels all lie a voxel pitch deep)
   says only on which voxel a border lies, and a network's map (noisy) under-reads the distances next
   to the interface, which parts the cells early (-40 % on the bundled model's maps of a synthetic
   time-lapse); on both the masks are smoothed (Gaussian, ``SMOOTH_VOXELS``) and the gap is read from
   their profile (:func:`_mesh_gap_masks`).
3. **Bisector and gap.** The surface ``psi_T = psi_G`` is meshed by marching cubes with the physical
   spacing, where both cells are within reach; the gap between the cells on it is
   ``-(psi_T + psi_G)``: 0 in the contact, growing with the opening angle beyond its rim. ``A(g)``,
   the mesh area where the gap is ``<= g``, is integrated exactly on the piecewise-linear mesh
   (:func:`gap_area_curve`).
4. **Rim.** The contact's own gap ``g_ref`` is the median gap on faces between voxels of both cells
   (about 0). Beyond the rim the equivalent radius ``r(g) = sqrt(A(g) / pi)`` grows linearly with
   ``g``; a line fitted to ``r(g)`` for ``g`` between ``RIM_FIT_VOXELS`` voxel pitches (along the
   contact's normal) above ``g_ref`` is extrapolated back to ``g_ref``: the contact radius ``r0``,
   ``area = pi r0^2``. A fixed threshold on the gap would take in a rim whose width depends on the
   opening angle (+30 % and more at small contacts).
5. **In contact or not.** The cells touch when ``g_ref <= touch_gap_um`` (half the smallest voxel
   edge): two cells a voxel apart are not in contact.

Uncertainty (:func:`area_uncertainty_um2`, one sigma), in two parts:

- **the estimator's own**, on any map: a relative term and the rim's position, a fraction of a
  voxel, times the perimeter. Fitted on noise-free maps (exact and voxel-mask distance maps), where
  it is all there is.
- **the network's**, added on a network's map (a map with background noise): where a network puts
  the rim is uncertain by about a voxel divided by the opening rate of the gap at the rim
  (``rim_slope``) -- a contact whose surfaces part slowly (a small contact between large cells, a
  flat cell on a flat target) has a poorly defined rim, and a network fills the narrow wedge around
  it -- plus the map's noise over the same rate, and a relative term for how well the network
  segments the cells at all.

Both parts' constants are fitted end to end (RI -> network -> analyze) on one set of validation
scenes (``benchmarks/is_area_validation.py``, which prints the fitted values) and checked on a
disjoint one. The network's part belongs to a checkpoint: a checkpoint carries its own in
``meta["uncertainty"]["network"]`` (:class:`NetworkError`); the module's ``ERR_NET_*`` values, the
bundled checkpoint's, stand in for a checkpoint that carries none. Test-time augmentation widens it
with the spread of the areas across flips (:func:`deepis_rt.analysis.flips.area_sigma_with_flips_um2`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from scipy import special
from skimage import measure

from deepis_rt.analysis.masks import dilate

log = logging.getLogger(__name__)

__all__ = [
    "ContactEstimate",
    "contact_surface",
    "gap_area_curve",
    "area_uncertainty_um2",
    "NetworkError",
    "DEFAULT_NETWORK_ERROR",
]

#: Gaussian smoothing of the masks of voxel-mask maps (voxels along each axis)
SMOOTH_VOXELS = 0.6
#: the rim fit: gaps from g_ref plus these many voxel pitches along the contact's normal
RIM_FIT_VOXELS = (0.5, 2.0)
#: the gap (voxel pitches above g_ref) at which the rim's ambiguity is read
AMBIGUITY_GAP_VOXELS = 0.5
#: uncertainty (one sigma), fitted by benchmarks/is_area_validation.py on its "fit" scenes.
#: The estimator's own (every map; fitted on the exact and voxel-mask maps): relative term, rim
#: position (fraction of the voxel pitch), floor (um^2)
ERR_REL = 0.02
ERR_RIM_VOXELS = 0.5
ERR_FLOOR_UM2 = 0.15
#: the network's, added on its maps: relative term, rim smear (voxels per unit opening rate), noise
#: gain, weight of the rim's ambiguity. These are the bundled checkpoint's (which also carries them,
#: :class:`NetworkError`); they stand in for a checkpoint that carries none
ERR_NET_REL = 0.0
ERR_NET_RESOLUTION_VOXELS = 0.75
ERR_NET_NOISE_GAIN = 1.0
ERR_NET_AMBIGUITY = 2.0


@dataclass(frozen=True)
class NetworkError:
    """The network's part of the IS-area uncertainty of one checkpoint (:func:`area_uncertainty_um2`).

    ``rel``: relative term; ``resolution_voxels``: rim smear in voxels per unit opening rate;
    ``noise_gain``: weight of the map's noise; ``ambiguity``: weight of the rim's ambiguity;
    ``fitted_on``: where the values come from (shown in ``summary.json``).
    """

    rel: float = 0.0
    resolution_voxels: float = 0.0
    noise_gain: float = 1.0
    ambiguity: float = 0.0
    fitted_on: str = ""

    def __post_init__(self) -> None:
        for name in ("rel", "resolution_voxels", "noise_gain", "ambiguity"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"uncertainty: network {name}={v!r} must be a finite number >= 0")

    @classmethod
    def from_meta(cls, meta: Any) -> NetworkError | None:
        """From a checkpoint's metadata (``meta["uncertainty"]["network"]``); None when it has none.

        A record that is there but malformed raises ``ValueError`` (never silently replaced)."""
        unc = meta.get("uncertainty") if hasattr(meta, "get") else None
        rec = unc.get("network") if hasattr(unc, "get") else None
        if rec is None:
            return None
        if not hasattr(rec, "get"):
            raise ValueError(f"uncertainty: meta['uncertainty']['network'] must be a mapping, got {rec!r}")
        try:
            return cls(float(rec["rel"]), float(rec["resolution_voxels"]), float(rec.get("noise_gain", 1.0)),
                       float(rec["ambiguity"]), str(rec.get("fitted_on", "")))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"uncertainty: meta['uncertainty']['network'] {dict(rec)!r} lacks or mistypes a "
                             f"field (rel, resolution_voxels, ambiguity): {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The form stored in ``meta["uncertainty"]["network"]``."""
        return {"rel": self.rel, "resolution_voxels": self.resolution_voxels, "noise_gain": self.noise_gain,
                "ambiguity": self.ambiguity, "fitted_on": self.fitted_on}


#: the module's values as a :class:`NetworkError`: for checkpoints that carry none
DEFAULT_NETWORK_ERROR = NetworkError(ERR_NET_REL, ERR_NET_RESOLUTION_VOXELS, ERR_NET_NOISE_GAIN, ERR_NET_AMBIGUITY,
                                     "not this checkpoint: the bundled deepis-lite checkpoint's values "
                                     "(deepis_rt.analysis.contact.ERR_NET_*)")

#: reach of each cell's signed distance: this many of the smallest voxel edges, at least
#: ``REACH_COARSE_VOXELS`` of the largest (two voxel steps along every axis: the rim fit reads gaps up
#: to 2.5 voxel pitches along the contact's normal)
REACH_VOXELS = 2.5
REACH_COARSE_VOXELS = 2.05
#: background noise (um) above which a map is a network's output, not a distance map
DISTANCE_MAP_NOISE_UM = 1e-3
#: opening rates below this are floored (a rim that does not open within the fit is no sharper)
MIN_RIM_SLOPE = 0.15


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
    rim_ambiguity_um2 : float
        ``|A(g_ref + 0.5 voxel) - area_um2|``: how much a fixed small gap threshold would differ.
    in_contact : bool
    normal_zyx : tuple of 3 floats or None
        Unit normal of the contact (Z, Y, X; its sign says nothing), None when not in contact.
    """

    area_um2: float = 0.0
    area_err_um2: float = 0.0
    gap_um: float = math.inf
    rim_slope: float = math.nan
    rim_ambiguity_um2: float = 0.0
    in_contact: bool = False
    normal_zyx: tuple[float, float, float] | None = None

    @property
    def tilt_from_optical_axis_deg(self) -> float:
        """Angle between the contact's normal and the Z (optical) axis: 0 for a contact facing it
        (one cell on top of the other), 90 for a contact seen edge-on; NaN without a normal."""
        if self.normal_zyx is None:
            return math.nan
        return math.degrees(math.acos(min(1.0, abs(float(self.normal_zyx[0])))))


def _direct_faces(triangles: np.ndarray, voxel_size_um: np.ndarray, t_ext: np.ndarray, g_ext: np.ndarray) -> np.ndarray:
    """Faces lying in a voxel cube whose corners are all CAR-T or target, with both present."""
    corner = np.ones((2, 2, 2), dtype=bool)
    cells = ndi.minimum_filter(t_ext | g_ext, footprint=corner, origin=-1, mode="constant", cval=False)
    both = ndi.maximum_filter(t_ext, footprint=corner, origin=-1) & ndi.maximum_filter(g_ext, footprint=corner, origin=-1)
    cube = cells & both
    idx = np.floor(triangles.mean(axis=1) / voxel_size_um).astype(int)
    idx = np.clip(idx, 0, np.array(cube.shape) - 1)
    return cube[idx[:, 0], idx[:, 1], idx[:, 2]]



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
                         rim_slope: float = math.nan, rim_ambiguity_um2: float = 0.0,
                         network: NetworkError | None = None) -> float:
    """One-sigma uncertainty of a contact area from what drives its error.

    The estimator's part, on every map: ``floor^2 + (ERR_REL A)^2 + (P h ERR_RIM_VOXELS)^2``
    with the disc-equivalent perimeter ``P = 2 sqrt(pi A)`` and ``h`` the mean voxel edge. On a
    network's map (``noise_um`` above :data:`DISTANCE_MAP_NOISE_UM`) the network's part is added,
    with the constants of ``network`` (default :data:`DEFAULT_NETWORK_ERROR`):
    ``(rel A)^2 + (P s_net)^2 + (ambiguity_weight ambiguity)^2`` with the rim's smear
    ``s_net = h resolution_voxels / slope (+) noise_gain noise / slope`` (``slope`` the gap's
    opening rate at the rim, floored at ``MIN_RIM_SLOPE``; 0.5 when unknown).
    """
    if not area_um2 > 0:
        return 0.0
    h = float(np.mean(voxel_size_um))
    perimeter = 2.0 * math.sqrt(math.pi * area_um2)
    var = ERR_FLOOR_UM2**2 + (ERR_REL * area_um2) ** 2 + (perimeter * h * ERR_RIM_VOXELS) ** 2
    if noise_um > DISTANCE_MAP_NOISE_UM:
        net = DEFAULT_NETWORK_ERROR if network is None else network
        slope = max(rim_slope if math.isfinite(rim_slope) else 0.5, MIN_RIM_SLOPE)
        s_net = math.hypot(h * net.resolution_voxels / slope, net.noise_gain * noise_um / slope)
        var += (net.rel * area_um2) ** 2 + (perimeter * s_net) ** 2 + (net.ambiguity * rim_ambiguity_um2) ** 2
    return float(math.sqrt(var))


def _ball_offsets(vs: np.ndarray, reach_um: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer voxel offsets within ``reach_um`` (K, 3) and their lengths in um (K,)."""
    k = np.ceil(reach_um / vs).astype(int)
    off = np.stack(np.meshgrid(*[np.arange(-n, n + 1) for n in k], indexing="ij"), axis=-1).reshape(-1, 3)
    dist = np.linalg.norm(off * vs, axis=1)
    keep = dist <= reach_um + 1e-9
    return off[keep], dist[keep]


def _cell_depth(inside: np.ndarray, depth_um: np.ndarray, vs: np.ndarray, reach_um: float,
                where: np.ndarray) -> np.ndarray:
    """One cell's signed distance (um, + inside) at the voxels ``where``, from the map's values inside it.

    Every cell voxel ``c`` at depth ``d(c)`` (its distance to the cell's border) carries a ball of
    that radius lying inside the cell, so at any point ``x`` the distance to the border is at least
    ``d(c) - |x - c|``; the envelope ``max_c (d(c) - |x - c|)`` (a grey dilation with a cone) is that
    bound: exact inside the cell and, outside, the distance to the union of the balls, which follows a
    smooth border to a fraction of a voxel. Values are clipped at ``-reach_um`` (also outside ``where``).
    """
    off, dist = _ball_offsets(vs, reach_um)
    pad = np.abs(off).max(axis=0)
    src = np.pad(np.where(inside, np.maximum(depth_um, 0.0), -reach_um).astype(np.float32),
                 [(int(n), int(n)) for n in pad], constant_values=-reach_um)
    idx = np.nonzero(where)
    flat = np.ravel_multi_index(tuple(i + int(n) for i, n in zip(idx, pad, strict=True)), src.shape)
    steps = np.ravel_multi_index(tuple((off + pad).T), src.shape) - np.ravel_multi_index(tuple(pad), src.shape)
    src = src.ravel()
    best = np.full(flat.shape, -reach_um, dtype=np.float32)
    for step, length in zip(steps.tolist(), dist.astype(np.float32).tolist(), strict=True):
        np.maximum(best, src[flat + step] - length, out=best)
    psi = np.full(inside.shape, -reach_um, dtype=np.float32)
    psi[idx] = best
    return psi


def _border_depth_um(inside: np.ndarray, depth_um: np.ndarray) -> float:
    """Smallest depth the map gives a cell's border voxels (0 on exact maps, a voxel pitch on EDT maps)."""
    border = inside & ~ndi.binary_erosion(inside, border_value=1)
    return float(depth_um[border].min()) if border.any() else 0.0


def _voxelised(t_ext: np.ndarray, g_ext: np.ndarray, d: np.ndarray, vs: np.ndarray) -> bool:
    """Whether the map is a distance transform of voxel masks: both cells' border voxels lie (about) a
    voxel pitch deep."""
    return min(_border_depth_um(t_ext, d), _border_depth_um(g_ext, -d)) >= 0.9 * float(vs.min())


def _mesh_gap(t_ext: np.ndarray, g_ext: np.ndarray, d: np.ndarray, vs: np.ndarray):
    """The two cells' bisector, meshed: triangles (F, 3, 3) and the gap between the cells at their vertices (F, 3).

    ``psi_T``, ``psi_G``: each cell's signed distance (:func:`_cell_depth`); the bisector is
    ``psi_T = psi_G`` (the interface where they touch) and the gap there ``-(psi_T + psi_G)``
    (0 in the contact, growing with the opening angle beyond its rim).
    """
    reach = max(REACH_VOXELS * float(vs.min()), REACH_COARSE_VOXELS * float(vs.max()))
    # only voxels within reach of both cells (and their neighbours, the corners of the cubes meshed
    # there) are needed; elsewhere each distance is below -reach
    within_t = ndi.distance_transform_edt(~t_ext, sampling=vs) <= reach + 1e-6
    within_g = ndi.distance_transform_edt(~g_ext, sampling=vs) <= reach + 1e-6
    where = dilate(within_t & within_g, 1)
    psi_t = _cell_depth(t_ext, d, vs, reach, where)
    psi_g = _cell_depth(g_ext, -d, vs, reach, where)
    near = (psi_t > -reach) & (psi_g > -reach)
    f = psi_t - psi_g
    if not near.any() or not (f[near].min() < 0.0 < f[near].max()):
        return None
    try:
        verts, faces, _, _ = measure.marching_cubes(f, 0.0, spacing=tuple(vs), mask=near)
    except (ValueError, RuntimeError):
        return None
    if len(faces) == 0:
        return None
    gap = ndi.map_coordinates(-(psi_t + psi_g), (verts / vs).T, order=1)
    return verts[faces], gap[faces]


def _mesh_gap_masks(t_ext: np.ndarray, g_ext: np.ndarray, vs: np.ndarray):
    """The same for voxel-mask maps, whose values carry no sub-voxel position: the bisector of the
    smoothed masks (Gaussian, ``SMOOTH_VOXELS``), ``s_T = s_G``, and the gap from their profile there
    (two half-spaces a gap ``g`` apart smoothed by ``sigma_n`` give ``s = Phi(-g / 2 sigma_n)`` on the
    mid-surface, ``sigma_n`` the smoothing along the surface normal)."""
    s_t = ndi.gaussian_filter(t_ext.astype(np.float32), SMOOTH_VOXELS, mode="constant", truncate=3.0)
    s_g = ndi.gaussian_filter(g_ext.astype(np.float32), SMOOTH_VOXELS, mode="constant", truncate=3.0)
    near = (s_t > 1e-4) & (s_g > 1e-4)
    f = s_t - s_g
    if not near.any() or not (f[near].min() < 0.0 < f[near].max()):
        return None
    try:
        verts, faces, normals, _ = measure.marching_cubes(f, 0.0, spacing=tuple(vs), mask=near)
    except (ValueError, RuntimeError):
        return None
    if len(faces) == 0:
        return None
    idx = (verts / vs).T
    s_mid = 0.5 * (ndi.map_coordinates(s_t, idx, order=1) + ndi.map_coordinates(s_g, idx, order=1))
    unit = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    # smoothing along the normal (um): the voxel-unit Gaussian is anisotropic in um
    sigma_n = np.sqrt((((unit * vs) * SMOOTH_VOXELS) ** 2).sum(axis=1))
    gap = -2.0 * sigma_n * special.ndtri(np.clip(s_mid, 1e-7, 0.5))
    return verts[faces], gap[faces]


def contact_surface(
    tcell: np.ndarray,
    target: np.ndarray,
    distance: np.ndarray,
    voxel_size_um: Sequence[float],
    threshold_um: float,
    band_fraction: float = 0.05,
    noise_um: float = 0.0,
    touch_gap_um: float | None = None,
    network_error: NetworkError | None = None,
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
        its sign (closes the zero band of exact maps, ignores noise on network
        output; :func:`~deepis_rt.analysis.analyze` sets it from the noise).
    noise_um : float
        Noise of the map (for the uncertainty).
    touch_gap_um : float, optional
        Largest contact gap counted as touching; default half the smallest voxel edge.
    network_error : NetworkError, optional
        The network's part of the uncertainty (default :data:`DEFAULT_NETWORK_ERROR`).

    Returns
    -------
    ContactEstimate
    """
    vs = np.asarray(voxel_size_um, dtype=float)
    if not tcell.any() or not target.any():
        return ContactEstimate()
    touch = 0.5 * float(vs.min()) if touch_gap_um is None else float(touch_gap_um)
    d = np.asarray(distance, dtype=np.float32)
    eps = band_fraction * threshold_um
    t_ext = tcell | (dilate(tcell, 1) & (d > eps) & ~target)
    g_ext = target | (dilate(target, 1) & (d < -eps) & ~t_ext)
    # the map's values are read as distances only on a noise-free map that is not a distance transform
    # of voxel masks (whose border voxels all lie a voxel pitch deep: its values say on which voxel a
    # border lies, not where in it); a network's map (noisy) under-reads the distances next to the
    # interface, which would part the cells early, so there the masks give the gap (and the map, noisy,
    # is not classified further)
    distances = noise_um <= DISTANCE_MAP_NOISE_UM and not _voxelised(t_ext, g_ext, d, vs)
    mesh = _mesh_gap(t_ext, g_ext, d, vs) if distances else _mesh_gap_masks(t_ext, g_ext, vs)
    if mesh is None:
        return ContactEstimate()
    tri, gaps = mesh
    face_gap = gaps.mean(axis=1)
    # faces in voxel cubes whose corners are all cell voxels of both kinds lie inside the contact
    direct = _direct_faces(tri, vs, t_ext, g_ext)
    g_ref = float(np.median(face_gap[direct])) if direct.any() else float(np.percentile(face_gap, 5))
    if g_ref > touch:
        return ContactEstimate(gap_um=g_ref)
    # the grid's pitch along the contact's normal sets the scale of the rim's smear (a contact facing
    # the coarse Z axis is resolved in steps of the Z voxel)
    faces_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    core = direct if direct.any() else face_gap <= g_ref + 0.1 * float(vs.min())
    normal = faces_n[core].sum(axis=0)
    norm = float(np.linalg.norm(normal))
    h = float(np.linalg.norm(normal / norm * vs)) if norm > 0 else float(vs.mean())
    unit = tuple(float(v) for v in normal / norm) if norm > 0 else None
    step = 0.005 * h / 0.25
    top = g_ref + (RIM_FIT_VOXELS[1] + 0.5) * h
    levels = g_ref + step * np.arange(0, int(math.ceil((top - g_ref) / step)) + 1)
    radius = np.sqrt(gap_area_curve(tri, gaps, levels) / math.pi)
    fit = (levels >= g_ref + RIM_FIT_VOXELS[0] * h) & (levels <= g_ref + RIM_FIT_VOXELS[1] * h)
    r_amb = float(np.interp(g_ref + AMBIGUITY_GAP_VOXELS * h, levels, radius))
    rim_slope = math.nan
    beta, alpha = np.polyfit(levels[fit] - g_ref, radius[fit], 1)
    if beta > 0:
        rim_slope = 1.0 / float(beta)
        # the radius, continued inwards, at the contact's own gap (never beyond the fit's first point)
        r0 = float(np.clip(alpha, 0.0, radius[fit][0]))
    else:
        # the mid-surface ends before the gap opens (e.g. a cell cut by the field of view)
        r0 = r_amb
    area = math.pi * r0 * r0
    if area <= 0:
        return ContactEstimate(gap_um=g_ref)
    ambiguity = abs(math.pi * r_amb * r_amb - area)
    err = area_uncertainty_um2(area, vs, noise_um, rim_slope, ambiguity, network_error)
    return ContactEstimate(area_um2=area, area_err_um2=err, gap_um=g_ref, rim_slope=rim_slope,
                           rim_ambiguity_um2=ambiguity, in_contact=True, normal_zyx=unit)
