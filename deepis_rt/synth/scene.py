"""One synthetic conjugate video: a CAR-T cell meeting a target cell.

Physics (choices documented here, values in um, s and RI units):

* **Cells.** CAR-T: irregular ellipsoid 7-9 um across (radius modulation ~6 %),
  cytoplasm RI 1.362-1.370, nucleus 65 % of the cell's axes, +0.006-0.012 RI,
  4-10 granules (radius 0.25-0.5 um, RI 1.375-1.39). Target (K562-like): 12-16 um across,
  cytoplasm RI 1.355-1.361, nucleus 60 % of the axes, +0.006-0.012, 5-15 granules.
  Smooth RI texture (+-0.0015) in both. Medium 1.337.
* **Approach and contact.** The CAR-T approaches the target along a random, mostly
  lateral direction ``n`` at 0.05-0.1 um/s until contact onset ``t_on``; 10 % of videos
  never make contact. After onset the contact (IS) is a flat disc whose area follows
  ``A(t) = A_max (t - t_on) / ((t - t_on) + tau_half)`` with A_max 30-80 um^2 and
  tau_half 20-60 s: the CAR-T spreads (lateral semi-axis grows, its thickness shrinks at
  constant ellipsoid volume) and both cells are cut by the contact plane so that each
  meets it in a disc of radius sqrt(A/pi). CAR-T granules polarise towards the IS.
  (The paper's A_max ~ 106 um^2 cannot be reached by a flat disc on an 8 um cell, so
  A_max is lower here; the kinetic law is the same.)
* **Drift.** The stage drifts 0.005-0.02 um/s in a random direction, plus +-0.05 um jitter.
* **Second cell.** 40 % of videos have a second cell (CAR-T or target) elsewhere in the
  field, never touching the pair.
* **Optics.** Anisotropic Gaussian OTF (sigma 0.12-0.2 um in Y/X, 0.35-0.6 um in Z) times a
  missing cone around k_z (|k_z| > 1.5 |k_r| attenuated to 40 %), then Gaussian noise
  (sigma 0.0004-0.001 RI).

The truth IS area is measured geometrically, not taken from A(t): the area of the
contact plane inside both cells (sampled on a 0.05 um grid), since the shapes' radius
modulation makes the real contact differ slightly from the ideal disc.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import fft as sfft
from scipy import ndimage as ndi

from deepis_rt.synth.geometry import CellShape, Grid, frame_with_axis, random_rotation

__all__ = ["MEDIUM_RI", "VideoParams", "RenderedFrame", "make_video", "render_frame"]

MEDIUM_RI = 1.337
CART, TARGET, SYNAPSE = 1, 2, 3


@dataclass
class Cell:
    kind: int  # CART or TARGET
    radius_um: float
    axes_scale: np.ndarray
    rotation: np.ndarray
    modulation: dict
    cyto_ri: float
    nucleus_dri: float
    nucleus_offset: np.ndarray  # in units of the cell's axes
    granules: np.ndarray  # (G, 5): local position in units of axes (3), radius um, RI
    texture_seed: int


@dataclass
class VideoParams:
    """Everything random about one video, drawn once from its seed."""

    seed: int
    grid: Grid
    frame_interval_s: float
    onset_s: float | None
    a_max_um2: float
    tau_half_s: float
    approach_um_s: float
    normal: np.ndarray
    pair_offset_um: np.ndarray
    drift_um_s: np.ndarray
    cart: Cell
    target: Cell
    second: Cell | None = None
    second_center_um: np.ndarray | None = None
    optics: dict = field(default_factory=dict)


@dataclass
class RenderedFrame:
    ri: np.ndarray
    labels: np.ndarray
    distance_um: np.ndarray
    truth: dict


def _cell(rng: np.random.Generator, kind: int) -> Cell:
    if kind == CART:
        radius = rng.uniform(3.5, 4.5)
        cyto = rng.uniform(1.362, 1.370)
        n_gran = int(rng.integers(4, 11))
        nuc_off = rng.normal(scale=0.08, size=3)
    else:
        radius = rng.uniform(6.0, 8.0)
        cyto = rng.uniform(1.355, 1.361)
        n_gran = int(rng.integers(5, 16))
        nuc_off = rng.normal(scale=0.1, size=3)
    gran = np.zeros((n_gran, 5))
    for g in range(n_gran):
        v = rng.normal(size=3)
        gran[g, :3] = v / np.linalg.norm(v) * rng.uniform(0.35, 0.75)
    gran[:, 3] = rng.uniform(0.25, 0.5, size=n_gran)
    gran[:, 4] = rng.uniform(1.375, 1.39, size=n_gran)
    return Cell(
        kind=kind,
        radius_um=radius,
        axes_scale=rng.uniform(0.9, 1.1, size=3),
        rotation=random_rotation(rng),
        modulation=CellShape.random_modulation(rng, 5, 0.06),
        cyto_ri=cyto,
        nucleus_dri=rng.uniform(0.006, 0.012),
        nucleus_offset=nuc_off,
        granules=gran,
        texture_seed=int(rng.integers(2**31)),
    )


def make_video(seed: int, shape: tuple[int, int, int], voxel_size_um: tuple[float, float, float],
               n_frames: int, kinetics: dict | None = None) -> VideoParams:
    """Draw the parameters of video ``seed`` (deterministic).

    ``kinetics`` prescribes some of the drawn values instead: any of ``a_max_um2``,
    ``tau_half_s``, ``onset_s`` (contact onset, s; None for no contact) and
    ``frame_interval_s``. Everything else is drawn as usual, so a prescribed video
    differs from the drawn one only in those values. A large ``a_max_um2`` (the
    paper's ~106 um^2) needs a target large enough for the contact disc: the target
    radius is raised to 1.15 x the disc radius when needed.
    """
    rng = np.random.default_rng([int(seed), 7919])
    grid = Grid(tuple(int(s) for s in shape), tuple(float(v) for v in voxel_size_um))  # type: ignore[arg-type]
    dt = rng.uniform(3.0, 8.0)
    duration = dt * max(n_frames - 1, 1)
    onset = None if rng.random() < 0.1 else rng.uniform(-0.3, 0.35) * duration
    n = np.array([rng.uniform(-0.35, 0.35), rng.normal(), rng.normal()])
    n /= np.linalg.norm(n)
    extent = np.array(grid.shape) * np.array(grid.voxel_size_um)
    params = VideoParams(
        seed=int(seed),
        grid=grid,
        frame_interval_s=float(dt),
        onset_s=None if onset is None else float(onset),
        a_max_um2=float(rng.uniform(30.0, 80.0)),
        tau_half_s=float(rng.uniform(20.0, 60.0)),
        approach_um_s=float(rng.uniform(0.05, 0.1)),
        normal=n,
        pair_offset_um=rng.uniform(-0.06, 0.06, size=3) * extent,
        drift_um_s=rng.normal(size=3) / np.sqrt(3) * rng.uniform(0.005, 0.02),
        cart=_cell(rng, CART),
        target=_cell(rng, TARGET),
        optics={
            "sigma_um": (rng.uniform(0.35, 0.6), rng.uniform(0.12, 0.2), rng.uniform(0.12, 0.2)),
            "cone_slope": 1.5,
            "cone_gain": 0.4,
            "noise_ri": rng.uniform(0.0004, 0.001),
            "background_ri": rng.normal(scale=0.0003),
        },
    )
    if kinetics:
        _prescribe(params, kinetics)
    if rng.random() < 0.4:
        kind = CART if rng.random() < 0.6 else TARGET
        second = _cell(rng, kind)
        # a corner away from the pair's axis, partly outside the field if need be
        for _ in range(20):
            c = rng.uniform(-0.45, 0.45, size=3) * extent
            to_pair = c - params.pair_offset_um
            along = abs(to_pair.dot(n))
            off_axis = np.linalg.norm(to_pair - to_pair.dot(n) * n)
            if off_axis > second.radius_um * 1.2 + 9.0 or along > second.radius_um * 1.2 + 14.0:
                params.second, params.second_center_um = second, c
                break
    return params


_KINETIC_KEYS = ("a_max_um2", "tau_half_s", "onset_s", "frame_interval_s")


def _prescribe(params: VideoParams, kinetics: dict) -> None:
    from deepis_rt.errors import ConfigError

    unknown = set(kinetics) - set(_KINETIC_KEYS)
    if unknown:
        raise ConfigError(f"synth: unknown kinetics {sorted(unknown)}; expected some of {list(_KINETIC_KEYS)}")
    for key, value in kinetics.items():
        if value is None and key != "onset_s":
            raise ConfigError(f"synth: kinetics {key} must be a number")
        if value is not None and key != "onset_s" and not float(value) > 0:
            raise ConfigError(f"synth: kinetics {key}={value!r} must be positive")
        setattr(params, key, None if value is None else float(value))
    disc_radius = float(np.sqrt(params.a_max_um2 / np.pi))
    smallest = params.target.radius_um * float(np.min(params.target.axes_scale)) * (1 - float(np.sum(params.target.modulation["wave_amps"])))
    if smallest < 1.15 * disc_radius:
        params.target.radius_um *= 1.15 * disc_radius / smallest


# --------------------------------------------------------------------------- geometry per frame
def _shape(cell: Cell, center: np.ndarray, axes: np.ndarray, rotation: np.ndarray, t: float) -> CellShape:
    mod = cell.modulation
    # membrane ruffling: phases drift slowly with time
    return CellShape(center_um=center, axes_um=axes, rotation=rotation, wave_dirs=mod["wave_dirs"],
                     wave_amps=mod["wave_amps"], wave_phases=mod["wave_phases"] + 0.01 * t)


def _contact_area(p: VideoParams, t: float) -> float:
    if p.onset_s is None or t < p.onset_s:
        return 0.0
    s = t - p.onset_s
    return p.a_max_um2 * s / (s + p.tau_half_s)


def _layout(p: VideoParams, t: float, rng: np.random.Generator) -> dict:
    """Shapes and contact plane of the pair at time t."""
    n = p.normal
    drift = p.drift_um_s * t + rng.normal(scale=0.05, size=3)
    tgt = p.target
    t_axes = tgt.radius_um * tgt.axes_scale
    target = _shape(tgt, np.zeros(3), t_axes, tgt.rotation, t)
    rt = target.radius_along(n)
    rc = p.cart.radius_um
    area = _contact_area(p, t)
    # both cells meet the contact plane in a disc of radius rho (ideal shapes)
    rho = float(np.sqrt(area / np.pi))
    rho = min(rho, 0.95 * rt)
    lateral = max(rc, rho / 0.9)
    normal_axis = rc**3 / lateral**2
    c_rot = frame_with_axis(n, np.random.default_rng(p.cart.texture_seed))
    c_axes = np.array([lateral, lateral, normal_axis]) * np.array([p.cart.axes_scale[0], p.cart.axes_scale[1], 1.0])
    if area > 0:
        s_t = float(np.sqrt(max(rt**2 - rho**2, 0.0)))
        s_c = normal_axis * float(np.sqrt(max(1.0 - (rho / lateral) ** 2, 0.0)))
        plane = s_t
        cart_center = n * (s_t + s_c)
    else:
        gap = 0.3 + (p.approach_um_s * (p.onset_s - t) if p.onset_s is not None else 2.5)
        gap = min(gap, 3.0)
        plane = None
        cart_center = n * (rt + rc + gap)
    mid = cart_center * 0.35  # keep the pair roughly centred
    shift = p.pair_offset_um - mid + drift
    target = target.with_(center_um=target.center_um + shift)
    cart = _shape(p.cart, cart_center + shift, c_axes, c_rot, t)
    plane_point = None if plane is None else n * plane + shift
    second = None
    if p.second is not None:
        sc = p.second
        second = _shape(sc, p.second_center_um + drift, sc.radius_um * sc.axes_scale, sc.rotation, t)
    return {"target": target, "cart": cart, "second": second, "plane_point": plane_point,
            "ideal_area_um2": area, "shift": shift}


def _plane_area(cart: CellShape, target: CellShape, point: np.ndarray, n: np.ndarray, step_um: float = 0.05) -> float:
    """Area (um^2) of the contact plane inside both cells, sampled on a fine 2-D grid."""
    R = frame_with_axis(n, np.random.default_rng(0))
    e1, e2 = R[:, 0], R[:, 1]
    half = cart.max_radius_um + 0.5
    u = np.arange(-half, half, step_um, dtype=np.float32)
    uu, vv = np.meshgrid(u, u, indexing="ij")
    pts = [np.float32(point[i]) + uu * np.float32(e1[i]) + vv * np.float32(e2[i]) for i in range(3)]
    inside = (cart.level(*pts) < 1.0) & (target.level(*pts) < 1.0)
    return float(inside.sum()) * step_um * step_um


# --------------------------------------------------------------------------- rendering
def _paste(full: np.ndarray, box: tuple[slice, ...] | None, local: np.ndarray | None) -> None:
    if box is not None and local is not None:
        full[box] |= local


def _cut(mask: np.ndarray, box, grid: Grid, point: np.ndarray, n: np.ndarray, keep_sign: float) -> np.ndarray:
    z, y, x = grid.coords(box)
    side = (z - np.float32(point[0])) * np.float32(n[0]) + (y - np.float32(point[1])) * np.float32(n[1]) + \
        (x - np.float32(point[2])) * np.float32(n[2])
    return mask & (side * np.float32(keep_sign) > 0)


def _texture(shape: tuple[int, ...], seed: int, amplitude: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.normal(size=tuple(max(2, s // 8) for s in shape)).astype(np.float32)
    zoom = [s / c for s, c in zip(shape, coarse.shape, strict=False)]
    tex = ndi.zoom(coarse, zoom, order=1, prefilter=False)[: shape[0], : shape[1], : shape[2]]
    return tex * np.float32(amplitude)


def _paint_cell(ri: np.ndarray, cell: Cell, shape: CellShape, mask_full: np.ndarray, grid: Grid,
                polarisation: float, toward: np.ndarray | None) -> None:
    box = grid.bbox(shape.center_um, shape.max_radius_um)
    if box is None:
        return
    m = mask_full[box]
    if not m.any():
        return
    z, y, x = grid.coords(box)
    local = np.full(m.shape, cell.cyto_ri - MEDIUM_RI, dtype=np.float32)
    local += _texture(m.shape, cell.texture_seed, 0.0015)
    nucleus = shape.with_(center_um=shape.center_um + shape.rotation @ (cell.nucleus_offset * shape.axes_um),
                          axes_um=shape.axes_um * (0.65 if cell.kind == CART else 0.6),
                          wave_amps=shape.wave_amps * 0.5)
    local += np.float32(cell.nucleus_dri) * (nucleus.level(z, y, x) < 1.0)
    for g in cell.granules:
        pos = shape.center_um + shape.rotation @ (g[:3] * shape.axes_um)
        if toward is not None and polarisation > 0:
            pos = pos + polarisation * (toward - pos) * 0.7
        d2 = (z - np.float32(pos[0])) ** 2 + (y - np.float32(pos[1])) ** 2 + (x - np.float32(pos[2])) ** 2
        inside = d2 < np.float32(g[3] ** 2)
        local = np.where(inside, np.float32(g[4] - MEDIUM_RI), local)
    ri[box] = np.where(m, local, ri[box])


def _otf(grid: Grid, optics: dict) -> np.ndarray:
    shape = grid.shape
    kz = sfft.fftfreq(shape[0], d=grid.voxel_size_um[0]).astype(np.float32)[:, None, None]
    ky = sfft.fftfreq(shape[1], d=grid.voxel_size_um[1]).astype(np.float32)[None, :, None]
    kx = sfft.rfftfreq(shape[2], d=grid.voxel_size_um[2]).astype(np.float32)[None, None, :]
    sz, sy, sx = optics["sigma_um"]
    two_pi2 = np.float32(2 * np.pi**2)
    otf = np.exp(-two_pi2 * ((sz * kz) ** 2 + (sy * ky) ** 2 + (sx * kx) ** 2))
    kr = np.sqrt(ky**2 + kx**2)
    cone = (np.abs(kz) > optics["cone_slope"] * kr) & (np.abs(kz) > 0)
    otf = np.where(cone, otf * np.float32(optics["cone_gain"]), otf)
    return otf.astype(np.float32)


def _signed_distance(pos: np.ndarray, neg: np.ndarray, voxel_size_um: tuple[float, float, float]) -> np.ndarray:
    d = np.zeros(pos.shape, dtype=np.float32)
    for mask, sign in ((pos, 1.0), (neg, -1.0)):
        if not mask.any():
            continue
        sl = ndi.find_objects(mask.astype(np.uint8))[0]
        sl = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(sl, mask.shape, strict=False))
        d[sl] += np.float32(sign) * ndi.distance_transform_edt(mask[sl], sampling=voxel_size_um).astype(np.float32)
    return d


def render_frame(p: VideoParams, index: int, with_truth_area: bool = True) -> RenderedFrame:
    """Render frame ``index`` of video ``p`` (deterministic in (seed, index))."""
    rng = np.random.default_rng([p.seed, 104729, int(index)])
    grid = p.grid
    t = index * p.frame_interval_s
    lay = _layout(p, t, rng)
    target, cart, second = lay["target"], lay["cart"], lay["second"]
    n = p.normal
    shape = grid.shape
    t_mask = np.zeros(shape, dtype=bool)
    c_mask = np.zeros(shape, dtype=bool)
    box_t, m_t = target.mask_in(grid)
    box_c, m_c = cart.mask_in(grid)
    if lay["plane_point"] is not None:
        if m_t is not None:
            m_t = _cut(m_t, box_t, grid, lay["plane_point"], n, -1.0)
        if m_c is not None:
            m_c = _cut(m_c, box_c, grid, lay["plane_point"], n, +1.0)
    _paste(t_mask, box_t, m_t)
    _paste(c_mask, box_c, m_c)
    c_mask &= ~t_mask
    s_mask = np.zeros(shape, dtype=bool)
    if second is not None:
        box_s, m_s = second.mask_in(grid)
        _paste(s_mask, box_s, m_s)
        s_mask &= ~(t_mask | c_mask)
    cart_all = c_mask | (s_mask if second is not None and p.second.kind == CART else False)
    target_all = t_mask | (s_mask if second is not None and p.second.kind == TARGET else False)

    # contact (IS) voxels: cell voxels face-adjacent to the other cell of the pair
    contact = bool(lay["plane_point"] is not None)
    is_mask = np.zeros(shape, dtype=bool)
    if contact and c_mask.any() and t_mask.any():
        is_mask = (c_mask & ndi.binary_dilation(t_mask)) | (t_mask & ndi.binary_dilation(c_mask))
    contact = contact and bool(is_mask.any())
    labels = np.zeros(shape, dtype=np.uint8)
    labels[cart_all] = CART
    labels[target_all] = TARGET
    labels[is_mask] = SYNAPSE
    distance = _signed_distance(cart_all, target_all, grid.voxel_size_um)

    # refractive index
    dri = np.zeros(shape, dtype=np.float32)
    polar = 0.0 if not contact else lay["ideal_area_um2"] / p.a_max_um2
    _paint_cell(dri, p.target, target, t_mask, grid, 0.0, None)
    _paint_cell(dri, p.cart, cart, c_mask, grid, polar, lay["plane_point"])
    if second is not None:
        _paint_cell(dri, p.second, second, s_mask, grid, 0.0, None)
    np.clip(dri, None, np.float32(1.39 - MEDIUM_RI), out=dri)
    blurred = sfft.irfftn(sfft.rfftn(dri, workers=1) * _otf(grid, p.optics), s=shape, workers=1)
    ri = blurred.astype(np.float32) + np.float32(MEDIUM_RI + p.optics["background_ri"])
    ri += rng.normal(scale=p.optics["noise_ri"], size=shape).astype(np.float32)

    area = 0.0
    if contact and with_truth_area:
        area = _plane_area(cart, target, lay["plane_point"], n)
    vox = float(np.prod(grid.voxel_size_um))
    truth = {
        "frame": int(index),
        "time_s": float(t),
        "contact": bool(contact),
        "is_area_um2": float(area) if with_truth_area else float("nan"),
        "is_area_model_um2": float(lay["ideal_area_um2"]) if contact else 0.0,
        "cart_volume_um3": float(c_mask.sum() * vox),
        "target_volume_um3": float(t_mask.sum() * vox),
        "second_cell": "" if second is None else ("cart" if p.second.kind == CART else "target"),
        "cart_z_um": float(cart.center_um[0]), "cart_y_um": float(cart.center_um[1]),
        "cart_x_um": float(cart.center_um[2]),
        "target_z_um": float(target.center_um[0]), "target_y_um": float(target.center_um[1]),
        "target_x_um": float(target.center_um[2]),
        "normal_z": float(n[0]), "normal_y": float(n[1]), "normal_x": float(n[2]),
    }
    return RenderedFrame(ri=ri, labels=labels, distance_um=distance, truth=truth)
