"""Cell shapes of the synthetic scenes: irregular ellipsoids as implicit functions.

A cell is an ellipsoid (semi-axes in um, orientation given by a rotation whose
columns are the cell's local axes) whose radius is modulated by a smooth random
function of direction, ``r(u) = 1 + sum_j a_j sin(w_j . u + phi_j)``. A point is
inside when ``rho(p) / r(u) < 1``, where ``rho`` is the ellipsoidal radius.
Everything is evaluated only inside the cell's bounding box, so a shape costs a
few milliseconds on a 64 x 128 x 128 grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

__all__ = ["CellShape", "ContactSurface", "Grid", "random_rotation", "frame_with_axis", "frame_flat"]


@dataclass(frozen=True)
class Grid:
    """A voxel grid: shape (Z, Y, X), voxel size (Z, Y, X) in um and the position of its centre (um).

    Two grids with the same centre and extent (shape x voxel size) cover the same field with
    aligned outer voxel edges, as :func:`deepis_rt.runtime.preprocess.resample` assumes.
    """

    shape: tuple[int, int, int]
    voxel_size_um: tuple[float, float, float]
    center_um: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def extent_um(self) -> tuple[float, float, float]:
        return tuple(n * v for n, v in zip(self.shape, self.voxel_size_um, strict=True))  # type: ignore[return-value]

    def axis_um(self, i: int) -> np.ndarray:
        n, v = self.shape[i], self.voxel_size_um[i]
        return ((np.arange(n) - (n - 1) / 2.0) * v + self.center_um[i]).astype(np.float32)

    def bbox(self, center_um: np.ndarray, radius_um: float) -> tuple[slice, slice, slice] | None:
        """Voxel slices covering a sphere; None when it misses the grid."""
        out = []
        for i in range(3):
            n, v = self.shape[i], self.voxel_size_um[i]
            c = (center_um[i] - self.center_um[i]) / v + (n - 1) / 2.0
            r = radius_um / v
            lo, hi = int(np.floor(c - r)), int(np.ceil(c + r)) + 1
            lo, hi = max(lo, 0), min(hi, n)
            if lo >= hi:
                return None
            out.append(slice(lo, hi))
        return tuple(out)  # type: ignore[return-value]

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Open-grid physical coordinates (um) of a box, broadcastable to its shape."""
        z = self.axis_um(0)[box[0]][:, None, None]
        y = self.axis_um(1)[box[1]][None, :, None]
        x = self.axis_um(2)[box[2]][None, None, :]
        return z, y, x


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3-D rotation matrix (columns: local axes in (z, y, x))."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def frame_with_axis(n: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A rotation whose third column is the unit vector ``n`` (first two random around it)."""
    n = n / np.linalg.norm(n)
    a = rng.normal(size=3)
    a -= a.dot(n) * n
    a /= np.linalg.norm(a)
    b = np.cross(n, a)
    return np.stack([a, b, n], axis=1)


