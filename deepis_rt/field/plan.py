"""The block plan of a large field: disjoint, chunk-aligned output blocks and the tiles each needs.

A field of view is cut into disjoint output **blocks**, each a whole number of the store's
**chunks** (so that blocks written at the same time, even by different machines, never share a
chunk). The network still runs on the field's one global tile plan
(:func:`~deepis_rt.runtime.tiling.plan_tiles`, exactly as the in-memory path plans it); each block
lists the global tiles that overlap it. Because the blended value of a voxel depends only on the
tiles that cover it, a block merged from its tiles in the global order holds the values the
in-memory path gives there (see :class:`~deepis_rt.runtime.tiling.BlendMerger`). Tiles that
overlap two blocks run once for each: the plan reports how many tile runs that makes.

The block size is the largest the memory budget allows (see :func:`plan_field` for the model of
peak memory), so that repeated tiles are few.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepis_rt.errors import ConfigError
from deepis_rt.runtime.tiling import TilingPlan, plan_tiles

__all__ = ["Block", "FieldPlan", "plan_field", "default_chunks", "BYTES_PER_BLOCK_VOXEL",
           "runner_budget_bytes", "DEFAULT_MAX_MEMORY_GB"]

log = logging.getLogger(__name__)

#: Host memory one voxel of a block costs at the peak of any pass: the float32 blend accumulator
#: (inference), or the distance, two masks, the component labels of scipy and the provisional and
#: final labels (labelling), whichever is larger, with room for NumPy temporaries.
BYTES_PER_BLOCK_VOXEL = 40
#: Default memory budget of the bounded-memory path, in GB (10^9 bytes).
DEFAULT_MAX_MEMORY_GB = 2.0
#: Chunk edge (Y and X) and depth (Z) of the store, as the time-lapse store uses.
CHUNK_YX, CHUNK_Z = 256, 64


def runner_budget_bytes(tile_zyx: Sequence[int], batch_size: int = 1) -> int:
    """The fixed part of the budget: what running tiles costs whatever the block size.

    The runner's activations (a U-Net of feature width 32 at full resolution holds about 48
    float32 values per voxel of the tile at its widest point) plus the tile batch, the runner's
    output, the blending weights and the tile read from the input (4 tile-sized float32 arrays
    per tile of the batch).
    """
    voxels = int(np.prod([int(t) for t in tile_zyx]))
    return int(voxels * 4 * (48 + 4 * max(1, int(batch_size))))


def default_chunks(shape: Sequence[int]) -> tuple[int, int, int]:
    """The store's chunks: up to 64 x 256 x 256 voxels (16 MiB of float32)."""
    z, y, x = (int(s) for s in shape)
    return (min(z, CHUNK_Z), min(y, CHUNK_YX), min(x, CHUNK_YX))


