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

__all__ = ["CellShape", "Grid", "random_rotation", "frame_with_axis"]


@dataclass(frozen=True)
class Grid:
    """A voxel grid: shape (Z, Y, X) and voxel size (Z, Y, X) in um, centred on the origin."""

    shape: tuple[int, int, int]
    voxel_size_um: tuple[float, float, float]

    def axis_um(self, i: int) -> np.ndarray:
        n, v = self.shape[i], self.voxel_size_um[i]
        return ((np.arange(n) - (n - 1) / 2.0) * v).astype(np.float32)

    def bbox(self, center_um: np.ndarray, radius_um: float) -> tuple[slice, slice, slice] | None:
        """Voxel slices covering a sphere; None when it misses the grid."""
        out = []
        for i in range(3):
            n, v = self.shape[i], self.voxel_size_um[i]
            c = center_um[i] / v + (n - 1) / 2.0
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
    def random_modulation(rng: np.random.Generator, n_waves: int, amplitude: float) -> dict:
        dirs = rng.normal(size=(n_waves, 3))
        dirs *= (rng.uniform(1.5, 4.0, size=n_waves) / np.linalg.norm(dirs, axis=1))[:, None]
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
