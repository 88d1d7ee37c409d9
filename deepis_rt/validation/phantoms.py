"""Validation conjugates (CAR-T + target) with truth measured on a grid 3x finer than the output.

Written independently of the training generator (``deepis_rt.synth``): cells are implicit
bodies (:mod:`~deepis_rt.validation.shapes`), the contact is the zero set of a separate cut
surface, and every truth quantity is measured, not taken from the parameters:

* **labels** (0 background, 1 CAR-T, 2 target): the majority class of the 27 fine voxels
  (3 x 3 x 3) that make each output voxel;
* **distance** (um, positive in the CAR-T, negative in the target, 0 outside): the Euclidean
  distance transform of each cell on the fine grid (``scipy.ndimage.distance_transform_edt``),
  less half a fine voxel (distance to the border rather than to the nearest outside voxel
  centre), read at the output voxel centres;
* **IS area** (um^2): the area of the cut surface inside both bodies, integrated over points
  sampled on the cut every 0.02 um (:meth:`~deepis_rt.validation.shapes.Cut.surface_samples`);
* **RI**: the texture (:mod:`~deepis_rt.validation.texture`) averaged over the fine voxels
  (partial-volume effect at every border), then imaged by :mod:`~deepis_rt.validation.optics`.

Scenes (:func:`make_scene`):

``"spheres"``
    Two spheres (CAR-T 3.5-4.5 um, target 5-7 um radius) cut by one flat interface (the
    radical plane), contact radius as requested.
``"pressed"``
    Two ellipsoids with membrane ruffles pressed together; the interface is a spherical cap
    (radius of curvature 6-14 um) bulging into the target.
``"flattened"``
    A CAR-T spread on a large target: a superellipsoid (exponent 3-4) 1.6-2.4 um in half-height,
    its flat face cut by a plane.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from deepis_rt.validation.shapes import (
    Cut,
    PlaneCut,
    SphereCut,
    Superellipsoid,
    random_rotation,
    rotation_from_vector,
)
from deepis_rt.validation.texture import CellTexture, random_texture

__all__ = ["MEDIUM_RI", "FINE", "SCENE_KINDS", "Scene", "Truth", "make_scene", "render_truth", "contact_area_um2"]

MEDIUM_RI = 1.337
#: fine-grid factor per axis (odd, so that a fine voxel centre sits on every output voxel centre)
FINE = 3
SCENE_KINDS = ("spheres", "pressed", "flattened")
_SURFACE_STEP_UM = 0.02


@dataclass
class Scene:
    """One conjugate: two bodies, the cut between them, their textures and the output grid."""

    kind: str
    shape: tuple[int, int, int]
    voxel_size_um: tuple[float, float, float]
    tcell: Superellipsoid
    target: Superellipsoid
    cut: Cut
    tcell_texture: CellTexture
    target_texture: CellTexture
    seed: int

    def classify(self, points: np.ndarray) -> np.ndarray:
        """0 background, 1 CAR-T, 2 target at ``points`` (..., 3)."""
        side = self.cut.side(points)
        out = np.zeros(side.shape, np.uint8)
        out[self.target.contains(points) & (side >= 0)] = 2
        out[self.tcell.contains(points) & (side < 0)] = 1
        return out


@dataclass
class Truth:
    """What a scene is, measured on the fine grid (see module docstring)."""

    labels: np.ndarray  # uint8 (Z, Y, X): 0 background, 1 CAR-T, 2 target
    distance_um: np.ndarray  # float32 (Z, Y, X)
    ri_object: np.ndarray  # float32 (Z, Y, X): RI before imaging
    is_area_um2: float
    tcell_volume_um3: float
    target_volume_um3: float


def contact_area_um2(tcell: Superellipsoid, target: Superellipsoid, cut: Cut,
                     step_um: float = _SURFACE_STEP_UM) -> float:
    """Area of the cut surface inside both bodies (um^2), integrated on a ``step_um`` sampling."""
    # the contact lies inside the CAR-T body: a ball around its centre holds it
    extent = 1.15 * float(np.max(tcell.semi_axes))
    pts, area = cut.surface_samples(tcell.center, extent, step_um)
    inside = tcell.contains(pts) & target.contains(pts)
    return float(area[inside].sum())


def _signed_fine_distance(fine: np.ndarray, value: int, fine_vs: np.ndarray) -> np.ndarray:
    """EDT inside the cell on the fine grid (cropped to its box), less half a fine voxel; 0 outside."""
    out = np.zeros(fine.shape, np.float32)
    mask = fine == value
    boxes = ndi.find_objects(mask.astype(np.int8))
    if not boxes or boxes[0] is None:
        return out
    box = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(boxes[0], fine.shape, strict=True))
    m = mask[box]
    d = ndi.distance_transform_edt(m, sampling=tuple(fine_vs)).astype(np.float32)
    out[box] = np.where(m, np.maximum(d - np.float32(0.5 * fine_vs.min()), 0.0), 0.0)
    return out


def render_truth(scene: Scene) -> Truth:
    """Labels, signed distance, RI (before imaging), IS area and volumes of ``scene``."""
    vs = np.asarray(scene.voxel_size_um, float)
    fine_vs = vs / FINE
    shape = scene.shape
    # 1. the class at every output voxel centre, within the bodies' bounding boxes
    lo = np.minimum(_bounds(scene.tcell)[0], _bounds(scene.target)[0])
    hi = np.maximum(_bounds(scene.tcell)[1], _bounds(scene.target)[1])
    first = np.clip(np.floor(lo / vs).astype(int) - 1, 0, None)
    last = np.minimum(np.ceil(hi / vs).astype(int) + 2, shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(first, last, strict=True))
    centres = np.stack(np.meshgrid(*[np.arange(sl.start, sl.stop) * h for sl, h in zip(box, vs, strict=True)],
                                   indexing="ij"), axis=-1).astype(np.float32)
    coarse = np.zeros(shape, np.uint8)
    coarse[box] = scene.classify(centres)
    # 2. every voxel in a cell or next to a border is measured on its 27 fine sub-voxels
    changes = ndi.grey_dilation(coarse, size=3) != ndi.grey_erosion(coarse, size=3)
    todo = np.flatnonzero(changes | (coarse > 0))
    fine = np.repeat(np.repeat(np.repeat(coarse, FINE, 0), FINE, 1), FINE, 2)
    counts = np.zeros((3,) + shape, np.int16)
    counts[0] = FINE**3 * (coarse == 0)
    counts[1] = FINE**3 * (coarse == 1)
    counts[2] = FINE**3 * (coarse == 2)
    ri = np.zeros(shape, np.float32)
    sub = (np.stack(np.meshgrid(*[np.arange(FINE)] * 3, indexing="ij"), axis=-1).reshape(-1, 3) - FINE // 2)
    sub_um = (sub * fine_vs).astype(np.float32)
    scale_t = float(np.min(scene.tcell.semi_axes))
    scale_g = float(np.min(scene.target.semi_axes))
    for chunk in np.array_split(todo, max(1, len(todo) // 20000)):
        idx = np.stack(np.unravel_index(chunk, shape), axis=-1)
        pts = (idx * vs).astype(np.float32)[:, None, :] + sub_um[None]
        lab = scene.classify(pts)
        dri = np.zeros(lab.shape, np.float32)
        for value, body, tex, scale in ((1, scene.tcell, scene.tcell_texture, scale_t),
                                        (2, scene.target, scene.target_texture, scale_g)):
            sel = lab == value
            if sel.any():
                p = pts[sel]
                dri[sel] = tex.contrast(p, body.level(p), scale)
        ri.flat[chunk] = dri.mean(axis=1)
        for c in range(3):
            counts[c].flat[chunk] = (lab == c).sum(axis=1)
        f = (FINE * idx)[:, None, :] + (sub + FINE // 2)[None]
        fine[f[..., 0], f[..., 1], f[..., 2]] = lab
    labels = np.argmax(counts, axis=0).astype(np.uint8)
    centre = (slice(FINE // 2, None, FINE),) * 3
    distance = (_signed_fine_distance(fine, 1, fine_vs)[centre] - _signed_fine_distance(fine, 2, fine_vs)[centre])
    fine_voxel = float(np.prod(fine_vs))
    return Truth(
        labels=labels,
        distance_um=distance.astype(np.float32),
        ri_object=(ri + np.float32(MEDIUM_RI)).astype(np.float32),
        is_area_um2=contact_area_um2(scene.tcell, scene.target, scene.cut),
        tcell_volume_um3=float((fine == 1).sum()) * fine_voxel,
        target_volume_um3=float((fine == 2).sum()) * fine_voxel,
    )


def _bounds(body: Superellipsoid) -> tuple[np.ndarray, np.ndarray]:
    """A box (um) that holds the body (its largest semi-axis, plus 10 % for ruffles and exponents)."""
    reach = 1.1 * float(np.max(body.semi_axes))
    return body.center - reach, body.center + reach


def _support(body: Superellipsoid, direction: np.ndarray) -> float:
    """Distance from an ellipsoid's centre to its tangent plane with normal ``direction``."""
    m = body.rotation @ np.diag(body.semi_axes**2) @ body.rotation.T
    return float(math.sqrt(direction @ m @ direction))


