"""Sliding-window inference with overlap and smooth blending, for any callable runner.

Modelled on MONAI's ``monai.inferers``: splitting a volume into tiles (:func:`plan_tiles`,
:func:`iter_batches`) knows nothing about backends, and merging (:class:`BlendMerger`:
``aggregate`` / ``finalize``) writes into any array, an in-memory ``numpy.ndarray`` or a
``numpy.memmap`` on disk (:func:`make_output`), so that a stitched field of view millimetres wide
is processed with memory bounded by a few tiles plus the output.

Blending weights are separable, ``w(z, y, x) = wz(z) * wy(y) * wx(x)``, and tiles lie on a
Cartesian grid, so the sum of weights at every voxel is the product of three 1-D sums: no
weight volume is ever stored. Tiles are normalised and padded one by one (the input is never
copied whole), with the padding filled with the medium's refractive index.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt.errors import ConfigError

__all__ = ["TilingPlan", "plan_tiles", "choose_tile", "window_1d", "iter_batches", "BlendMerger", "make_output",
           "sliding_window_inference"]

log = logging.getLogger(__name__)

_MIN_WEIGHT = 1e-3


def window_1d(length: int, ramp: int, mode: str = "cosine") -> np.ndarray:
    """Blending window of ``length`` voxels.

    ``"cosine"``: 1 in the middle, raised-cosine ramps over ``ramp`` voxels at both ends (the
    overlap), so a tile's unreliable borders count little where a neighbour covers them.
    ``"gaussian"``: MONAI-style Gaussian, sigma = length / 8. ``"constant"``: plain average.
    Values are clamped to at least 1e-3 so that every voxel has weight.
    """
    if mode == "constant" or length <= 1:
        return np.ones(length, np.float32)
    i = np.arange(length, dtype=np.float64) + 0.5
    if mode == "cosine":
        w = np.ones(length)
        ramp = int(min(ramp, length // 2))
        if ramp > 0:
            r = 0.5 - 0.5 * np.cos(np.pi * i[:ramp] / ramp)
            w[:ramp] = r
            w[length - ramp :] = r[::-1]
    elif mode == "gaussian":
        sigma = length / 8.0
        w = np.exp(-0.5 * ((i - length / 2.0) / sigma) ** 2)
    else:
        raise ConfigError(f"tiling: blend mode must be 'cosine', 'gaussian' or 'constant', got {mode!r}")
    return np.maximum(w, _MIN_WEIGHT).astype(np.float32)


def _starts(size: int, tile: int, overlap: float) -> list[int]:
    if size <= tile:
        return [0]
    stride = max(1, int(round(tile * (1.0 - overlap))))
    n = math.ceil((size - tile) / stride) + 1
    return sorted({int(round(s)) for s in np.linspace(0, size - tile, n)})


@dataclass(frozen=True)
class TilingPlan:
    """Where the tiles go and how they are weighted.

    Attributes
    ----------
    shape : tuple of int
        Volume (Z, Y, X).
    tile_zyx : tuple of int
        Size of every tile fed to the runner (may exceed the volume: the rest is padding).
    starts : tuple of tuples
        Tile start positions per axis; tiles are their Cartesian product.
    windows : tuple of arrays
        1-D blending window per axis (length ``tile_zyx[a]``).
    weight_sums : tuple of arrays
        Per axis, the sum of the windows of all tiles covering each voxel (length ``shape[a]``).
    """

    shape: tuple[int, int, int]
    tile_zyx: tuple[int, int, int]
    starts: tuple[tuple[int, ...], ...]
    windows: tuple[np.ndarray, ...]
    weight_sums: tuple[np.ndarray, ...]

    @property
    def n_tiles(self) -> int:
        return int(np.prod([len(s) for s in self.starts]))

    def locations(self) -> Iterator[tuple[int, int, int]]:
        for z in self.starts[0]:
            for y in self.starts[1]:
                for x in self.starts[2]:
                    yield (z, y, x)


def plan_tiles(
    shape: Sequence[int],
    tile_zyx: Sequence[int],
    overlap: float = 0.25,
    multiple: int = 16,
    fixed_tile: bool = False,
    blend: str = "cosine",
) -> TilingPlan:
    """Plan a sliding window over ``shape``.

    Parameters
    ----------
    shape : (Z, Y, X)
        Volume size in voxels.
    tile_zyx : (Z, Y, X)
        Largest tile the runner should see (the model's tile).
    overlap : float
        Fraction of a tile shared with its neighbour, in [0, 0.9].
    multiple : int
        Every tile size must be a multiple of this (16 for the DeepIS U-Net).
    fixed_tile : bool
        Every tile is ``tile_zyx``: small axes are padded to the full tile. This is what the
        :class:`~deepis_rt.runtime.Segmenter` always asks for, so that every backend sees the same
        tiles (the network's output depends on the padding). Otherwise an axis smaller than the
        tile gets a tile just large enough (rounded up to ``multiple``): less work on small
        volumes, but results that differ from a fixed-tile backend's near the padding.
    blend : str
        Window, see :func:`window_1d`.
    """
    if not 0.0 <= overlap <= 0.9:
        raise ConfigError(f"tiling: overlap must be within [0, 0.9], got {overlap}")
    shape = tuple(int(s) for s in shape)
    tile = []
    for size, t in zip(shape, tile_zyx, strict=False):
        t = int(t)
        if t % multiple:
            raise ConfigError(f"tiling: tile {tuple(tile_zyx)} is not a multiple of {multiple}")
        tile.append(t if fixed_tile else min(t, -(-size // multiple) * multiple))
    starts, windows, sums = [], [], []
    for size, t in zip(shape, tile, strict=False):
        st = _starts(size, t, overlap)
        w = window_1d(t, int(round(t * overlap)), blend) if len(st) > 1 else np.ones(t, np.float32)
        s = np.zeros(size, np.float64)
        for a in st:
            n = min(t, size - a)
            s[a : a + n] += w[:n]
        starts.append(tuple(st))
        windows.append(w)
        sums.append(s.astype(np.float32))
    return TilingPlan(shape, tuple(tile), tuple(starts), tuple(windows), tuple(sums))  # type: ignore[arg-type]


def choose_tile(
    model_tile_zyx: Sequence[int],
    multiple: int = 16,
    fixed_zyx: Sequence[int] | None = None,
    spatial_range_zyx: tuple[Sequence[int], Sequence[int]] | None = None,
    where: str = "tiling",
) -> tuple[int, int, int]:
    """The one tile every backend runs: the model's tile, unless the runner cannot take it.

    The network's output near a tile's border depends on what lies beyond it (padding or
    neighbouring tissue), so two backends agree voxel for voxel only when they see the same
    tiles. Every runner therefore gets the model's tile, and volumes smaller than a tile are
    padded to it, whatever backend runs them.

    Parameters
    ----------
    model_tile_zyx : (Z, Y, X)
        The tile the model was trained and exported with (``meta["tile_zyx"]``).
    multiple : int
        Every tile size must be a multiple of this.
    fixed_zyx : (Z, Y, X), optional
        The only spatial size the runner accepts (a static ONNX graph or engine).
    spatial_range_zyx : ((Z, Y, X), (Z, Y, X)), optional
        Smallest and largest spatial size the runner accepts (e.g. a TensorRT optimisation
        profile). When the model's tile lies inside, it is used unchanged.
    where : str
        Prefix of log messages.

    Returns
    -------
    tuple of int
        The tile, ``(Z, Y, X)``.

    Raises
    ------
    ConfigError
        A tile that is not a multiple of ``multiple``, or a range that admits no such size.
    """
    tile = tuple(int(t) for t in model_tile_zyx)
    if len(tile) != 3 or any(t < 1 for t in tile):
        raise ConfigError(f"{where}: the model's tile must be three positive sizes (Z, Y, X), got {tile}")
    if fixed_zyx is not None:
        fixed = tuple(int(t) for t in fixed_zyx)
        if fixed != tile:
            log.warning("%s: the runner accepts tiles of %s only while the model's tile is %s; using %s "
                        "(results can differ from a backend that runs the model's tile)", where, fixed, tile, fixed)
        return fixed  # type: ignore[return-value]
    if spatial_range_zyx is not None:
        lo = tuple(int(v) for v in spatial_range_zyx[0])
        hi = tuple(int(v) for v in spatial_range_zyx[1])
        if all(a <= t <= b for a, t, b in zip(lo, tile, hi, strict=True)):
            return tile  # type: ignore[return-value]
        clamped = []
        for a, t, b in zip(lo, tile, hi, strict=True):
            c = min(max(t, -(-a // multiple) * multiple), (b // multiple) * multiple)
            if c < a or c > b or c < multiple:
                raise ConfigError(f"{where}: the runner accepts spatial sizes {lo}..{hi}, which hold no tile that "
                                  f"is a multiple of {multiple}; rebuild the engine with the model's tile {tile}")
            clamped.append(c)
        log.warning("%s: the model's tile %s lies outside the runner's range %s..%s; using %s (results can "
                    "differ from a backend that runs the model's tile)", where, tile, lo, hi, tuple(clamped))
        tile = tuple(clamped)
    if any(t % multiple for t in tile):
        raise ConfigError(f"{where}: tile {tile} is not a multiple of {multiple}")
    return tile  # type: ignore[return-value]


def iter_batches(
    volume: np.ndarray,
    plan: TilingPlan,
    batch_size: int = 1,
    transform: Callable[[np.ndarray, np.ndarray], Any] | None = None,
    pad_value: float = 0.0,
    locations: Sequence[tuple[int, int, int]] | None = None,
) -> Iterator[tuple[np.ndarray, list[tuple[int, int, int]]]]:
    """Yield ``(batch, locations)``: float32 ``(B, 1, *tile)`` batches and their tile starts.

    ``transform(src, dst)`` writes the transformed (e.g. normalised) ``src`` region into ``dst``;
    padding beyond the volume is ``pad_value`` (already transformed). ``volume`` is anything with
    NumPy slicing (an array, a ``numpy.memmap``, a zarr array, an h5py dataset): only one tile is
    read at a time. ``locations`` restricts the run to some of the plan's tiles (in the order
    given; default: all, in :meth:`TilingPlan.locations` order).
    """
    tz, ty, tx = plan.tile_zyx
    locations = list(plan.locations()) if locations is None else [tuple(int(v) for v in loc) for loc in locations]
    for first in range(0, len(locations), batch_size):
        locs = locations[first : first + batch_size]
        batch = np.empty((len(locs), 1, tz, ty, tx), np.float32)
        for i, (z, y, x) in enumerate(locs):
            src = volume[z : z + tz, y : y + ty, x : x + tx]
            dst = batch[i, 0]
            nz, ny, nx = src.shape
            if (nz, ny, nx) != (tz, ty, tx):
                dst[...] = pad_value
            region = dst[:nz, :ny, :nx]
            if transform is None:
                region[...] = src
            else:
                transform(src, region)
        yield batch, locs


class BlendMerger:
    """Accumulates weighted tile outputs into ``out`` and normalises them in :meth:`finalize`.

    ``region`` (one ``slice`` per axis, within the volume) makes ``out`` hold that part of the
    volume only: tiles are clipped to it, and the weight sums are the whole plan's, so a region
    merged from every tile that overlaps it holds exactly the values the whole-volume merge gives
    there (same tiles, same order of summation). Disjoint regions can therefore be merged
    independently, on different machines, and written to a chunked store
    (:mod:`deepis_rt.field`).
    """

    def __init__(self, plan: TilingPlan, out: np.ndarray | None = None,
                 region: Sequence[slice] | None = None) -> None:
        self.plan = plan
        if region is None:
            region = tuple(slice(0, n) for n in plan.shape)
        region = tuple(slice(*s.indices(n)[:2]) for s, n in zip(region, plan.shape, strict=True))
        if any(s.start >= s.stop for s in region):
            raise ConfigError(f"tiling: region {region} is empty or outside the volume {plan.shape}")
        self.region = region
        shape = tuple(s.stop - s.start for s in region)
        if out is None:
            out = np.zeros(shape, np.float32)
        elif tuple(out.shape) != shape:
            raise ConfigError(f"tiling: output of shape {out.shape} does not match the volume {shape}")
        else:
            out[...] = 0
        self.out = out
        wz, wy, wx = plan.windows
        self._weights = wz[:, None, None] * wy[None, :, None] * wx[None, None, :]
        self.tiles_merged = 0

    def aggregate(self, values: np.ndarray, location: tuple[int, int, int]) -> None:
        """Add one tile's output ``values`` (Z, Y, X) whose corner is at ``location``."""
        dst, src = [], []
        for r, start, n in zip(self.region, location, values.shape, strict=True):
            lo, hi = max(start, r.start), min(start + n, r.stop)
            if lo >= hi:  # the tile does not reach this region
                return
            dst.append(slice(lo - r.start, hi - r.start))
            src.append(slice(lo - start, hi - start))
        target = self.out[tuple(dst)]
        target += values[tuple(src)] * self._weights[tuple(src)]
        self.tiles_merged += 1

    def finalize(self) -> np.ndarray:
        """Divide by the (separable) weight sums, in place and slab by slab; return ``out``."""
        rz, ry, rx = self.region
        sz, sy, sx = self.plan.weight_sums[0][rz], self.plan.weight_sums[1][ry], self.plan.weight_sums[2][rx]
        inv_yx = (1.0 / sy)[:, None] * (1.0 / sx)[None, :]
        for z in range(self.out.shape[0]):
            self.out[z] *= inv_yx * np.float32(1.0 / sz[z])
        if isinstance(self.out, np.memmap):
            self.out.flush()
        return self.out


def make_output(shape: Sequence[int], on_disk: bool | str | os.PathLike = False) -> np.ndarray:
    """A zeroed float32 array of ``shape``: in memory, or a ``numpy.memmap`` in a folder on disk.

    ``on_disk=True`` uses the system temp folder; a path names the folder. The file is deleted
    once nothing refers to the array any more (unlinked right after mapping, on POSIX).
    """
    shape = tuple(int(s) for s in shape)
    if not on_disk:
        return np.zeros(shape, np.float32)
    folder = Path(tempfile.gettempdir() if on_disk is True else on_disk)
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="deepis-rt-stitch-", suffix=".f32", dir=folder)
    os.close(fd)
    out = np.memmap(name, dtype=np.float32, mode="w+", shape=shape)
    if os.name == "posix":
        os.unlink(name)  # the mapping keeps the data; the disk space is freed with the array
    return out