@dataclass(frozen=True)
class CellShape:
    """An irregular ellipsoid.

    Attributes
    ----------
    center_um : (3,) array
        Centre (z, y, x) in um, grid origin at the grid centre.
    axes_um : (3,) array
        Semi-axes along the local axes (columns of ``rotation``), um.
    rotation : (3, 3) array
        Columns are the local axes expressed in (z, y, x).
    wave_dirs : (J, 3) array
        Wave vectors of the radius modulation (in local unit-direction space).
    wave_amps, wave_phases : (J,) arrays
        Amplitudes (relative radius) and phases of the modulation.
    """

    center_um: np.ndarray
    axes_um: np.ndarray
    rotation: np.ndarray
    wave_dirs: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    wave_amps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    wave_phases: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @staticmethod
    def random_modulation(rng: np.random.Generator, n_waves: int, amplitude: float,
                          wave_numbers: tuple[float, float] = (1.5, 4.0)) -> dict:
        """Random radius modulation: ``n_waves`` waves, summed amplitude ~1.5 x ``amplitude``.

        ``wave_numbers`` bounds |w| (radians per unit direction): 1.5-4 gives the cell's
        overall irregularity, 6-14 membrane ruffles of a micrometre or two.
        """
        dirs = rng.normal(size=(n_waves, 3))
        dirs *= (rng.uniform(*wave_numbers, size=n_waves) / np.linalg.norm(dirs, axis=1))[:, None]
        amps = rng.uniform(0.3, 1.0, size=n_waves)
        amps *= amplitude / max(amps.sum(), 1e-9) * 1.5
        return {"wave_dirs": dirs, "wave_amps": amps, "wave_phases": rng.uniform(0, 2 * np.pi, size=n_waves)}

    def with_(self, **changes) -> CellShape:
        return replace(self, **changes)

    @property
    def max_radius_um(self) -> float:
        return float(np.max(self.axes_um) * (1.0 + np.sum(np.abs(self.wave_amps))) + 0.5)

    def _modulation(self, u: list[np.ndarray]) -> np.ndarray:
        out = np.ones(np.broadcast_shapes(*(c.shape for c in u)), dtype=np.float32)
        for w, a, ph in zip(self.wave_dirs, self.wave_amps, self.wave_phases, strict=False):
            out = out + np.float32(a) * np.sin(np.float32(w[0]) * u[0] + np.float32(w[1]) * u[1]
                                               + np.float32(w[2]) * u[2] + np.float32(ph))
        return out

    def level(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Implicit function: < 1 inside, 1 on the surface, > 1 outside (dimensionless)."""
        dz, dy, dx = z - np.float32(self.center_um[0]), y - np.float32(self.center_um[1]), x - np.float32(self.center_um[2])
        R = self.rotation.astype(np.float32)
        local = [R[0, i] * dz + R[1, i] * dy + R[2, i] * dx for i in range(3)]
        rho2 = sum((local[i] / np.float32(self.axes_um[i])) ** 2 for i in range(3))
        rho = np.sqrt(rho2)
        norm = np.sqrt(sum(c * c for c in local)) + np.float32(1e-6)
        u = [c / norm for c in local]
        return rho / self._modulation(u)

    def radius_along(self, direction: np.ndarray) -> float:
        """Distance (um) from the centre to the surface along a unit direction (z, y, x)."""
        d = direction / np.linalg.norm(direction)
        local = self.rotation.T @ d
        rho_unit = np.sqrt(np.sum((local / self.axes_um) ** 2))
        mod = 1.0 + float(np.sum(self.wave_amps * np.sin(self.wave_dirs @ local + self.wave_phases)))
        return float(mod / rho_unit)

    def mask_in(self, grid: Grid, box: tuple[slice, slice, slice] | None = None) -> tuple[tuple[slice, slice, slice] | None, np.ndarray | None]:
        """The cell's voxels inside its bounding box: (box, boolean mask of the box)."""
        box = grid.bbox(self.center_um, self.max_radius_um) if box is None else box
        if box is None:
            return None, None
        z, y, x = grid.coords(box)
        return box, self.level(z, y, x) < 1.0


def frame_flat(up: np.ndarray, axis: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """A rotation whose first column is as close to ``up`` as the constraint allows.

    With ``axis`` None: the third column is ``up`` itself (a cell lying on a coverslip
    whose normal is ``up``). With ``axis`` given: the third column is ``axis`` and the
    first is ``up`` made perpendicular to it (random when ``up`` is parallel to ``axis``).
    """
    up = np.asarray(up, dtype=float) / np.linalg.norm(up)
    if axis is None:
        return frame_with_axis(up, rng)
    n = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    a = up - up.dot(n) * n
    if np.linalg.norm(a) < 1e-6:
        return frame_with_axis(n, rng)
    a /= np.linalg.norm(a)
    return np.stack([a, np.cross(n, a), n], axis=1)


@dataclass(frozen=True)
class ContactSurface:
    """The interface of a conjugate: a plane, or a paraboloid bowed into the target cell.

    ``side(p) = (p - point) . n + kappa / 2 (rho^2 - |p_perp|^2)``, where ``n`` points from
    the target to the CAR-T cell and ``p_perp`` is the part of ``p - point`` across ``n``:
    the surface crosses the plane through ``point`` on the circle of radius ``rho`` and
    lies ``kappa rho^2 / 2`` deeper in the target on the axis (the CAR-T cell pressed into
    the target). ``kappa = 0`` is the flat contact. CAR-T cell where ``side > 0``,
    target where ``side < 0``.
    """

    point_um: np.ndarray
    normal: np.ndarray
    curvature_per_um: float = 0.0
    rim_radius_um: float = 0.0

    def side(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        p, n = self.point_um, self.normal
        d = [z - np.float32(p[0]), y - np.float32(p[1]), x - np.float32(p[2])]
        along = d[0] * np.float32(n[0]) + d[1] * np.float32(n[1]) + d[2] * np.float32(n[2])
        if self.curvature_per_um == 0:
            return along
        across2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2] - along * along
        return along + np.float32(self.curvature_per_um / 2) * (np.float32(self.rim_radius_um**2) - across2)

    def area_inside(self, shapes: list[CellShape], half_width_um: float, above_z_um: float | None = None,
                    step_um: float = 0.05) -> float:
        """Area (um^2) of the surface inside every shape (and above ``above_z_um``), on a fine grid."""
        R = frame_with_axis(self.normal, np.random.default_rng(0))
        e1, e2, n = R[:, 0], R[:, 1], R[:, 2]
        u = np.arange(-half_width_um, half_width_um, step_um, dtype=np.float32)
        uu, vv = np.meshgrid(u, u, indexing="ij")
        r2 = uu * uu + vv * vv
        k = np.float32(self.curvature_per_um)
        h = k / 2 * (r2 - np.float32(self.rim_radius_um**2))
        pts = [np.float32(self.point_um[i]) + uu * np.float32(e1[i]) + vv * np.float32(e2[i]) + h * np.float32(n[i])
               for i in range(3)]
        inside = np.ones(uu.shape, dtype=bool)
        for s in shapes:
            inside &= s.level(*pts) < 1.0
        if above_z_um is not None:
            inside &= pts[0] > np.float32(above_z_um)
        element = np.sqrt(1.0 + k * k * r2)  # dA / (du dv) of the paraboloid
        return float(np.sum(element[inside])) * step_um * step_um