def _ruffles(rng: np.random.Generator, amplitude: float) -> tuple:
    out = []
    for _ in range(4):
        k = rng.normal(size=3)
        k *= rng.uniform(2.0, 5.0) / np.linalg.norm(k)
        out.append((amplitude * rng.uniform(0.3, 1.0) / 2.5, k, rng.uniform(0, 2 * math.pi)))
    return tuple(out)


def _place(kind: str, field_center: np.ndarray, contact_radius_um: float, rng: np.random.Generator):
    """The two bodies and the cut, with the contact's equivalent radius as requested (bisection)."""
    u = rng.normal(size=3)
    u[0] *= 0.5  # contacts mostly lateral, as on a coverslip, but any orientation occurs
    u /= np.linalg.norm(u)
    if kind == "flattened":
        # spread on its target: the contact normal is the CAR-T's short axis, near the optical axis
        tilt = rng.normal(scale=0.3, size=2)
        u = np.array([1.0, tilt[0], tilt[1]]) * (1.0 if rng.uniform() < 0.5 else -1.0)
        u /= np.linalg.norm(u)
        half_height = rng.uniform(1.6, 2.4)
        # the flat face is the contact: a spread face hovering over its target would adhere to it
        spread = contact_radius_um + rng.uniform(0.6, 1.2)
        t_axes = np.array([spread * rng.uniform(0.95, 1.05), spread * rng.uniform(0.95, 1.05), half_height])
        tcell = Superellipsoid(np.zeros(3), t_axes, rotation_from_vector(u), exponent=float(rng.uniform(3.0, 4.0)))
        g_axes = np.array([rng.uniform(6.5, 8.0), rng.uniform(6.5, 8.0), rng.uniform(5.0, 6.0)])
        target = Superellipsoid(np.zeros(3), g_axes, rotation_from_vector(u))
    else:
        r1 = max(rng.uniform(3.5, 4.5), 1.15 * contact_radius_um)
        r2 = rng.uniform(5.0, 7.0)
        if kind == "spheres":
            t_axes, g_axes = np.full(3, r1), np.full(3, r2)
            t_rot = g_rot = np.eye(3)
            ruff_t = ruff_g = ()
        else:
            t_axes = r1 * rng.uniform(0.85, 1.2, 3)
            g_axes = r2 * rng.uniform(0.85, 1.15, 3)
            t_rot, g_rot = random_rotation(rng), random_rotation(rng)
            ruff_t, ruff_g = _ruffles(rng, 0.04), _ruffles(rng, 0.03)
        tcell = Superellipsoid(np.zeros(3), t_axes, t_rot, ruffles=ruff_t)
        target = Superellipsoid(np.zeros(3), g_axes, g_rot, ruffles=ruff_g)
    curvature_radius = rng.uniform(6.0, 14.0) if kind == "pressed" else math.inf
    origin = field_center + rng.uniform(-0.4, 0.4, 3)

    def build(depth: float):
        if kind == "spheres":
            a = depth  # the contact radius itself
            p1 = math.sqrt(tcell.semi_axes[0] ** 2 - a * a)
            p2 = math.sqrt(target.semi_axes[0] ** 2 - a * a)
            t = Superellipsoid(origin - u * p1, tcell.semi_axes, tcell.rotation)
            g = Superellipsoid(origin + u * p2, target.semi_axes, target.rotation)
            return t, g, PlaneCut(origin, u)
        # each body reaches ``depth`` past the cut's apex into the other one
        h_t, h_g = _support(tcell, u), _support(target, -u)
        t = Superellipsoid(origin - u * (h_t - depth), tcell.semi_axes, tcell.rotation, tcell.exponent, tcell.ruffles)
        g = Superellipsoid(origin + u * (h_g - depth), target.semi_axes, target.rotation, target.exponent,
                           target.ruffles)
        cut = PlaneCut(origin, u) if kind == "flattened" else SphereCut(origin - u * curvature_radius,
                                                                         curvature_radius)
        return t, g, cut

    want = math.pi * contact_radius_um**2
    if kind == "spheres":
        return build(contact_radius_um)
    lo, hi = 0.0, 0.9 * float(np.min(tcell.semi_axes))
    for _ in range(14):
        mid = 0.5 * (lo + hi)
        t, g, cut = build(mid)
        if contact_area_um2(t, g, cut, step_um=0.08) < want:
            lo = mid
        else:
            hi = mid
    return build(0.5 * (lo + hi))


