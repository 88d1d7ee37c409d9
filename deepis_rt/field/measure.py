"""Cells, synapses and their quality on a large field, one conjugate at a time.

The measurements are :func:`deepis_rt.analysis.analyze`'s, made on crops read from the store
around each cell's (or contact's) bounding box, with the same global coordinates, clipping and
arithmetic as the whole-field analysis: the results are equal, and memory depends on a
conjugate's size, not the field's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from deepis_rt.analysis.contact import ContactEstimate, NetworkError
from deepis_rt.analysis.frame import Cell, FrameAnalysis, Synapse, measure_pairs
from deepis_rt.analysis.masks import LABEL_IS
from deepis_rt.analysis.measure import surface_area_um2
from deepis_rt.analysis.quality import (
    CELL_AT_EDGE,
    FAINT_CELL,
    SEAM_MARGIN_VOXELS,
    TrainingRange,
    background_ri,
    faint_cells,
    input_reasons,
    join_reasons,
    judge_synapses,
    seam_planes,
)
from deepis_rt.field.labels import CellTable
from deepis_rt.field.plan import FieldPlan
from deepis_rt.field.store import FieldStore

__all__ = ["measure_cells", "measure_synapses", "field_analysis", "assess_field"]

log = logging.getLogger(__name__)

Box = tuple[slice, slice, slice]


def _grow(sl: Sequence[slice], margin: int, shape: Sequence[int]) -> Box:
    return tuple(slice(max(s.start - margin, 0), min(s.stop + margin, n)) for s, n in zip(sl, shape, strict=True))  # type: ignore[return-value]


def _intersect(a: Sequence[slice], b: Sequence[slice]) -> Box | None:
    out = tuple(slice(max(x.start, y.start), min(x.stop, y.stop)) for x, y in zip(a, b, strict=True))
    return None if any(s.start >= s.stop for s in out) else out  # type: ignore[return-value]


def _concentration(ri: np.ndarray, medium_ri: float, alpha_um3_per_pg: float) -> np.ndarray:
    return (ri - np.float32(medium_ri)) / np.float32(alpha_um3_per_pg)


def measure_cells(store: FieldStore, table: CellTable, ri: Any, voxel_size_um: Sequence[float],
                  medium_ri: float = 1.337, alpha_um3_per_pg: float = 0.185) -> list[Cell]:
    """Every cell's volume, surface, mean RI, dry mass and centroid, from a crop around it.

    ``ri`` is a region source of RI on the field's grid (e.g. :class:`~deepis_rt.field.RIRegions`)
    or None (RI-based quantities NaN).
    """
    vs = tuple(float(v) for v in voxel_size_um)
    voxel_volume = float(np.prod(vs))
    cells = []
    for idx in range(1, table.n_tcell + table.n_target + 1):
        sl = table.slices(idx)
        m = np.asarray(store.cell_labels[sl]) == idx
        zz, yy, xx = np.nonzero(m)
        mean_ri = dry = math.nan
        if ri is not None:
            r = np.asarray(ri[sl], dtype=np.float32)
            mean_ri = float(r[m].mean())
            dry = float(_concentration(r, medium_ri, alpha_um3_per_pg)[m].sum()) * voxel_volume
        cells.append(Cell(
            cell_id=idx, kind="tcell" if idx <= table.n_tcell else "target",
            volume_um3=float(int(m.sum()) * voxel_volume), surface_um2=surface_area_um2(m, vs),
            mean_ri=mean_ri, dry_mass_pg=dry,
            z_um=float((zz.mean() + sl[0].start) * vs[0]), y_um=float((yy.mean() + sl[1].start) * vs[1]),
            x_um=float((xx.mean() + sl[2].start) * vs[2])))
    return cells


def measure_synapses(store: FieldStore, table: CellTable, ri: Any, voxel_size_um: Sequence[float],
                     threshold_um: float, medium_ri: float = 1.337, alpha_um3_per_pg: float = 0.185,
                     is_dilation_voxels: int = 2, min_is_area_um2: float = 0.25,
                     network_error: NetworkError | None = None) -> tuple[list[Synapse], dict[int, ContactEstimate]]:
    """One synapse per touching CAR-T / target pair, measured on crops around the contact."""
    n = table.n_tcell + table.n_target
    return measure_pairs(store.cell_labels, store.distance, ri, [table.slices(k) for k in range(1, n + 1)],
                         table.n_tcell, table.n_target, voxel_size_um, threshold_um, table.background_noise_um,
                         medium_ri, alpha_um3_per_pg, is_dilation_voxels, min_is_area_um2, network_error)


def field_analysis(store: FieldStore, table: CellTable, ri: Any, voxel_size_um: Sequence[float], threshold_um: float,
                   medium_ri: float = 1.337, **options: Any) -> FrameAnalysis:
    """The field's :class:`~deepis_rt.analysis.FrameAnalysis`; its ``labels`` and ``cell_labels``
    are the store's zarr arrays (read regions of them; ``numpy.asarray`` loads them whole)."""
    alpha = options.pop("alpha_um3_per_pg", 0.185)
    cells = measure_cells(store, table, ri, voxel_size_um, medium_ri, alpha)
    synapses, contacts = measure_synapses(store, table, ri, voxel_size_um, threshold_um, medium_ri, alpha, **options)
    return FrameAnalysis(labels=store.labels, cell_labels=store.cell_labels, cells=cells, synapses=synapses,
                         voxel_size_um=tuple(float(v) for v in voxel_size_um), threshold_um=float(threshold_um),
                         background_noise_um=table.background_noise_um, contacts=contacts)


