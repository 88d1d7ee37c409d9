"""One synthetic conjugate video: a CAR-T cell meeting a target cell.

Physics (choices documented here, values in um, s and RI units):

* **Cells.** CAR-T: irregular ellipsoid 7-9 um across (radius modulation ~6 %),
  cytoplasm RI 1.362-1.370, nucleus 65 % of the cell's axes, +0.006-0.012 RI,
  4-10 granules (radius 0.25-0.5 um, RI 1.375-1.39). Target (K562-like): 12-16 um across,
  cytoplasm RI 1.355-1.361, nucleus 60 % of the axes, +0.006-0.012, 5-15 granules.
  Smooth RI texture (+-0.0015, correlation length 2 um) in both (:mod:`deepis_rt.synth.paint`).
* **Approach and contact.** The CAR-T approaches the target along a random, mostly
  lateral direction ``n`` at 0.05-0.1 um/s until contact onset ``t_on``; 10 % of videos
  never make contact. After onset the contact (IS) is a disc whose area follows
  ``A(t) = A_max (t - t_on) / ((t - t_on) + tau_half)`` with A_max 30-80 um^2 and
  tau_half 20-60 s: the CAR-T spreads (lateral semi-axis grows, its thickness shrinks at
  constant ellipsoid volume) and both cells are cut by the contact surface so that each
  meets it in a disc of radius sqrt(A/pi). CAR-T granules polarise towards the IS.
  (The paper's A_max ~ 106 um^2 cannot be reached by a flat disc on an 8 um cell, so
  A_max is lower here; the kinetic law is the same.)
* **Drift.** The stage drifts 0.005-0.02 um/s in a random direction, plus +-0.05 um jitter.
* **Second cell.** 40 % of videos have a second cell (CAR-T or target) elsewhere in the
  field, never touching the pair.
* **Imaging** (``imaging=``, :mod:`deepis_rt.synth.optics`). ``"tomocube"``: the RI
  contrast reconstructed as a holotomograph would, the Born/Rytov support of a
  Tomocube-like system (objective NA 1.2, illumination NA 1.0, 532 nm: lateral cut-off
  4.1 /um, axial 1.4 /um, missing cone), 10 non-negativity iterations, band-limited
  noise 0.001-0.003 RI; ``"raw"``: the same without the iterations; ``"random"``: every
  imaging parameter drawn. ``"tomocube"`` is the default (``DEFAULT_IMAGING``): the
  condition the bundled checkpoint is meant for. ``"legacy"`` (the first generator's,
  kept to reproduce older results): an anisotropic Gaussian OTF (sigma 0.12-0.2 um in Y/X, 0.35-0.6 um
  in Z) with a cone damped to 40 % and white noise 0.0004-0.001 RI. Background offset
  +-0.0003 RI.

``make_video(..., randomize=True)`` (training: domain randomisation) draws more variety
on top of the same video: elongated cells (axes x0.8-1.25), ruffled membranes (waves of 1-2 um, half of the cells),
cells flattened on the coverslip (z axis x0.55-0.85 and cut flat at the glass, 40 % of the
videos), contacts facing the optical axis (the normal within 45 degrees of z, 30 % of the
videos: a CAR-T on top of its target), contacts pressed into the target (an interface bowed with a radius of curvature
of 8-50 um, half of the videos), nuclei darker or brighter than the cytoplasm
(-0.008 to +0.012; Schuermann et al. 2016, J. Biophotonics 9:1068, found nuclei of many
cell types less dense than the cytoplasm), nucleoli, granules up to RI 1.42 and a finer
texture octave (0.4-0.8 um). Its draws come from a second random stream, so a seed's
default video is the same with or without it, but for these changes.

The truth IS area is measured geometrically, not taken from A(t): the area of the
contact surface inside both cells (sampled on a 0.05 um grid), since the shapes' radius
modulation, the curvature and the coverslip make the real contact differ from the ideal disc.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from deepis_rt.synth.geometry import (
    CellShape,
    ContactSurface,
    Grid,
    frame_flat,
    frame_with_axis,
    random_rotation,
)
from deepis_rt.synth.optics import IMAGING_CONDITIONS, GaussianOTF, Imaging, draw_imaging
from deepis_rt.synth.paint import CellInterior, paint_cell

__all__ = ["MEDIUM_RI", "DEFAULT_IMAGING", "VideoParams", "RenderedFrame", "make_video", "render_frame", "acquisition_grid"]

MEDIUM_RI = 1.337
#: The imaging condition of synthetic videos unless told otherwise: the one the bundled checkpoint is for.
DEFAULT_IMAGING = "tomocube"
CART, TARGET, SYNAPSE = 1, 2, 3
_UP = np.array([1.0, 0.0, 0.0])  # +z, away from the coverslip


@dataclass
class Cell:
    kind: int  # CART or TARGET
    radius_um: float
    axes_scale: np.ndarray
    rotation: np.ndarray
    modulation: dict
    interior: CellInterior
    #: z-axis factor of a cell flattened on the coverslip (1: not flattened)
    flatten: float = 1.0

    @property
    def texture_seed(self) -> int:
        return self.interior.texture_seed


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
    imaging: Imaging | GaussianOTF = field(default_factory=GaussianOTF)
    background_ri: float = 0.0
    #: RI above this is clipped (granules, lipid droplets)
    max_ri: float = 1.39
    #: curvature (1/um) of the contact surface, bowed into the target; 0: flat
    curvature_per_um: float = 0.0
    #: the CAR-T cell is pushed into the target by this fraction of the surface's sag
    press: float = 0.0
    #: the coverslip cuts this fraction of the target's lower half away; None: no coverslip in the field
    coverslip_depth: float | None = None
    randomized: bool = False


@dataclass
class RenderedFrame:
    ri: np.ndarray
    labels: np.ndarray
    distance_um: np.ndarray
    truth: dict
    imaging: dict = field(default_factory=dict)


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
    axes_scale = rng.uniform(0.9, 1.1, size=3)
    rotation = random_rotation(rng)
    modulation = CellShape.random_modulation(rng, 5, 0.06)
    nucleus_dri = rng.uniform(0.006, 0.012)
    interior = CellInterior(kind=kind, cyto_ri=cyto, nucleus_dri=nucleus_dri, nucleus_offset=nuc_off,
                            nucleus_scale=0.65 if kind == CART else 0.6, granules=gran,
                            texture_seed=int(rng.integers(2**31)))
    return Cell(kind=kind, radius_um=radius, axes_scale=axes_scale, rotation=rotation, modulation=modulation,
                interior=interior)


def _vary_cell(cell: Cell, rng: np.random.Generator, flat: bool) -> None:
    """Domain randomisation of one cell (shape family, interior), in place."""
    inner = cell.interior
    cell.axes_scale = rng.uniform(0.8, 1.25, size=3)
    if rng.random() < 0.5:  # ruffled membrane: short waves on top of the overall irregularity
        ruffle = CellShape.random_modulation(rng, int(rng.integers(4, 9)), rng.uniform(0.015, 0.04), (6.0, 14.0))
        cell.modulation = {k: np.concatenate([cell.modulation[k], ruffle[k]]) for k in cell.modulation}
    if flat:
        cell.flatten = float(rng.uniform(0.55, 0.85))
        if cell.kind != CART:  # a target lies on the glass: its third axis is the coverslip normal
            cell.rotation = frame_flat(_UP, None, rng)
    inner.cyto_ri = float(rng.uniform(1.355, 1.375) if cell.kind == CART else rng.uniform(1.350, 1.368))
    inner.nucleus_dri = float(rng.uniform(-0.008, 0.012))
    inner.granules[:, 4] = rng.uniform(1.37, 1.42, size=len(inner.granules))
    n_nl = int(rng.integers(0, 4))
    nl = np.zeros((n_nl, 4))
    if n_nl:
        v = rng.normal(size=(n_nl, 3))
        nl[:, :3] = v / np.linalg.norm(v, axis=1, keepdims=True) * rng.uniform(0.0, 0.5, size=(n_nl, 1))
        nl[:, 3] = rng.uniform(0.3, 0.8, size=n_nl)
    inner.nucleoli, inner.nucleolus_dri = nl, float(rng.uniform(0.005, 0.02))
    inner.texture_octaves = ((float(rng.uniform(1.5, 3.0)), float(rng.uniform(0.0005, 0.003))),
                             (float(rng.uniform(0.4, 0.8)), float(rng.uniform(0.0005, 0.003))))


def make_video(seed: int, shape: tuple[int, int, int], voxel_size_um: tuple[float, float, float],
               n_frames: int, kinetics: dict | None = None, randomize: bool = False,
               imaging: str | Imaging | GaussianOTF = DEFAULT_IMAGING) -> VideoParams:
    """Draw the parameters of video ``seed`` (deterministic).

    ``kinetics`` prescribes some of the drawn values instead: any of ``a_max_um2``,
    ``tau_half_s``, ``onset_s`` (contact onset, s; None for no contact) and
    ``frame_interval_s``. Everything else is drawn as usual, so a prescribed video
    differs from the drawn one only in those values. A large ``a_max_um2`` (the
    paper's ~106 um^2) needs a target large enough for the contact disc: the target
    radius is raised to 1.15 x the disc radius when needed.

    ``randomize`` adds the domain randomisation of the module docstring (shape
    families, interiors); kinetics, layout and seeds stay those of the default video.

    ``imaging``: ``"tomocube"`` (default: holotomography with the Tomocube-like condition,
    noise 0.001-0.003 RI), ``"legacy"`` (the first generator's Gaussian OTF), ``"raw"`` (the same without non-negativity iterations: the raw
    Rytov reconstruction), ``"random"`` (every imaging parameter drawn,
    :func:`deepis_rt.synth.optics.draw_imaging`), or an :class:`Imaging` /
    :class:`GaussianOTF` to use as it is.
    """
    from deepis_rt.errors import ConfigError

    if isinstance(imaging, str) and imaging not in IMAGING_CONDITIONS:
        raise ConfigError(f"synth: imaging {imaging!r} is not one of {list(IMAGING_CONDITIONS)}")
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
    )
    # drawn where earlier versions drew a Gaussian optics model (three widths, noise,
    # offset), so that a seed's second cell, drawn next, stays where it was
    sigma_um = (rng.uniform(0.35, 0.6), rng.uniform(0.12, 0.2), rng.uniform(0.12, 0.2))
    noise_u = rng.uniform()
    params.background_ri = float(rng.normal(scale=0.0003))
    if imaging == "legacy":
        params.imaging = GaussianOTF(sigma_um=sigma_um, noise_ri=0.0004 + 0.0006 * noise_u)
    elif imaging in ("tomocube", "raw"):
        params.imaging = Imaging(noise_ri=0.001 + 0.002 * noise_u, nonneg_iterations=10 if imaging == "tomocube" else 0)
    elif imaging == "random":
        params.imaging = draw_imaging(np.random.default_rng([int(seed), 7919, 3]))
        params.background_ri = float(np.random.default_rng([int(seed), 7919, 4]).normal(scale=0.0008))
    else:
        params.imaging = imaging  # type: ignore[assignment]
    if rng.random() < 0.4:
        kind = CART if rng.random() < 0.6 else TARGET
        second = _cell(rng, kind)
        # a corner away from the pair's axis, partly outside the field if need be
        for _ in range(20):
            c = rng.uniform(-0.45, 0.45, size=3) * extent
            if _clears_pair(c, second.radius_um, params.pair_offset_um, n):
                params.second, params.second_center_um = second, c
                break
    if randomize:
        _randomize(params, np.random.default_rng([int(seed), 7919, 2]))
    if kinetics:
        _prescribe(params, kinetics)
    return params


def _randomize(params: VideoParams, rng: np.random.Generator) -> None:
    params.randomized = True
    params.max_ri = 1.42
    flat = bool(rng.random() < 0.4)
    params.coverslip_depth = float(rng.uniform(0.05, 0.25)) if flat else None
    if flat:  # cells on the glass meet mostly side by side
        params.normal[0] *= 0.5
        params.normal /= np.linalg.norm(params.normal)
    if rng.random() < 0.5:
        params.curvature_per_um = float(rng.uniform(0.02, 0.125))
        params.press = float(rng.uniform(0.3, 0.8))
    for cell in (params.cart, params.target, params.second):
        if cell is not None:
            _vary_cell(cell, rng, flat)
    if rng.random() < AXIAL_CONTACT_FRACTION:
        _axial_contact(params, rng, flat)


#: Share of randomised videos whose contact faces the optical axis (a CAR-T on top of its target).
AXIAL_CONTACT_FRACTION = 0.3


def _axial_contact(params: VideoParams, rng: np.random.Generator, on_glass: bool) -> None:
    """Turn the contact towards the optical axis: its normal within 45 degrees of z.

    A CAR-T landing on an adherent target meets it from above; in suspension a pair may lie
    along any axis. Such an interface lies across the axis of coarsest resolution and of the
    missing cone, the hardest orientation for holotomography. On the glass the CAR-T is on
    top (not itself on the glass, so not flattened by it); in suspension either way round.
    The second cell is dropped if it no longer clears the pair's new axis.
    """
    cos_t = rng.uniform(np.cos(np.pi / 4), 1.0)
    phi = rng.uniform(0.0, 2 * np.pi)
    sin_t = np.sqrt(1.0 - cos_t**2)
    up = 1.0 if on_glass or rng.random() < 0.5 else -1.0
    params.normal = np.array([up * cos_t, sin_t * np.cos(phi), sin_t * np.sin(phi)])
    if on_glass:
        params.cart.flatten = 1.0
    if params.second is not None and not _clears_pair(params.second_center_um, params.second.radius_um,
                                                      params.pair_offset_um, params.normal):
        params.second = None


def _clears_pair(center_um: np.ndarray, radius_um: float, pair_offset_um: np.ndarray, normal: np.ndarray) -> bool:
    """Whether a second cell at ``center_um`` stays clear of the pair: far enough off the pair's axis
    (``normal`` through ``pair_offset_um``), or far enough along it."""
    to_pair = center_um - pair_offset_um
    along = abs(to_pair.dot(normal))
    off_axis = np.linalg.norm(to_pair - to_pair.dot(normal) * normal)
    return bool(off_axis > radius_um * 1.2 + 9.0 or along > radius_um * 1.2 + 14.0)


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
    """Shapes, contact surface and coverslip of the pair at time t."""
    n = p.normal
    drift = p.drift_um_s * t + rng.normal(scale=0.05, size=3)
    tgt = p.target
    t_axes = tgt.radius_um * tgt.axes_scale
    if tgt.flatten != 1.0:  # flattened on the glass at constant volume (third axis is z)
        t_axes = t_axes * np.array([1 / np.sqrt(tgt.flatten), 1 / np.sqrt(tgt.flatten), tgt.flatten])
    target = _shape(tgt, np.zeros(3), t_axes, tgt.rotation, t)
    rt = target.radius_along(n)
    rc = p.cart.radius_um
    area = _contact_area(p, t)
    # both cells meet the contact plane in a disc of radius rho (ideal shapes)
    rho = float(np.sqrt(area / np.pi))
    rho = min(rho, 0.95 * rt)
    lateral = max(rc, rho / 0.9)
    normal_axis = rc**3 / lateral**2
    c_rng = np.random.default_rng(p.cart.texture_seed)
    c_rot = frame_with_axis(n, c_rng) if p.cart.flatten == 1.0 else frame_flat(_UP, n, c_rng)
    c_axes = np.array([lateral, lateral, normal_axis]) * np.array([p.cart.axes_scale[0], p.cart.axes_scale[1], 1.0])
    c_axes[0] *= p.cart.flatten
    surface = None
    if area > 0:
        s_t = float(np.sqrt(max(rt**2 - rho**2, 0.0)))
        s_c = normal_axis * float(np.sqrt(max(1.0 - (rho / lateral) ** 2, 0.0)))
        sag = p.curvature_per_um * rho * rho / 2
        cart_center = n * (s_t + s_c - p.press * sag)
        plane = s_t
    else:
        gap = 0.3 + (p.approach_um_s * (p.onset_s - t) if p.onset_s is not None else 2.5)
        gap = min(gap, 3.0)
        plane = None
        cart_center = n * (rt + rc + gap)
    mid = cart_center * 0.35  # keep the pair roughly centred
    shift = p.pair_offset_um - mid + drift
    target = target.with_(center_um=target.center_um + shift)
    cart = _shape(p.cart, cart_center + shift, c_axes, c_rot, t)
    if plane is not None:
        surface = ContactSurface(point_um=n * plane + shift, normal=n, curvature_per_um=p.curvature_per_um,
                                 rim_radius_um=rho)
    coverslip = None
    if p.coverslip_depth is not None:
        coverslip = float(target.center_um[0] - target.radius_along(-_UP) * (1.0 - p.coverslip_depth))
    second = None
    if p.second is not None:
        sc = p.second
        s_axes = sc.radius_um * sc.axes_scale
        if sc.flatten != 1.0:
            s_axes = s_axes * np.array([1.0, 1.0, sc.flatten])
        second = _shape(sc, p.second_center_um + drift, s_axes, sc.rotation, t)
    return {"target": target, "cart": cart, "second": second, "surface": surface, "coverslip_z_um": coverslip,
            "ideal_area_um2": area, "shift": shift}


# --------------------------------------------------------------------------- rendering
def _paste(full: np.ndarray, box: tuple[slice, ...] | None, local: np.ndarray | None) -> None:
    if box is not None and local is not None:
        full[box] |= local


def _cut(mask: np.ndarray, box, grid: Grid, surface: ContactSurface | None, keep_sign: float,
         coverslip_z_um: float | None) -> np.ndarray:
    z, y, x = grid.coords(box)
    if surface is not None:
        mask = mask & (surface.side(z, y, x) * np.float32(keep_sign) > 0)
    if coverslip_z_um is not None:
        mask = mask & (z > np.float32(coverslip_z_um))
    return mask


def _masks(lay: dict, grid: Grid, second_kind: int | None) -> dict:
    """The cells' voxels on ``grid``: target, CAR-T and second cell of the layout, each exclusive."""
    shape = grid.shape
    cover = lay["coverslip_z_um"]
    out = {}
    for name, shp, sign in (("target", lay["target"], -1.0), ("cart", lay["cart"], 1.0)):
        full = np.zeros(shape, dtype=bool)
        box, m = shp.mask_in(grid)
        if m is not None:
            m = _cut(m, box, grid, lay["surface"], sign, cover)
        _paste(full, box, m)
        out[name] = full
    out["cart"] &= ~out["target"]
    s_mask = np.zeros(shape, dtype=bool)
    if lay["second"] is not None:
        box, m = lay["second"].mask_in(grid)
        if m is not None:
            m = _cut(m, box, grid, None, 1.0, cover)
        _paste(s_mask, box, m)
        s_mask &= ~(out["target"] | out["cart"])
    out["second"] = s_mask
    return out


def _signed_distance(pos: np.ndarray, neg: np.ndarray, voxel_size_um: tuple[float, float, float]) -> np.ndarray:
    d = np.zeros(pos.shape, dtype=np.float32)
    for mask, sign in ((pos, 1.0), (neg, -1.0)):
        if not mask.any():
            continue
        sl = ndi.find_objects(mask.astype(np.uint8))[0]
        sl = tuple(slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(sl, mask.shape, strict=False))
        d[sl] += np.float32(sign) * ndi.distance_transform_edt(mask[sl], sampling=voxel_size_um).astype(np.float32)
    return d


def acquisition_grid(grid: Grid, voxel_size_um: tuple[float, float, float]) -> Grid:
    """The grid a microscope with voxels near ``voxel_size_um`` would sample ``grid``'s field on.

    Same centre and extent (so the runtime's resampling maps one onto the other); the
    voxel size is adjusted to a whole number of voxels per axis.
    """
    shape = tuple(max(8, int(round(e / v))) for e, v in zip(grid.extent_um, voxel_size_um, strict=True))
    vs = tuple(e / n for e, n in zip(grid.extent_um, shape, strict=True))
    return Grid(shape, vs, grid.center_um)  # type: ignore[arg-type]


def render_frame(p: VideoParams, index: int, with_truth_area: bool = True,
                 acquisition_voxel_um: tuple[float, float, float] | None = None) -> RenderedFrame:
    """Render frame ``index`` of video ``p`` (deterministic in (seed, index)).

    Labels and distance map are drawn on ``p.grid``. The RI is drawn and reconstructed on
    ``p.grid`` too, or, with ``acquisition_voxel_um``, on the same field sampled at that
    voxel size and then resampled to ``p.grid`` exactly as the runtime resamples a
    tomogram to the model's voxel size (:func:`deepis_rt.runtime.preprocess.resample`).
    """
    rng = np.random.default_rng([p.seed, 104729, int(index)])
    grid = p.grid
    t = index * p.frame_interval_s
    lay = _layout(p, t, rng)
    target, cart, second = lay["target"], lay["cart"], lay["second"]
    second_kind = None if p.second is None else p.second.kind
    n = p.normal
    shape = grid.shape
    masks = _masks(lay, grid, second_kind)
    t_mask, c_mask, s_mask = masks["target"], masks["cart"], masks["second"]
    cart_all = c_mask | (s_mask if second_kind == CART else False)
    target_all = t_mask | (s_mask if second_kind == TARGET else False)

    # contact (IS) voxels: cell voxels face-adjacent to the other cell of the pair
    contact = lay["surface"] is not None
    is_mask = np.zeros(shape, dtype=bool)
    if contact and c_mask.any() and t_mask.any():
        is_mask = (c_mask & ndi.binary_dilation(t_mask)) | (t_mask & ndi.binary_dilation(c_mask))
    contact = contact and bool(is_mask.any())
    labels = np.zeros(shape, dtype=np.uint8)
    labels[cart_all] = CART
    labels[target_all] = TARGET
    labels[is_mask] = SYNAPSE
    distance = _signed_distance(cart_all, target_all, grid.voxel_size_um)

    # refractive index, on the acquisition grid
    acq = grid if acquisition_voxel_um is None else acquisition_grid(grid, acquisition_voxel_um)
    acq_masks = masks if acq is grid else _masks(lay, acq, second_kind)
    medium = p.imaging.medium_ri
    contrast = np.zeros(acq.shape, dtype=np.float32)
    polar = 0.0 if not contact else lay["ideal_area_um2"] / p.a_max_um2
    toward = None if lay["surface"] is None else lay["surface"].point_um
    paint_cell(contrast, p.target.interior, target, acq_masks["target"], acq, medium)
    paint_cell(contrast, p.cart.interior, cart, acq_masks["cart"], acq, medium, polar, toward)
    if second is not None:
        paint_cell(contrast, p.second.interior, second, acq_masks["second"], acq, medium)
    np.clip(contrast, None, np.float32(p.max_ri - medium), out=contrast)
    ri = p.imaging.reconstruct(contrast, acq.voxel_size_um, rng)
    ri += np.float32(medium + p.background_ri)
    if acq is not grid:
        from deepis_rt.core.resample import resample

        ri = resample(ri, shape)

    area = 0.0
    if contact and with_truth_area:
        area = lay["surface"].area_inside([cart, target], cart.max_radius_um + 0.5, lay["coverslip_z_um"])
    vox = float(np.prod(grid.voxel_size_um))
    truth = {
        "frame": int(index),
        "time_s": float(t),
        "contact": bool(contact),
        "is_area_um2": float(area) if with_truth_area else float("nan"),
        "is_area_model_um2": float(lay["ideal_area_um2"]) if contact else 0.0,
        "cart_volume_um3": float(c_mask.sum() * vox),
        "target_volume_um3": float(t_mask.sum() * vox),
        "second_cell": "" if second is None else ("cart" if second_kind == CART else "target"),
        "cart_z_um": float(cart.center_um[0]), "cart_y_um": float(cart.center_um[1]),
        "cart_x_um": float(cart.center_um[2]),
        "target_z_um": float(target.center_um[0]), "target_y_um": float(target.center_um[1]),
        "target_x_um": float(target.center_um[2]),
        "normal_z": float(n[0]), "normal_y": float(n[1]), "normal_x": float(n[2]),
    }
    imaging = {**p.imaging.as_dict(), "acquisition_voxel_um": list(acq.voxel_size_um),
               "curvature_per_um": p.curvature_per_um, "coverslip": p.coverslip_depth is not None}
    return RenderedFrame(ri=ri, labels=labels, distance_um=distance, truth=truth, imaging=imaging)