def make_scene(kind: str, contact_radius_um: float, voxel_size_um, seed: int,
               field_um: tuple[float, float, float] = (24.0, 28.0, 28.0)) -> Scene:
    """A random conjugate of ``kind`` (see :data:`SCENE_KINDS`) with the requested contact radius.

    Parameters
    ----------
    kind : {"spheres", "pressed", "flattened"}
    contact_radius_um : float
        Equivalent radius ``sqrt(A / pi)`` of the contact (1.2-4.5 um is the validated range).
    voxel_size_um : sequence of 3 floats
        Output voxel size (Z, Y, X).
    seed : int
        Everything random (orientation, shapes, texture) is drawn from it.
    field_um : 3 floats
        Field of view (Z, Y, X); the conjugate is centred in it.
    """
    if kind not in SCENE_KINDS:
        raise ValueError(f"validation | scene kind {kind!r}: expected one of {', '.join(SCENE_KINDS)}")
    vs = tuple(float(v) for v in voxel_size_um)
    shape = tuple(int(round(f / h)) for f, h in zip(field_um, vs, strict=True))
    rng = np.random.default_rng(seed)
    center = np.array([(n - 1) * h / 2 for n, h in zip(shape, vs, strict=True)])
    tcell, target, cut = _place(kind, center, float(contact_radius_um), rng)
    return Scene(kind=kind, shape=shape, voxel_size_um=vs, tcell=tcell, target=target, cut=cut,
                 tcell_texture=random_texture(tcell, "tcell", rng),
                 target_texture=random_texture(target, "target", rng), seed=seed)