def _synapse_box(store: FieldStore, table: CellTable, tcell_id: int, target_id: int, reach: int = 3) -> Box | None:
    """As :func:`deepis_rt.analysis.quality.synapse_box`, from the cells' boxes and a crop of the labels."""
    near = _intersect(_grow(table.slices(tcell_id), reach, store.shape), _grow(table.slices(target_id), reach, store.shape))
    if near is None:
        return None
    found = ndi.find_objects((np.asarray(store.labels[near]) == LABEL_IS).astype(np.int8))
    if not found or found[0] is None:
        return None
    return tuple(slice(s.start + n.start, s.stop + n.start) for s, n in zip(found[0], near, strict=True))  # type: ignore[return-value]


def assess_field(analysis: FrameAnalysis, store: FieldStore, table: CellTable, ri: Any, plan: FieldPlan,
                 trained: TrainingRange, model_voxel_size_um: Sequence[float]) -> str:
    """Each synapse's ``quality`` and the field's, as :func:`~deepis_rt.analysis.quality.assess_frame`
    judges a frame without test-time augmentation (input range, cells cut by the field's edge,
    contacts near a tile seam), from boxes and crops instead of whole volumes."""
    vs = analysis.voxel_size_um
    background = background_ri(ri) if ri is not None else math.nan
    frame_reasons = input_reasons(ri, vs, trained, background)
    edge = set()
    for k in range(1, table.n_tcell + table.n_target + 1):
        b = table.box[k - 1]
        if (b[:3] == 0).any() or (b[3:] == np.asarray(store.shape)).any():
            edge.add(k)
    seams = seam_planes(plan.tiling.starts, plan.tiling.tile_zyx, plan.shape, store.shape)
    margin = [SEAM_MARGIN_VOXELS * m / v for m, v in zip(model_voxel_size_um, vs, strict=True)]
    faint = faint_cells(analysis.cells, background)
    frame_reasons |= judge_synapses(analysis.synapses, set(frame_reasons), edge,
                                    lambda syn: _synapse_box(store, table, syn.tcell_id, syn.target_id),
                                    seams, margin, faint=faint, contacts=analysis.contacts)
    if edge:
        frame_reasons.add(CELL_AT_EDGE)
    if faint:
        frame_reasons.add(FAINT_CELL)
    return join_reasons(frame_reasons)
