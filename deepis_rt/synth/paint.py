"""The refractive index inside a synthetic cell: cytoplasm, nucleus, nucleoli, granules, texture.

Everything is defined in physical units (um), so a cell looks the same at any voxel size;
values are RI contrast against the medium (``n - n_medium``). The texture is a sum of
octaves of smooth random fields (correlation lengths in um), the sub-micrometre RI
fluctuation of cytoplasm that ODT tomograms show (a few 1e-3 RI units).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from deepis_rt.synth.geometry import CellShape, Grid

__all__ = ["CellInterior", "texture", "paint_cell"]


@dataclass
class CellInterior:
    """What is inside one cell (absolute RI values; positions in units of the cell's axes)."""

    kind: int
    cyto_ri: float
    nucleus_dri: float  # nucleus minus cytoplasm (negative in many cell types)
    nucleus_offset: np.ndarray
    nucleus_scale: float
    granules: np.ndarray  # (G, 5): local position (3), radius um, absolute RI
    texture_seed: int
    #: (correlation length um, amplitude RI) per texture octave; None: the earlier texture
    #: (+-0.0015, correlation length 8 voxels), kept for the legacy videos
    texture_octaves: tuple[tuple[float, float], ...] | None = None
    #: (N, 4): position in units of the nucleus' axes (3), radius um; RI + nucleolus_dri
    nucleoli: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    nucleolus_dri: float = 0.0


def texture(shape: tuple[int, ...], voxel_size_um: tuple[float, ...], seed: int,
            octaves: tuple[tuple[float, float], ...] | None) -> np.ndarray:
    """Smooth random RI texture of a box: octaves of (correlation length um, RI amplitude)."""
    rng = np.random.default_rng(seed)
    if octaves is None:
        coarse = rng.normal(size=tuple(max(2, s // 8) for s in shape)).astype(np.float32)
        zoom = [s / c for s, c in zip(shape, coarse.shape, strict=True)]
        tex = ndi.zoom(coarse, zoom, order=1, prefilter=False)[: shape[0], : shape[1], : shape[2]]
        return tex * np.float32(0.0015)
    out = np.zeros(shape, dtype=np.float32)
    for length_um, amplitude in octaves:
        coarse_shape = tuple(max(2, int(np.ceil(s * v / length_um)) + 1) for s, v in zip(shape, voxel_size_um, strict=True))
        coarse = rng.normal(size=coarse_shape).astype(np.float32)
        zoom = [s / c for s, c in zip(shape, coarse_shape, strict=True)]
        tex = ndi.zoom(coarse, zoom, order=1, prefilter=False, grid_mode=True, mode="nearest")
        out += tex[: shape[0], : shape[1], : shape[2]] * np.float32(amplitude)
    return out


def paint_cell(contrast: np.ndarray, cell: CellInterior, shape: CellShape, mask_full: np.ndarray, grid: Grid,
               medium_ri: float, polarisation: float = 0.0, toward: np.ndarray | None = None,
               nucleus_waves: int = 5) -> None:
    """Write the cell's RI contrast (``n - medium_ri``) into ``contrast`` where ``mask_full`` is set.

    The nucleus follows the cell's shape at half its irregularity, from its first
    ``nucleus_waves`` (long) waves: membrane ruffles do not reach the nucleus.
    """
    box = grid.bbox(shape.center_um, shape.max_radius_um)
    if box is None:
        return
    m = mask_full[box]
    if not m.any():
        return
    z, y, x = grid.coords(box)
    local = np.full(m.shape, cell.cyto_ri - medium_ri, dtype=np.float32)
    local += texture(m.shape, grid.voxel_size_um, cell.texture_seed, cell.texture_octaves)
    nucleus = shape.with_(center_um=shape.center_um + shape.rotation @ (cell.nucleus_offset * shape.axes_um),
                          axes_um=shape.axes_um * cell.nucleus_scale,
                          wave_dirs=shape.wave_dirs[:nucleus_waves], wave_amps=shape.wave_amps[:nucleus_waves] * 0.5,
                          wave_phases=shape.wave_phases[:nucleus_waves])
    local += np.float32(cell.nucleus_dri) * (nucleus.level(z, y, x) < 1.0)
    for nl in cell.nucleoli:
        pos = nucleus.center_um + nucleus.rotation @ (nl[:3] * nucleus.axes_um)
        _ball(local, box, grid, pos, float(nl[3]), add=float(cell.nucleolus_dri))
    for g in cell.granules:
        pos = shape.center_um + shape.rotation @ (g[:3] * shape.axes_um)
        if toward is not None and polarisation > 0:
            pos = pos + polarisation * (toward - pos) * 0.7
        _ball(local, box, grid, pos, float(g[3]), value=float(g[4] - medium_ri))
    contrast[box] = np.where(m, local, contrast[box])


def _ball(local: np.ndarray, box: tuple[slice, ...], grid: Grid, center_um: np.ndarray, radius_um: float,
          value: float | None = None, add: float | None = None) -> None:
    """Set (``value``) or raise (``add``) the voxels of ``local`` (the array of ``box``) inside a ball."""
    sub = grid.bbox(center_um, radius_um)
    if sub is None:
        return
    inter = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(sub, box, strict=True))
    if any(s.start >= s.stop for s in inter):
        return
    z, y, x = grid.coords(inter)  # type: ignore[arg-type]
    inside = ((z - np.float32(center_um[0])) ** 2 + (y - np.float32(center_um[1])) ** 2
              + (x - np.float32(center_um[2])) ** 2) < np.float32(radius_um**2)
    view = local[tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(inter, box, strict=True))]
    if value is not None:
        view[inside] = np.float32(value)
    else:
        view[inside] += np.float32(add)
