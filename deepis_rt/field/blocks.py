"""Block execution: the distance map of one output block, from the global tiles that overlap it.

Each block runs the tiles its :class:`~deepis_rt.field.plan.Block` lists, in the global tile
order, through a Segmenter's runner, blends them into a block-sized buffer with the region-aware
:class:`~deepis_rt.runtime.tiling.BlendMerger` (the plan's global weight sums), and writes the
buffer into the store's chunks (the block is a whole number of chunks). Every voxel therefore
receives the same tile outputs, added in the same order, divided by the same weight sums as in
the in-memory path: with a runner whose output for a tile depends only on that tile (every runner
at batch size 1), the block equals the in-memory distance map bit for bit; batched runners may
differ in the last bits of float32.

Inputs are any region source: an object with ``.shape``, ``.dtype`` and NumPy slicing
(``numpy.ndarray``, ``numpy.memmap``, a zarr array, an h5py dataset); only one tile is read at a
time, and its values are decoded to RI (integers in the RI x 10 000 convention, or an explicit
scale/offset) and checked tile by tile, as the in-memory path checks the whole volume.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepis_rt.errors import InputError
from deepis_rt.field.plan import Block, FieldPlan
from deepis_rt.field.store import FieldStore
from deepis_rt.io.ri import RIDecoder, RIScale
from deepis_rt.runtime.tiling import BlendMerger, TilingPlan, iter_batches

__all__ = ["RIRegions", "BlockResult", "blend_block", "run_block", "tile_transform"]

log = logging.getLogger(__name__)


class RIRegions:
    """A region source read as RI: slicing returns decoded, checked float32 RI.

    Parameters
    ----------
    source : array-like
        ``.shape`` (Z, Y, X), ``.dtype`` and NumPy slicing.
    where : str
        Prefix of error messages (e.g. the file name).
    ri_scale, ri_offset : float, optional
        The source holds RI as ``value x ri_scale + ri_offset`` (see
        :meth:`~deepis_rt.runtime.Segmenter.segment`).
    """

    def __init__(self, source: Any, where: str = "segment-field", ri_scale: float | None = None,
                 ri_offset: float | None = None) -> None:
        shape = getattr(source, "shape", None)
        dtype = getattr(source, "dtype", None)
        if shape is None or dtype is None or not hasattr(source, "__getitem__"):
            raise InputError(f"{where}: {type(source).__name__} is not a region source; expected an array-like "
                             "with .shape, .dtype and NumPy slicing (ndarray, memmap, zarr array, h5py dataset)")
        if len(shape) != 3 or min(shape) < 1:
            raise InputError(f"{where}: shape {tuple(shape)}: expected a 3-D volume (Z, Y, X)")
        if np.dtype(dtype).kind not in "iuf":
            raise InputError(f"{where}: element type {dtype} holds no refractive index; expected float RI or integers")
        self.source = source
        self.where = where
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(np.float32)
        self.ndim = 3
        self.source_dtype = np.dtype(dtype)
        self._scale = RIScale.from_args(ri_scale, ri_offset, where)
        self._decoder = RIDecoder(where)

    def __getitem__(self, key: Any) -> np.ndarray:
        values = np.asarray(self.source[key])
        return np.asarray(self._decoder(values, self.where, self._scale), dtype=np.float32)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]


def tile_transform(normalization: Any) -> Callable[[np.ndarray, np.ndarray], Any]:
    """``transform(src, dst)`` for :func:`~deepis_rt.runtime.tiling.iter_batches`: normalise ``src`` into ``dst``."""
    return lambda src, dst: normalization.apply(src, out=dst)


def blend_block(
    runner: Any,
    source: Any,
    tiling: TilingPlan,
    region: Sequence[slice],
    tiles: Sequence[tuple[int, int, int]],
    transform: Callable[[np.ndarray, np.ndarray], Any] | None = None,
    pad_value: float = 0.0,
    batch_size: int = 1,
) -> np.ndarray:
    """The blended output of ``region``: run ``tiles`` (global tile starts) and merge them.

    ``source`` is read one tile at a time; the result is a float32 array of the region's shape.
    """
    merger = BlendMerger(tiling, region=region)
    pending: deque[list[tuple[int, int, int]]] = deque()

    def batches() -> Iterator[np.ndarray]:
        for batch, locs in iter_batches(source, tiling, batch_size, transform, pad_value, locations=tiles):
            pending.append(locs)
            yield batch

    stream = runner.infer_stream if hasattr(runner, "infer_stream") else (lambda bs: map(runner, bs))
    for output in stream(batches()):
        locs = pending.popleft()
        output = np.asarray(output)
        for i, loc in enumerate(locs):
            merger.aggregate(output[i, 0], loc)
    return merger.finalize()


@dataclass(frozen=True)
class BlockResult:
    """What :func:`run_block` did: the block, how many tiles it ran and how long it took."""

    index: int
    tiles_run: int
    seconds: float


def run_block(segmenter: Any, source: Any, plan: FieldPlan, block: Block | int, store: FieldStore,
              *, ri_scale: float | None = None, ri_offset: float | None = None) -> BlockResult:
    """Compute one block's distance map and write it into ``store.distance``.

    Parameters
    ----------
    segmenter : Segmenter
        Its runner, normalisation, medium RI and batch size are used (as its in-memory path does).
    source : region source or RIRegions
        The field on the model's grid (see the module docstring); wrapped in :class:`RIRegions`
        unless it is one already.
    plan : FieldPlan
        The field's plan (:func:`~deepis_rt.field.plan.plan_field`).
    block : Block or int
        The block, or its index in ``plan.blocks``.
    store : FieldStore
        Created for this plan (same shape and chunks).
    ri_scale, ri_offset : float, optional
        How the source holds RI, when it is not RI or RI x 10 000 (see :class:`RIRegions`).
    """
    t0 = time.perf_counter()
    if isinstance(block, (int, np.integer)):
        block = plan.blocks[int(block)]
    if tuple(store.shape) != plan.shape or tuple(store.chunks) != plan.chunks:
        raise InputError(f"run_block: the store {store.path} holds {store.shape} in chunks {store.chunks}, the plan "
                         f"{plan.shape} in chunks {plan.chunks}; create the store for this plan")
    if tuple(source.shape) != plan.shape:
        raise InputError(f"run_block: the source holds {tuple(source.shape)} voxels, the plan {plan.shape}")
    regions = source if isinstance(source, RIRegions) else RIRegions(source, "run_block", ri_scale, ri_offset)
    norm = segmenter.normalization
    pad_value = float(np.float32((segmenter.medium_ri - norm.offset) / norm.scale))  # the medium, normalised
    values = blend_block(segmenter.runner, regions, plan.tiling, block.region, block.tiles,
                         tile_transform(norm), pad_value, segmenter.batch_size)
    store.distance[block.region] = values
    seconds = time.perf_counter() - t0
    log.debug("run_block %d: %d tiles over %s in %.1f s", block.index, len(block.tiles), block.shape, seconds)
    return BlockResult(block.index, len(block.tiles), seconds)
