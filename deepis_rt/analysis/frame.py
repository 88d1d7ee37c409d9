"""``analyze()``: masks, cells, synapses and their measurements for one frame.

Pure NumPy in, NumPy out; no model involved (works on any signed distance map).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from deepis_rt.analysis.contact import ContactEstimate, NetworkError, contact_surface
from deepis_rt.analysis.masks import (
    cell_masks,
    default_threshold_um,
    dilate,
    label_instances,
    label_volume,
)
from deepis_rt.analysis.measure import surface_area_um2
from deepis_rt.core.labels import check_voxel_size
from deepis_rt.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["Cell", "Synapse", "FrameAnalysis", "analyze", "measure_pairs", "DEFAULT_MIN_CELL_VOLUME_UM3"]

#: fragments below this volume are dropped; a CAR-T cell (7-9 um across) is ~180-380 um^3
DEFAULT_MIN_CELL_VOLUME_UM3 = 20.0
#: IS contacts below this area (um^2) are not reported as synapses
DEFAULT_MIN_IS_AREA_UM2 = 0.25


@dataclass
class Cell:
    """One cell in one frame (columns of ``cells.csv``).

    ``cell_id`` is unique within the frame (the value in ``FrameAnalysis.cell_labels``);
    ``track_id`` is filled by :class:`~deepis_rt.analysis.SynapseTracker`.
    Centroids are in um from the centre of voxel (0, 0, 0).
    """

    cell_id: int
    kind: str  # "tcell" | "target"
    volume_um3: float
    surface_um2: float
    mean_ri: float
    dry_mass_pg: float
    z_um: float
    y_um: float
    x_um: float
    track_id: int | None = None


@dataclass
class Synapse:
    """One CAR-T / target contact in one frame (columns of ``synapses.csv``).

    ``is_area_um2`` is the contact-surface area (measured from the two cells' masks, see
    :func:`~deepis_rt.analysis.contact.contact_surface`) and ``is_area_err_um2``
    its one-sigma uncertainty; the IS mean RI, dry mass and areal density use the
    paper's IS mask (dilation overlap). ``tcell_track`` / ``target_track`` are
    filled by the tracker; ``quality`` (``"ok"`` or reasons, see
    :mod:`deepis_rt.analysis.quality`) by the Segmenter (``""``: not assessed).
    """

    synapse_id: int
    tcell_id: int
    target_id: int
    is_area_um2: float
    is_mean_ri: float
    is_dry_mass_pg: float
    is_density_fg_um2: float
    tcell_track: int | None = None
    target_track: int | None = None
    is_area_err_um2: float = math.nan
    quality: str = ""


@dataclass
class FrameAnalysis:
    """Everything measured on one frame.

    Attributes
    ----------
    labels : ndarray of uint8, shape (Z, Y, X)
        0 background, 1 CAR-T, 2 target, 3 IS (paper's dilation overlap).
    cell_labels : ndarray of int32
        Instance ids (``Cell.cell_id``), 0 outside cells.
    cells, synapses : list
    voxel_size_um : tuple of 3 floats
    threshold_um : float
        The mask threshold used.
    background_noise_um : float
        Robust spread of the distance map in the background (0 for ground truth).
    contacts : dict
        ``synapse_id`` -> the :class:`~deepis_rt.analysis.contact.ContactEstimate` behind it
        (the contact gap, the rim's opening rate and ambiguity that its uncertainty uses).
    """

    labels: np.ndarray
    cell_labels: np.ndarray
    cells: list[Cell] = field(default_factory=list)
    synapses: list[Synapse] = field(default_factory=list)
    voxel_size_um: tuple[float, float, float] = (1.0, 1.0, 1.0)
    threshold_um: float = 0.0
    background_noise_um: float = 0.0
    contacts: dict[int, ContactEstimate] = field(default_factory=dict)

    def cell(self, cell_id: int) -> Cell:
        """The cell with this ``cell_id`` (KeyError if absent)."""
        for c in self.cells:
            if c.cell_id == cell_id:
                return c
        raise KeyError(f"analysis | no cell with cell_id={cell_id} in this frame")


def _grow(sl: tuple[slice, ...], margin: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    return tuple(
        slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(sl, shape, strict=True)
    )


def _intersect(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...] | None:
    out = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b, strict=True))
    return None if any(s.start >= s.stop for s in out) else out


def background_noise_um(distance: np.ndarray, threshold_um: float) -> float:
    """Robust noise level of the distance map where it should be 0 (background, zero band).

    1.4826 x the median of ``|distance|`` over the voxels with ``|distance| <= threshold_um``
    (subsampled 2 x 4 x 4 for speed); 0 for ground-truth maps.
    """
    sub = np.abs(distance[::2, ::4, ::4])
    sub = sub[sub <= threshold_um]
    return float(1.4826 * np.median(sub)) if sub.size else 0.0


def _check_inputs(distance, ri) -> tuple[np.ndarray, np.ndarray | None]:
    d = np.asarray(distance)
    if d.ndim != 3:
        raise InputError(
            f"analysis | distance map of shape {d.shape}: expected a 3-D volume (Z, Y, X); "
            "squeeze batch/channel axes first"
        )
    d = d.astype(np.float32, copy=False)
    if not np.isfinite(d).all():
        raise InputError("analysis | distance map contains NaN or Inf; check the model output")
    r = None
    if ri is not None:
        r = np.asarray(ri)
        if r.shape != d.shape:
            raise InputError(
                f"analysis | RI volume of shape {r.shape} does not match the distance map {d.shape}; "
                "pass the RI resampled to the distance map's grid, or ri=None"
            )
        r = r.astype(np.float32, copy=False)
    return d, r


def analyze(
    distance: np.ndarray,
    ri: np.ndarray | None,
    voxel_size_um: Sequence[float],
    medium_ri: float = 1.337,
    min_cell_volume_um3: float = DEFAULT_MIN_CELL_VOLUME_UM3,
    alpha_um3_per_pg: float = 0.185,
    *,
    threshold_um: float | None = None,
    is_dilation_voxels: int = 2,
    min_is_area_um2: float = DEFAULT_MIN_IS_AREA_UM2,
    network_error: NetworkError | None = None,
) -> FrameAnalysis:
    """Segment cells and synapses in a signed distance map and measure them.

    Parameters
    ----------
    distance : ndarray, shape (Z, Y, X)
        Signed distance map in um (positive: CAR-T, negative: target).
    ri : ndarray or None
        Refractive-index volume on the same grid; None makes every RI-based
        quantity (mean RI, dry mass, IS density) NaN.
    voxel_size_um : sequence of 3 floats
        Voxel size (Z, Y, X) in um.
    medium_ri : float
        Refractive index of the medium.
    min_cell_volume_um3 : float
        Connected components smaller than this are dropped (not cells).
    alpha_um3_per_pg : float
        Refractive-index increment (0.185 um^3/pg = 0.185 mL/g).
    threshold_um : float, optional
        Mask threshold (>= 0); default half the smallest voxel edge (the paper).
    is_dilation_voxels : int
        Dilation of each mask for the paper's IS mask.
    min_is_area_um2 : float
        Contacts with a smaller contact area are not reported.
    network_error : NetworkError, optional
        The network's part of ``is_area_err_um2`` for the checkpoint that made the map (the
        Segmenter passes the checkpoint's own); default the bundled checkpoint's
        (:data:`~deepis_rt.analysis.contact.DEFAULT_NETWORK_ERROR`).

    Returns
    -------
    FrameAnalysis
        Cells (CAR-T first, then targets, ids 1..n) and synapses (one per
        touching CAR-T/target pair). Empty lists for empty frames.
    """
    d, r = _check_inputs(distance, ri)
    vs = check_voxel_size(voxel_size_um)
    t = float(threshold_um) if threshold_um is not None else default_threshold_um(vs)
    if not (math.isfinite(t) and t >= 0):
        raise InputError(f"analysis | threshold_um={threshold_um!r}: expected a number >= 0 (um)")
    voxel_volume = float(np.prod(vs))

    tmask, bmask = cell_masks(d, t)
    t_lab, n_t, _ = label_instances(tmask, voxel_volume, min_cell_volume_um3)
    b_lab, n_b, _ = label_instances(bmask, voxel_volume, min_cell_volume_um3)
    tmask, bmask = t_lab > 0, b_lab > 0
    cell_labels = t_lab
    cell_labels[bmask] = b_lab[bmask] + n_t
    labels = label_volume(tmask, bmask, is_dilation_voxels)

    concentration = None if r is None else (r - np.float32(medium_ri)) / np.float32(alpha_um3_per_pg)
    boxes = ndi.find_objects(cell_labels)
    cells: list[Cell] = []
    for idx, sl in enumerate(boxes, start=1):
        if sl is None:
            continue
        m = cell_labels[sl] == idx
        n_vox = int(m.sum())
        zz, yy, xx = np.nonzero(m)
        mean_ri = dry = math.nan
        if r is not None:
            mean_ri = float(r[sl][m].mean())
            dry = float(concentration[sl][m].sum()) * voxel_volume
        cells.append(
            Cell(
                cell_id=idx,
                kind="tcell" if idx <= n_t else "target",
                volume_um3=float(n_vox * voxel_volume),
                surface_um2=surface_area_um2(m, vs),
                mean_ri=mean_ri,
                dry_mass_pg=dry,
                z_um=float((zz.mean() + sl[0].start) * vs[0]),
                y_um=float((yy.mean() + sl[1].start) * vs[1]),
                x_um=float((xx.mean() + sl[2].start) * vs[2]),
            )
        )

    noise_um = background_noise_um(d, t)
    synapses, contacts = measure_pairs(cell_labels, d, r, boxes, n_t, n_b, vs, t, noise_um, medium_ri,
                                       alpha_um3_per_pg, is_dilation_voxels, min_is_area_um2, network_error)
    log.debug("analyze: %d CAR-T, %d target, %d synapse(s)", n_t, n_b, len(synapses))
    return FrameAnalysis(
        labels=labels,
        cell_labels=cell_labels,
        cells=cells,
        synapses=synapses,
        voxel_size_um=vs,
        threshold_um=t,
        background_noise_um=noise_um,
        contacts=contacts,
    )


def measure_pairs(cell_labels: Any, distance: Any, ri: Any, boxes: Sequence[tuple[slice, ...]], n_tcell: int,
                  n_target: int, voxel_size_um: Sequence[float], threshold_um: float, noise_um: float,
                  medium_ri: float, alpha_um3_per_pg: float, is_dilation_voxels: int, min_is_area_um2: float,
                  network_error: NetworkError | None = None) -> tuple[list[Synapse], dict[int, ContactEstimate]]:
    """One synapse per touching CAR-T / target pair, each measured on crops around its contact.

    ``cell_labels``, ``distance`` and ``ri`` (or None) are anything sliced by boxes into arrays (NumPy
    arrays for a frame, the zarr arrays of a field too large for memory); ``boxes[k - 1]`` bounds cell
    ``k`` (CAR-T cells ``1..n_tcell``, then targets). Only crops around each pair are read.
    """
    vs = tuple(float(v) for v in voxel_size_um)
    voxel_volume = float(np.prod(vs))
    t = float(threshold_um)
    # zero-band voxels count as a cell's (for the contact surface) only when their sign is
    # above the background noise: restores exact distance maps, ignores noise of network output
    band_fraction = min(max(3.0 * noise_um / t, 0.05), 1.0) if t > 0 else 1.0
    synapses: list[Synapse] = []
    contacts: dict[int, ContactEstimate] = {}
    reach = 2 * is_dilation_voxels + 1
    shape = tuple(cell_labels.shape)
    for i in range(1, n_tcell + 1):
        for j in range(n_tcell + 1, n_tcell + n_target + 1):
            region = _intersect(_grow(boxes[i - 1], reach, shape), _grow(boxes[j - 1], reach, shape))
            if region is None:
                continue
            crop = _grow(region, is_dilation_voxels + 1, shape)
            lab = np.asarray(cell_labels[crop])
            is_ij = dilate(lab == i, is_dilation_voxels) & dilate(lab == j, is_dilation_voxels)
            # a neighbouring cell's voxels are not this pair's IS (nor counted in two synapses)
            is_ij &= (lab == 0) | (lab == i) | (lab == j)
            if not is_ij.any():
                continue
            is_box = ndi.find_objects(is_ij.astype(np.int8))[0]
            # contact estimate on a small crop around the IS (global coordinates)
            off = [s.start for s in crop]
            is_glob = tuple(slice(s.start + o, s.stop + o) for s, o in zip(is_box, off, strict=True))
            ccrop = _grow(is_glob, 4, shape)
            clab = np.asarray(cell_labels[ccrop])
            t_i, b_j = clab == i, clab == j
            # other cells in the crop must not be taken for this pair's zero band
            d_pair = np.where((clab == 0) | t_i | b_j, np.asarray(distance[ccrop]), np.float32(0))
            contact = contact_surface(t_i, b_j, d_pair, vs, t, band_fraction=band_fraction, noise_um=noise_um,
                                      network_error=network_error)
            area = contact.area_um2
            if not contact.in_contact or area < max(min_is_area_um2, 1e-9):
                continue
            is_mean_ri = is_dry = is_density = math.nan
            if ri is not None:
                r = np.asarray(ri[crop], dtype=np.float32)
                is_mean_ri = float(r[is_ij].mean())
                concentration = (r - np.float32(medium_ri)) / np.float32(alpha_um3_per_pg)
                is_dry = float(concentration[is_ij].sum()) * voxel_volume
                is_density = 1000.0 * is_dry / area
            synapses.append(Synapse(
                synapse_id=len(synapses) + 1, tcell_id=i, target_id=j, is_area_um2=area, is_mean_ri=is_mean_ri,
                is_dry_mass_pg=is_dry, is_density_fg_um2=is_density, is_area_err_um2=contact.area_err_um2))
            contacts[len(synapses)] = contact
    return synapses, contacts