def sliding_window_inference(
    volume: np.ndarray,
    runner: Any,
    tile_zyx: Sequence[int],
    overlap: float = 0.25,
    batch_size: int = 1,
    transform: Callable[[np.ndarray, np.ndarray], Any] | None = None,
    pad_value: float = 0.0,
    blend: str = "cosine",
    multiple: int = 16,
    fixed_tile: bool = False,
    out: np.ndarray | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Run ``runner`` over ``volume`` tile by tile and blend the tiles into one output volume.

    Parameters
    ----------
    volume : (Z, Y, X) array
        Input (may be a ``numpy.memmap``; only one tile batch is read at a time).
    runner : callable or Runner
        ``runner(batch) -> output`` on ``(B, 1, Z, Y, X)`` float32; an object with ``infer_stream``
        (every :class:`~deepis_rt.backends.Runner`) is streamed, so GPU runners overlap
        copies and compute.
    tile_zyx, overlap, multiple, fixed_tile, blend
        See :func:`plan_tiles`.
    batch_size : int
        Tiles per runner call.
    transform, pad_value
        See :func:`iter_batches` (e.g. RI normalisation, and the normalised medium RI).
    out : array, optional
        Where to write the result (e.g. from :func:`make_output` with ``on_disk``).
    progress : bool
        Show a tqdm bar (only on a terminal).

    Returns
    -------
    numpy.ndarray
        ``(Z, Y, X)`` float32 blended output (``out`` when given).
    """
    if batch_size < 1:
        raise ConfigError(f"tiling: batch_size must be >= 1, got {batch_size}")
    plan = plan_tiles(volume.shape, tile_zyx, overlap, multiple, fixed_tile, blend)
    merger = BlendMerger(plan, out)
    pending: deque[list[tuple[int, int, int]]] = deque()

    def batches() -> Iterator[np.ndarray]:
        for batch, locs in iter_batches(volume, plan, batch_size, transform, pad_value):
            pending.append(locs)
            yield batch

    stream = runner.infer_stream if hasattr(runner, "infer_stream") else (lambda bs: map(runner, bs))
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=plan.n_tiles, desc="tiles", unit="tile", leave=False)
    try:
        for output in stream(batches()):
            locs = pending.popleft()
            output = np.asarray(output)
            for i, loc in enumerate(locs):
                merger.aggregate(output[i, 0], loc)
            if bar is not None:
                bar.update(len(locs))
    finally:
        if bar is not None:
            bar.close()
    log.debug("tiling: %d tiles of %s over %s", plan.n_tiles, plan.tile_zyx, plan.shape)
    return merger.finalize()
