"""Cell labels of a large field, block by block, with cells crossing block borders merged exactly once.

The rules are :func:`deepis_rt.analysis.analyze`'s (:mod:`deepis_rt.analysis.masks`): CAR-T mask
``distance > t``, target mask ``distance < -t``, 6-connected components of each, fragments below
the minimum volume dropped, CAR-T cells numbered first then targets, each in raster order of their
first voxel (the order ``scipy.ndimage.label`` gives on the whole field), and the label volume
(IS = overlap of both masks dilated by 2 voxels). Three passes over the blocks, each block
independent of the others:

1. :func:`label_block` labels the components inside one block (``scipy.ndimage.label``), writes
   them to the store's ``provisional`` array (CAR-T ids positive, target ids negative) and
   returns per component its voxel count, first voxel and bounding box, and the block's samples of
   the background noise.
2. :func:`merge_components` joins components that touch across a block face (6-connectivity:
   only the two facing planes matter) with ``scipy.sparse.csgraph.connected_components``, sums
   their counts, drops fragments, numbers the cells, and gives each block its lookup table.
   :func:`relabel_block` writes the final ids into ``cell_labels``.
3. :func:`paint_block` writes the label volume, reading the cell ids with a halo of the IS
   dilation, so that the IS near a block border equals the whole-field one.

Memory is one block (plus a halo) at a time, and a few numbers per component.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from deepis_rt.analysis.masks import LABEL_IS, LABEL_TARGET, LABEL_TCELL, is_mask
from deepis_rt.field.plan import Block, FieldPlan
from deepis_rt.field.store import FieldStore

__all__ = ["Components", "BlockComponents", "CellTable", "label_block", "merge_components", "relabel_block",
           "paint_block", "paint_thresholds_block", "label_field"]

log = logging.getLogger(__name__)

_CROSS = ndi.generate_binary_structure(3, 1)


@dataclass
class Components:
    """Connected components of one mask in one block (arrays of one entry per component)."""

    count: np.ndarray  # voxels, int64
    first: np.ndarray  # global raster index of the first voxel, int64
    box: np.ndarray  # (n, 6) global bounding box: z0, y0, x0, z1, y1, x1 (stops exclusive), int64

    @classmethod
    def empty(cls) -> Components:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 6), np.int64))

    def __len__(self) -> int:
        return len(self.count)


@dataclass
class BlockComponents:
    """What :func:`label_block` found in one block."""

    index: int
    tcell: Components
    target: Components
    noise_samples: np.ndarray = field(repr=False)  # |distance| <= t on the global 2 x 4 x 4 subsampling grid


@dataclass
class CellTable:
    """The field's cells after merging: ids 1..n_tcell are CAR-T, then targets.

    ``box[k - 1]`` is cell ``k``'s bounding box (global; z0, y0, x0, z1, y1, x1); ``luts[i]`` maps
    block ``i``'s provisional ids to cell ids (``(tcell_lut, target_lut)``, 0 for dropped fragments).
    """

    n_tcell: int
    n_target: int
    box: np.ndarray
    luts: list[tuple[np.ndarray, np.ndarray]]
    background_noise_um: float
    dropped: int

    def slices(self, cell_id: int) -> tuple[slice, slice, slice]:
        b = self.box[cell_id - 1]
        return (slice(int(b[0]), int(b[3])), slice(int(b[1]), int(b[4])), slice(int(b[2]), int(b[5])))


def _components(lab: np.ndarray, n: int, origin: Sequence[int], shape: Sequence[int]) -> Components:
    if n == 0:
        return Components.empty()
    count = np.bincount(lab.ravel(), minlength=n + 1)[1:].astype(np.int64)
    first = np.empty(n, np.int64)
    box = np.empty((n, 6), np.int64)
    _, Y, X = (int(s) for s in shape)
    oz, oy, ox = (int(o) for o in origin)
    for k, sl in enumerate(ndi.find_objects(lab)):
        box[k] = (sl[0].start + oz, sl[1].start + oy, sl[2].start + ox, sl[0].stop + oz, sl[1].stop + oy, sl[2].stop + ox)
        # the first voxel in raster order lies in the box's first plane; within it, (y, x) order
        # over the box's columns is the field's order
        plane = lab[sl[0].start, sl[1], sl[2]] == k + 1
        y, x = np.unravel_index(int(np.argmax(plane)), plane.shape)
        first[k] = (sl[0].start + oz) * Y * X + (y + sl[1].start + oy) * X + (x + sl[2].start + ox)
    return Components(count, first, box)


def label_block(store: FieldStore, block: Block, threshold_um: float) -> BlockComponents:
    """Pass 1 on one block: components of both masks into ``store.provisional``; their facts."""
    region = block.region
    d = np.asarray(store.distance[region])
    t = np.float32(threshold_um)
    tcell, n_t = ndi.label(d > t, structure=_CROSS)
    target, n_b = ndi.label(d < -t, structure=_CROSS)
    origin = [r.start for r in region]
    comps_t = _components(tcell, n_t, origin, store.shape)
    comps_b = _components(target, n_b, origin, store.shape)
    provisional = tcell.astype(np.int32, copy=False)
    provisional -= target.astype(np.int32, copy=False)  # the masks are disjoint: targets negative
    del tcell, target
    store.provisional[region] = provisional
    # the analysis' noise estimate samples distance[::2, ::4, ::4] of the whole field
    phase = [(-o) % s for o, s in zip(origin, (2, 4, 4), strict=True)]
    sub = np.abs(d[phase[0]::2, phase[1]::4, phase[2]::4]).ravel()
    return BlockComponents(block.index, comps_t, comps_b, sub[sub <= threshold_um].copy())


def _face_pairs(store: FieldStore, plan: FieldPlan) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(block, id) pairs of components touching across each block face, for CAR-T and targets."""
    grid = plan.grid()
    index = np.arange(len(plan.blocks)).reshape(grid)
    pairs_t: list[np.ndarray] = []
    pairs_b: list[np.ndarray] = []
    for axis in range(3):
        for low in index.reshape(-1):
            pos = list(np.unravel_index(low, grid))
            if pos[axis] + 1 >= grid[axis]:
                continue
            pos[axis] += 1
            high = int(index[tuple(pos)])
            a_reg, b_reg = list(plan.blocks[low].region), list(plan.blocks[high].region)
            a_reg[axis] = slice(a_reg[axis].stop - 1, a_reg[axis].stop)
            b_reg[axis] = slice(b_reg[axis].start, b_reg[axis].start + 1)
            a = np.asarray(store.provisional[tuple(a_reg)]).ravel()
            b = np.asarray(store.provisional[tuple(b_reg)]).ravel()
            for sign, out in ((1, pairs_t), (-1, pairs_b)):
                touch = (a * sign > 0) & (b * sign > 0)
                if touch.any():
                    ids = np.unique(np.stack([a[touch] * sign, b[touch] * sign], axis=1), axis=0)
                    blocks = np.broadcast_to(np.array([[low, high]]), ids.shape)
                    out.append(np.concatenate([blocks, ids], axis=1))  # low block, high block, low id, high id
    return pairs_t, pairs_b


