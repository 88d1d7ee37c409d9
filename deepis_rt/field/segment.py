"""``segment_field``: a whole field through the bounded-memory path, into a chunked store.

Distance map block by block (:func:`~deepis_rt.field.blocks.run_block`), labels with cells merged
across block borders (:mod:`deepis_rt.field.labels`), then cells, synapses and quality per
conjugate (:mod:`deepis_rt.field.measure`). The result is a
:class:`~deepis_rt.runtime.result.FrameResult` whose ``distance`` and ``labels`` (and the
analysis' ``labels`` / ``cell_labels``) are the store's zarr arrays: read regions of them, or
``numpy.asarray`` them when they fit in memory.

:func:`routes_to_field` is the rule :meth:`Segmenter.segment` follows to send a field here.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt.analysis.frame import DEFAULT_MIN_CELL_VOLUME_UM3
from deepis_rt.analysis.masks import default_threshold_um
from deepis_rt.analysis.quality import input_reasons, join_reasons
from deepis_rt.errors import ConfigError, InputError
from deepis_rt.field.blocks import RIRegions, run_block
from deepis_rt.field.labels import label_field, paint_thresholds_block
from deepis_rt.field.measure import assess_field, field_analysis
from deepis_rt.field.plan import DEFAULT_MAX_MEMORY_GB, FieldPlan, plan_field
from deepis_rt.field.store import STORE_NAME, FieldStore
from deepis_rt.runtime import preprocess
from deepis_rt.runtime.result import FrameResult

__all__ = ["segment_field", "routes_to_field", "IN_MEMORY_BYTES_PER_VOXEL", "field_store_path"]

log = logging.getLogger(__name__)

#: Peak host memory of the in-memory path per voxel of a float32 field (measured: 10.3 x the
#: input's 4 bytes on a 64 x 1024 x 1024 field), rounded up.
IN_MEMORY_BYTES_PER_VOXEL = 44


def routes_to_field(segmenter: Any, shape: tuple[int, ...], voxel_size_um: Any, tta: bool | None,
                    max_memory_gb: float | None) -> bool:
    """Whether :meth:`Segmenter.segment` takes the bounded-memory path for this field.

    Yes when the field needs more than one tile and the in-memory path's expected peak
    (:data:`IN_MEMORY_BYTES_PER_VOXEL` per voxel) exceeds the budget (``max_memory_gb``, default
    :data:`~deepis_rt.field.plan.DEFAULT_MAX_MEMORY_GB`), the field is on the model's voxel size
    and no test-time augmentation is asked for. Otherwise the in-memory path runs (and says why
    at debug level).
    """
    budget = (DEFAULT_MAX_MEMORY_GB if max_memory_gb is None else float(max_memory_gb)) * 1e9
    if len(shape) != 3 or int(np.prod(shape)) * IN_MEMORY_BYTES_PER_VOXEL <= budget:
        return False
    if not any(s > t for s, t in zip(shape, segmenter.tile_zyx, strict=True)):
        return False
    why = None
    if (segmenter.tta if tta is None else tta):
        why = "test-time augmentation"
    elif voxel_size_um is not None and preprocess.needs_resampling(
            preprocess.validate_voxel_size(voxel_size_um, "segment"), segmenter.model_voxel_size_um):
        why = "a voxel size other than the model's (resample the field first)"
    if why:
        log.warning("segment | a %s field exceeds the %.1f GB budget in memory, but %s runs in memory only",
                    "x".join(map(str, shape)), budget / 1e9, why)
        return False
    return True


def field_store_path(out: str | Path | None) -> Path:
    """Where the store goes: ``out`` (a ``.zarr`` path, or a folder to hold ``field.ome.zarr``),
    or a new temporary folder."""
    if out is None:
        return Path(tempfile.mkdtemp(prefix="deepis-rt-field-")) / STORE_NAME
    out = Path(out)
    return out if out.suffix == ".zarr" else out / STORE_NAME


def _run_blocks(segmenter: Any, regions: RIRegions, plan: FieldPlan, store: FieldStore, progress: bool) -> float:
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=plan.tile_runs, desc="tiles", unit="tile", leave=False)
    t0 = time.perf_counter()
    try:
        for block in plan:
            run_block(segmenter, regions, plan, block, store)
            if bar is not None:
                bar.update(len(block.tiles))
    finally:
        if bar is not None:
            bar.close()
    return (time.perf_counter() - t0) * 1e3


def segment_field(
    segmenter: Any,
    volume: Any,
    voxel_size_um: Any = None,
    *,
    out: str | Path | None = None,
    max_memory_gb: float | None = None,
    analyze: bool | None = None,
    ri_scale: float | None = None,
    ri_offset: float | None = None,
    chunks: tuple[int, int, int] | None = None,
    block_zyx: tuple[int, int, int] | None = None,
    source: str | None = None,
    progress: bool = False,
    block_runner: Callable[[FieldPlan, FieldStore], Any] | None = None,
) -> FrameResult:
    """Segment a field of any size with bounded memory; results in a chunked zarr store.

    Parameters
    ----------
    segmenter : Segmenter
        Model, runner and settings (tile, overlap, blending, batch size, analysis).
    volume : region source
        (Z, Y, X) RI (or RI x 10 000 integers): ``numpy.ndarray``, ``numpy.memmap``, a zarr array, an
        h5py dataset, or anything with ``.shape``, ``.dtype`` and NumPy slicing; read tile by tile.
    voxel_size_um : (Z, Y, X) or float, optional
        Must be the model's (default); resample other fields first.
    out : path, optional
        The store (``*.zarr``) or a folder for ``field.ome.zarr``; default a new temporary folder
        (logged, and kept: the result's arrays live there).
    max_memory_gb : float, optional
        Budget for the planner (default :data:`~deepis_rt.field.plan.DEFAULT_MAX_MEMORY_GB`).
    analyze, ri_scale, ri_offset
        As :meth:`Segmenter.segment`.
    chunks, block_zyx
        Override the planner's chunk and block shapes (tests, benchmarks).
    source : str, optional
        Named in messages (e.g. the file name).
    progress : bool
        A tqdm bar over the tiles (on a terminal).
    block_runner : callable, optional
        ``block_runner(plan, store)`` writes every block's distance map into the store instead of
        this process (the Ray mosaic, :mod:`deepis_rt.cluster.ray_mosaic`); the merge then runs here.

    Returns
    -------
    FrameResult
        ``distance``, ``labels`` and the analysis' label arrays are the store's zarr arrays.
    """
    where = f"segment-field | {source}" if source else "segment-field"
    t0 = time.perf_counter()
    regions = volume if isinstance(volume, RIRegions) else RIRegions(volume, where, ri_scale, ri_offset)
    vs = (segmenter.model_voxel_size_um if voxel_size_um is None
          else preprocess.validate_voxel_size(voxel_size_um, where))
    if preprocess.needs_resampling(vs, segmenter.model_voxel_size_um):
        raise InputError(f"{where}: voxel size {tuple(vs)} um differs from the model's "
                         f"{tuple(segmenter.model_voxel_size_um)} um; the bounded-memory path runs on the model's "
                         "grid only: resample the field first, or segment it in memory")
    vs = tuple(float(v) for v in vs)
    plan = plan_field(regions.shape, segmenter.tile_zyx, segmenter.overlap,
                      max_memory_gb=DEFAULT_MAX_MEMORY_GB if max_memory_gb is None else max_memory_gb,
                      multiple=segmenter.size_multiple, blend=segmenter.blend, batch_size=segmenter.batch_size,
                      chunks=chunks, block_zyx=block_zyx)
    path = field_store_path(out)
    log.info("%s: %s", where, plan)
    log.info("%s: writing the distance map, labels and cell labels to %s", where, path)
    try:
        store = FieldStore.create(path, plan.shape, plan.chunks, vs, attrs={
            "plan": plan.describe(), "backend": segmenter.backend, "source": source})
    except OSError as exc:
        raise ConfigError(f"{where}: cannot create the store {path} ({exc}); choose another --out") from exc
    timings = {"validate": (time.perf_counter() - t0) * 1e3}
    if block_runner is None:
        timings["infer"] = _run_blocks(segmenter, regions, plan, store, progress)
    else:
        t_blocks = time.perf_counter()
        block_runner(plan, store)
        timings["infer"] = (time.perf_counter() - t_blocks) * 1e3
    t1 = time.perf_counter()
    do_analyze = segmenter.analyze if analyze is None else bool(analyze)
    threshold = default_threshold_um(vs)
    analysis = None
    if do_analyze:
        table = label_field(store, plan, vs, threshold, DEFAULT_MIN_CELL_VOLUME_UM3)
        analysis = field_analysis(store, table, regions, vs, threshold, medium_ri=segmenter.medium_ri,
                                  network_error=getattr(segmenter, "network_error", None))
        quality = assess_field(analysis, store, table, regions, plan, segmenter.training_range,
                               segmenter.model_voxel_size_um)
    else:
        t = np.float32(threshold)
        any_t = any(bool((np.asarray(store.distance[b.region]) > t).any()) for b in plan)
        any_b = any(bool((np.asarray(store.distance[b.region]) < -t).any()) for b in plan)
        for block in plan:
            paint_thresholds_block(store, block, threshold, any_t, any_b)
        quality = join_reasons(input_reasons(regions, vs, segmenter.training_range))
    store.drop_provisional()
    timings["analyze"] = (time.perf_counter() - t1) * 1e3
    timings["total"] = (time.perf_counter() - t0) * 1e3
    store.update_attrs(cells=len(analysis.cells) if analysis else None,
                       synapses=len(analysis.synapses) if analysis else None, quality=quality,
                       timings_ms={k: round(v, 1) for k, v in timings.items()})
    return FrameResult(distance=store.distance, labels=store.labels, voxel_size_um=vs,  # type: ignore[arg-type]
                       analysis=analysis, timings_ms=timings, backend=segmenter.backend, source=source,
                       quality=quality)
