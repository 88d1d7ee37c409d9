"""Implicit surfaces for validation phantoms: each shape is a function ``f(points) -> level``.

A shape is the set ``f < 0``; ``f`` need not be a distance (only its zero set matters:
distances are measured afterwards, on a fine grid, by :mod:`deepis_rt.validation.phantoms`).
This representation is deliberately unlike the training generator's (``deepis_rt.synth``
builds cells from modulated ellipsoid masks on the output grid): implicit bodies composed
with a separate *cut* surface that decides, inside the overlap of two bodies, which cell a
point belongs to. The contact surface is the cut's zero set inside both bodies, so its area
is an integral over a known surface (:meth:`Cut.surface_samples`), not a count on a grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["Body", "Superellipsoid", "Cut", "PlaneCut", "SphereCut", "rotation_from_vector", "random_rotation"]


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rotation matrix (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def rotation_from_vector(axis: np.ndarray) -> np.ndarray:
    """A rotation whose third column is the unit vector ``axis`` (local z -> ``axis``)."""
    w = np.asarray(axis, float) / np.linalg.norm(axis)
    helper = np.array([1.0, 0.0, 0.0]) if abs(w[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(w, helper)
    u /= np.linalg.norm(u)
    return np.stack([u, np.cross(w, u), w], axis=1)


class Body:
    """An implicit body: ``level(points) < 0`` inside. Points are (..., 3) arrays in um (Z, Y, X)."""

    def level(self, points: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def contains(self, points: np.ndarray) -> np.ndarray:
        return self.level(points) < 0


@dataclass
class Superellipsoid(Body):
    """``(|x/a|^m + |y/b|^m + |z/c|^m)^(1/m) (1 - ruffle(direction)) - 1`` in the body frame.

    ``m = 2`` is an ellipsoid (``a = b = c``: a sphere); ``m`` of 3-4 with a short ``c``
    is a cell flattened on the coverslip (flat faces, rounded rim). ``ruffles`` adds
    membrane undulations: a sum of ``(amplitude, k_vector, phase)`` cosines of the unit
    direction, so that the radius varies by a few percent around the body.
    """

    center: np.ndarray
    semi_axes: np.ndarray
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    exponent: float = 2.0
    ruffles: tuple = ()

    def level(self, points: np.ndarray) -> np.ndarray:
        p = np.asarray(points, np.float32).reshape(-1, 3) - self.center.astype(np.float32)
        q = p if np.array_equal(self.rotation, np.eye(3)) else p @ self.rotation.astype(np.float32)
        s = np.abs(q) * (1.0 / self.semi_axes).astype(np.float32)
        if self.exponent == 2.0:
            s *= s
            r = np.sqrt(s.sum(axis=1))
        else:
            r = (s ** np.float32(self.exponent)).sum(axis=1) ** np.float32(1.0 / self.exponent)
        if self.ruffles:
            length = np.sqrt(np.einsum("ij,ij->i", q, q))
            unit = q / np.maximum(length, np.float32(1e-6))[:, None]
            k = np.array([k for _, k, _ in self.ruffles], np.float32)
            amp = np.array([a for a, _, _ in self.ruffles], np.float32)
            phase = np.array([ph for _, _, ph in self.ruffles], np.float32)
            r = r * (1.0 - np.cos(unit @ k.T + phase) @ amp)
        return (r - 1.0).reshape(np.shape(points)[:-1])


class Cut:
    """A surface splitting space: ``side(points) < 0`` on the CAR-T side, ``>= 0`` on the target's."""

    def side(self, points: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def surface_samples(self, around: np.ndarray, extent_um: float, step_um: float) -> tuple[np.ndarray, np.ndarray]:
        """Points on the cut surface (N, 3) about ``step_um`` apart and the area each stands for (N,).

        Covers at least the part of the surface within ``extent_um`` of the point ``around``.
        """
        raise NotImplementedError


@dataclass
class PlaneCut(Cut):
    """The plane through ``point`` with unit ``normal`` (pointing into the target)."""

    point: np.ndarray
    normal: np.ndarray

    def side(self, points: np.ndarray) -> np.ndarray:
        n = (self.normal / np.linalg.norm(self.normal)).astype(np.float32)
        return np.asarray(points, np.float32) @ n - np.float32(self.point @ n)

    def surface_samples(self, around: np.ndarray, extent_um: float, step_um: float) -> tuple[np.ndarray, np.ndarray]:
        frame = rotation_from_vector(self.normal)
        foot = around - ((around - self.point) @ frame[:, 2]) * frame[:, 2]
        t = np.arange(-extent_um, extent_um + step_um / 2, step_um)
        u, v = np.meshgrid(t, t, indexing="ij")
        pts = foot + u[..., None] * frame[:, 0] + v[..., None] * frame[:, 1]
        return pts.reshape(-1, 3), np.full(u.size, step_um * step_um)


@dataclass
class SphereCut(Cut):
    """A sphere: the CAR-T side is inside it (``|p - center| < radius``).

    A CAR-T cell pressed into its target: the interface bulges into the target with
    the curvature ``1 / radius``.
    """

    center: np.ndarray
    radius: float

    def side(self, points: np.ndarray) -> np.ndarray:
        q = np.asarray(points, np.float32) - self.center.astype(np.float32)
        return np.sqrt(np.einsum("...i,...i->...", q, q)) - np.float32(self.radius)

    def surface_samples(self, around: np.ndarray, extent_um: float, step_um: float) -> tuple[np.ndarray, np.ndarray]:
        # equal-area sampling (uniform in cos(theta) and in phi) of the cap facing ``around``
        r = self.radius
        offset = np.asarray(around, float) - self.center
        axis = offset / np.linalg.norm(offset) if np.linalg.norm(offset) > 0 else np.array([0.0, 0.0, 1.0])
        # a chord of ``extent_um`` + the distance from ``around`` to the sphere bounds the cap's angle
        reach = extent_um + abs(np.linalg.norm(offset) - r)
        cos_min = max(1.0 - reach**2 / (2 * r * r), -1.0)
        n_theta = max(int(math.ceil(r * math.acos(cos_min) / step_um)), 8)
        n_phi = max(int(math.ceil(2 * math.pi * r * math.sqrt(max(1 - cos_min**2, 0.0) if cos_min > 0 else 1.0)
                                  / step_um)), 16)
        cos_t = cos_min + (np.arange(n_theta) + 0.5) * ((1.0 - cos_min) / n_theta)
        phi = (np.arange(n_phi) + 0.5) * (2 * math.pi / n_phi)
        ct, ph = np.meshgrid(cos_t, phi, indexing="ij")
        st = np.sqrt(1.0 - ct**2)
        local = np.stack([st * np.cos(ph), st * np.sin(ph), ct], axis=-1).reshape(-1, 3)
        unit = local @ rotation_from_vector(axis).T
        area = 2 * math.pi * r * r * (1.0 - cos_min) / unit.shape[0]
        return self.center + r * unit, np.full(unit.shape[0], area)