@dataclass(frozen=True)
class Block:
    """One output block: its region of the field and the global tiles that overlap it.

    Attributes
    ----------
    index : int
        Position in :attr:`FieldPlan.blocks` (raster order over the block grid).
    region : tuple of slice
        The block's voxels, (Z, Y, X), in field coordinates.
    tiles : tuple of (z, y, x)
        Starts of the global tiles overlapping the block, in the global tile order.
    """

    index: int
    region: tuple[slice, slice, slice]
    tiles: tuple[tuple[int, int, int], ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(s.stop - s.start for s in self.region)  # type: ignore[return-value]

    @property
    def voxels(self) -> int:
        return int(np.prod(self.shape))


@dataclass(frozen=True)
class FieldPlan:
    """What the planner chose and why; ``str(plan)`` is a readable summary (logged by the runs).

    Attributes
    ----------
    shape : (Z, Y, X)
        The field, on the model's grid.
    tiling : TilingPlan
        The one global tile plan (as the in-memory path uses).
    chunks : (Z, Y, X)
        The store's chunk shape.
    block_zyx : (Z, Y, X)
        Block shape (a multiple of ``chunks``; blocks at the far edges are smaller).
    blocks : tuple of Block
    max_memory_bytes : int
        The budget the plan was made for.
    fixed_bytes : int
        The part of the budget that does not depend on the block (:func:`runner_budget_bytes`).
    expected_peak_bytes : int
        The planner's estimate of the peak: ``fixed_bytes`` + the largest block x
        :data:`BYTES_PER_BLOCK_VOXEL`, not counting the input when the caller holds it in memory.
    reason : str
        Why this block size.
    """

    shape: tuple[int, int, int]
    tiling: TilingPlan
    chunks: tuple[int, int, int]
    block_zyx: tuple[int, int, int]
    blocks: tuple[Block, ...]
    max_memory_bytes: int
    fixed_bytes: int
    expected_peak_bytes: int
    reason: str

    @property
    def n_tiles(self) -> int:
        """Tiles of the global plan."""
        return self.tiling.n_tiles

    @property
    def tile_runs(self) -> int:
        """Tiles run over all blocks (a tile overlapping k blocks runs k times)."""
        return sum(len(b.tiles) for b in self.blocks)

    def grid(self) -> tuple[int, int, int]:
        """Blocks per axis."""
        return tuple(math.ceil(n / b) for n, b in zip(self.shape, self.block_zyx, strict=True))  # type: ignore[return-value]

    def describe(self) -> dict[str, Any]:
        """The plan's facts as JSON-ready values."""
        return {
            "shape_zyx": list(self.shape),
            "tile_zyx": list(self.tiling.tile_zyx),
            "tiles": self.n_tiles,
            "tile_runs": self.tile_runs,
            "chunks_zyx": list(self.chunks),
            "block_zyx": list(self.block_zyx),
            "blocks": len(self.blocks),
            "block_grid_zyx": list(self.grid()),
            "max_memory_gb": self.max_memory_bytes / 1e9,
            "fixed_budget_gb": self.fixed_bytes / 1e9,
            "expected_peak_gb": self.expected_peak_bytes / 1e9,
            "reason": self.reason,
        }

    def __str__(self) -> str:
        d = self.describe()
        return (f"field plan: {d['shape_zyx']} voxels in {d['blocks']} block(s) of up to {d['block_zyx']} "
                f"(grid {d['block_grid_zyx']}, chunks {d['chunks_zyx']}); {d['tiles']} tiles of {d['tile_zyx']}, "
                f"{d['tile_runs']} tile runs; expected peak {d['expected_peak_gb']:.2f} GB of the "
                f"{d['max_memory_gb']:.2f} GB budget (fixed part {d['fixed_budget_gb']:.2f} GB); {d['reason']}")

    def __iter__(self) -> Iterator[Block]:
        return iter(self.blocks)


def _tiles_overlapping(starts: Sequence[int], tile: int, lo: int, hi: int) -> list[int]:
    return [s for s in starts if s < hi and s + tile > lo]


def _make_blocks(shape: tuple[int, int, int], block: tuple[int, int, int], tiling: TilingPlan) -> tuple[Block, ...]:
    edges = [list(range(0, n, b)) for n, b in zip(shape, block, strict=True)]
    blocks = []
    for z0 in edges[0]:
        for y0 in edges[1]:
            for x0 in edges[2]:
                region = tuple(slice(a, min(a + b, n)) for a, b, n in zip((z0, y0, x0), block, shape, strict=True))
                per_axis = [_tiles_overlapping(st, t, r.start, r.stop)
                            for st, t, r in zip(tiling.starts, tiling.tile_zyx, region, strict=True)]
                tiles = tuple((z, y, x) for z in per_axis[0] for y in per_axis[1] for x in per_axis[2])
                blocks.append(Block(len(blocks), region, tiles))  # type: ignore[arg-type]
    return tuple(blocks)


def plan_field(
    shape: Sequence[int],
    tile_zyx: Sequence[int],
    overlap: float = 0.25,
    *,
    max_memory_gb: float = DEFAULT_MAX_MEMORY_GB,
    multiple: int = 16,
    blend: str = "cosine",
    batch_size: int = 1,
    chunks: Sequence[int] | None = None,
    block_zyx: Sequence[int] | None = None,
) -> FieldPlan:
    """Choose the blocks of a field for a memory budget.

    Peak memory is modelled as a fixed part (:func:`runner_budget_bytes`: the runner and its
    tile buffers) plus :data:`BYTES_PER_BLOCK_VOXEL` per voxel of the largest block. The planner
    takes the largest block, a whole number of chunks per axis, that keeps this within
    ``max_memory_gb``: first growing Y and X together (whole field depth when it fits), then
    shrinking the depth when even one chunk column is too much.

    Parameters
    ----------
    shape : (Z, Y, X)
        The field on the model's grid.
    tile_zyx, overlap, multiple, blend
        The model's tile plan, as :func:`~deepis_rt.runtime.tiling.plan_tiles` (fixed tiles).
    max_memory_gb : float
        Budget in GB (10^9 bytes).
    batch_size : int
        Tiles per runner call (enters the fixed part).
    chunks : (Z, Y, X), optional
        The store's chunk shape (default :func:`default_chunks`, halved along its longest axis
        while one chunk does not fit the budget).
    block_zyx : (Z, Y, X), optional
        Force a block shape (a multiple of ``chunks``); the budget is then only reported.

    Raises
    ------
    ConfigError
        A budget below the fixed part plus one chunk (the message names the least that works),
        or a block shape that is not a multiple of the chunks.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"field plan: shape must be three positive sizes (Z, Y, X), got {shape}")
    if not (isinstance(max_memory_gb, (int, float)) and math.isfinite(max_memory_gb) and max_memory_gb > 0):
        raise ConfigError(f"field plan: max_memory_gb={max_memory_gb!r}: expected a positive number of GB")
    tiling = plan_tiles(shape, tile_zyx, overlap, multiple, True, blend)
    chunk = tuple(int(c) for c in (chunks or default_chunks(shape)))
    if len(chunk) != 3 or min(chunk) < 1:
        raise ConfigError(f"field plan: chunks must be three positive sizes (Z, Y, X), got {chunk}")
    budget = int(max_memory_gb * 1e9)
    fixed = runner_budget_bytes(tiling.tile_zyx, batch_size)

    def cost(b: Sequence[int]) -> int:
        return fixed + BYTES_PER_BLOCK_VOXEL * int(np.prod([min(v, n) for v, n in zip(b, shape, strict=True)]))

    if block_zyx is not None:
        block = tuple(int(b) for b in block_zyx)
        if len(block) != 3 or any(b < 1 or (b % c and b < n) for b, c, n in zip(block, chunk, shape, strict=True)):
            raise ConfigError(f"field plan: block {block} must be a whole number of chunks {chunk} per axis")
        block = tuple(min(b, n) for b, n in zip(block, shape, strict=True))
        reason = "block shape given by the caller"
    else:
        if chunks is None:  # smaller chunks for a small budget, down to a sixteenth of the default
            while cost(chunk) > budget and max(chunk) > CHUNK_YX // 16:
                axis = int(np.argmax(chunk))
                chunk = tuple(max(c // 2, 1) if a == axis else c for a, c in enumerate(chunk))
        n_chunks = [math.ceil(n / c) for n, c in zip(shape, chunk, strict=True)]
        least = cost(chunk)
        if least > budget:
            raise ConfigError(
                f"field plan: max_memory_gb={max_memory_gb:g} is below what one chunk {chunk} needs with tiles of "
                f"{tiling.tile_zyx} ({least / 1e9:.2f} GB: {fixed / 1e9:.2f} GB for the runner and its tiles + "
                f"{BYTES_PER_BLOCK_VOXEL} bytes per voxel); give at least {math.ceil(least / 1e8) / 10:.1f} GB")
        kz = n_chunks[0]
        while kz > 1 and cost((kz * chunk[0], chunk[1], chunk[2])) > budget:
            kz -= 1
        ky = kx = 1
        while True:  # grow Y and X alternately while the budget allows
            grown = False
            for axis in (1, 2):
                k = [kz, ky, kx]
                if k[axis] < n_chunks[axis]:
                    k[axis] += 1
                    if cost((k[0] * chunk[0], k[1] * chunk[1], k[2] * chunk[2])) <= budget:
                        kz, ky, kx = k
                        grown = True
            if not grown:
                break
        block = tuple(min(k * c, n) for k, c, n in zip((kz, ky, kx), chunk, shape, strict=True))
        if block == shape:
            reason = "the whole field fits the budget in one block"
        else:
            limit = "field depth" if kz == n_chunks[0] else f"{kz} chunk(s) of depth"
            reason = (f"largest block of whole chunks ({limit}) within the budget; "
                      f"a larger one would need more than {max_memory_gb:g} GB")
    blocks = _make_blocks(shape, block, tiling)  # type: ignore[arg-type]
    peak = fixed + BYTES_PER_BLOCK_VOXEL * max(b.voxels for b in blocks)
    return FieldPlan(shape, tiling, chunk, block, blocks, budget, fixed, peak, reason)  # type: ignore[arg-type]