def _merge_kind(per_block: list[Components], pairs: list[np.ndarray], voxel_volume_um3: float,
                min_volume_um3: float, first_id: int) -> tuple[int, np.ndarray, list[np.ndarray], int]:
    """Join one mask's components; return (kept, boxes in id order, per-block LUTs, dropped)."""
    offsets = np.cumsum([0] + [len(c) for c in per_block])
    total = int(offsets[-1])
    luts = [np.zeros(len(c) + 1, np.int32) for c in per_block]
    if total == 0:
        return 0, np.zeros((0, 6), np.int64), luts, 0
    if pairs:
        p = np.concatenate(pairs)
        rows = offsets[p[:, 0]] + p[:, 2] - 1
        cols = offsets[p[:, 1]] + p[:, 3] - 1
        graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(total, total))
        n, node_comp = connected_components(graph, directed=False)
    else:
        n, node_comp = total, np.arange(total)
    count = np.concatenate([c.count for c in per_block])
    first = np.concatenate([c.first for c in per_block])
    box = np.concatenate([c.box for c in per_block])
    comp_count = np.bincount(node_comp, weights=count, minlength=n).astype(np.int64)
    comp_first = np.full(n, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(comp_first, node_comp, first)
    comp_lo = np.full((n, 3), np.iinfo(np.int64).max, np.int64)
    comp_hi = np.zeros((n, 3), np.int64)
    np.minimum.at(comp_lo, node_comp, box[:, :3])
    np.maximum.at(comp_hi, node_comp, box[:, 3:])
    keep = comp_count * voxel_volume_um3 >= min_volume_um3  # as analysis.masks.label_instances
    kept = np.flatnonzero(keep)
    kept = kept[np.argsort(comp_first[kept], kind="stable")]  # raster order of the first voxel
    cell_id = np.zeros(n, np.int32)
    cell_id[kept] = np.arange(first_id, first_id + len(kept), dtype=np.int32)
    node_id = cell_id[node_comp]
    for i, lut in enumerate(luts):
        lut[1:] = node_id[offsets[i] : offsets[i + 1]]
    return len(kept), np.concatenate([comp_lo[kept], comp_hi[kept]], axis=1), luts, int(n - len(kept))


def merge_components(store: FieldStore, plan: FieldPlan, found: Sequence[BlockComponents], voxel_size_um: Sequence[float],
                     min_volume_um3: float) -> CellTable:
    """Pass 2: join components across block faces, drop fragments, number the cells."""
    found = sorted(found, key=lambda c: c.index)
    if [c.index for c in found] != list(range(len(plan.blocks))):
        raise ValueError("merge_components: every block of the plan must be labelled first")
    voxel_volume = float(np.prod([float(v) for v in voxel_size_um]))
    pairs_t, pairs_b = _face_pairs(store, plan)
    n_t, box_t, luts_t, drop_t = _merge_kind([c.tcell for c in found], pairs_t, voxel_volume, min_volume_um3, 1)
    n_b, box_b, luts_b, drop_b = _merge_kind([c.target for c in found], pairs_b, voxel_volume, min_volume_um3, n_t + 1)
    samples = np.concatenate([c.noise_samples for c in found])
    noise = float(1.4826 * np.median(samples)) if samples.size else 0.0  # analysis.frame.background_noise_um
    log.debug("field labels: %d CAR-T, %d target, %d fragment(s) dropped", n_t, n_b, drop_t + drop_b)
    return CellTable(n_t, n_b, np.concatenate([box_t, box_b]), list(zip(luts_t, luts_b, strict=True)), noise,
                     drop_t + drop_b)


def relabel_block(store: FieldStore, block: Block, luts: tuple[np.ndarray, np.ndarray]) -> None:
    """Pass 2b on one block: provisional ids -> cell ids in ``store.cell_labels``."""
    provisional = np.asarray(store.provisional[block.region])
    lut_t, lut_b = luts
    cells = np.where(provisional > 0, lut_t[np.maximum(provisional, 0)], lut_b[np.maximum(-provisional, 0)])
    store.cell_labels[block.region] = cells.astype(np.int32, copy=False)


def paint_block(store: FieldStore, block: Block, n_tcell: int, n_target: int, dilation_voxels: int = 2) -> None:
    """Pass 3 on one block: the label volume (0, 1 CAR-T, 2 target, 3 IS) into ``store.labels``."""
    halo = _halo(block, dilation_voxels, store.shape)
    cells = np.asarray(store.cell_labels[halo])
    _paint(store, block, halo, (cells > 0) & (cells <= n_tcell), cells > n_tcell, bool(n_tcell and n_target),
           dilation_voxels)


def paint_thresholds_block(store: FieldStore, block: Block, threshold_um: float, any_tcell: bool, any_target: bool,
                           dilation_voxels: int = 2) -> None:
    """The paper's labels straight from the distance map (no fragments dropped), as
    :func:`~deepis_rt.runtime.result.labels_from_distance` without the analysis."""
    halo = _halo(block, dilation_voxels, store.shape)
    d = np.asarray(store.distance[halo])
    t = np.float32(threshold_um)
    _paint(store, block, halo, d > t, d < -t, any_tcell and any_target, dilation_voxels)


def _halo(block: Block, voxels: int, shape: Sequence[int]) -> tuple[slice, ...]:
    return tuple(slice(max(r.start - voxels, 0), min(r.stop + voxels, n)) for r, n in zip(block.region, shape, strict=True))


def _paint(store: FieldStore, block: Block, halo: tuple[slice, ...], tcell: np.ndarray, target: np.ndarray,
           both: bool, dilation_voxels: int) -> None:
    labels = np.zeros(tcell.shape, np.uint8)
    labels[tcell] = LABEL_TCELL
    labels[target] = LABEL_TARGET
    if both:  # as masks.label_volume, which draws the IS when the whole field has both kinds
        labels[is_mask(tcell, target, dilation_voxels)] = LABEL_IS
    inner = tuple(slice(r.start - h.start, r.stop - h.start) for r, h in zip(block.region, halo, strict=True))
    store.labels[block.region] = labels[inner]


def label_field(store: FieldStore, plan: FieldPlan, voxel_size_um: Sequence[float], threshold_um: float,
                min_volume_um3: float, dilation_voxels: int = 2) -> CellTable:
    """All three passes over every block, in this process (the Ray mosaic spreads the per-block passes)."""
    found = [label_block(store, block, threshold_um) for block in plan]
    table = merge_components(store, plan, found, voxel_size_um, min_volume_um3)
    for block in plan:
        relabel_block(store, block, table.luts[block.index])
    for block in plan:
        paint_block(store, block, table.n_tcell, table.n_target, dilation_voxels)
    return table
