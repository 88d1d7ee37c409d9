"""One large field spread over a Ray cluster: its blocks run on the cluster's workers, the merge runs here.

:func:`segment_field_ray` is :func:`deepis_rt.field.segment.segment_field` with the distance map's
blocks computed by Ray actors instead of this process:

1. the cluster is reached first (:func:`~deepis_rt.cluster.ray_connect.connect_ray`): a cluster that
   cannot be used leaves ``out`` as it was;
2. this process plans the field (:func:`~deepis_rt.field.plan.plan_field`: disjoint blocks of whole
   chunks, each with the global tiles that overlap it) and creates the chunked store;
3. actors are placed as for archives (:mod:`~deepis_rt.cluster.ray_placement`: one per GPU where the
   cluster has GPUs, else one per ``cpus_per_worker`` CPUs, each using its share of its node's CPUs as
   threads), each builds its Segmenter with ``deepis_rt.load(...)`` and opens the input with
   :func:`~deepis_rt.io.regions.open_region_source` (it reads only the tiles of its blocks) and the
   store (:meth:`~deepis_rt.field.store.FieldStore.open`), and runs blocks
   (:func:`~deepis_rt.field.blocks.run_block`) into the store;
4. a block whose node was lost runs again on another node (without counting a retry); a block whose
   worker died or failed runs again up to ``retries`` times (the pool of
   :mod:`~deepis_rt.cluster.ray_pool` replaces dead workers); a block written twice holds the same
   values, since each block is a deterministic function of the input;
5. once every block is written, the field's labelling and measurement (cells merged across block
   borders) run once, here, as in the single-machine run.

Blocks are whole chunks of the store, so workers never write the same chunk. Every node must see the
input file and ``out`` at the same paths (a shared file system); the workers say so when they do not.
The result equals the single-machine run's: the same tiles are blended in the same order into each
voxel, and the merge is the same code on the same store.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepis_rt.cluster.ray_batch import SegmenterSpec, _with_threads
from deepis_rt.cluster.ray_connect import RayConnection, connect_ray
from deepis_rt.cluster.ray_placement import live_nodes, node_label, plan_actors
from deepis_rt.cluster.ray_pool import RayActorPool
from deepis_rt.errors import ClusterError, ConfigError
from deepis_rt.field.blocks import run_block
from deepis_rt.field.plan import FieldPlan
from deepis_rt.field.store import FieldStore
from deepis_rt.io.regions import open_region_source

__all__ = ["BlockJob", "MosaicReport", "run_blocks_on_ray", "schedule_blocks", "segment_field_ray"]

log = logging.getLogger(__name__)

_WHERE = "segment-field --ray"
#: runs of one block lost with their node that are repeated without counting against ``retries``
MAX_NODE_LOSSES = 3


@dataclass(frozen=True)
class BlockJob:
    """One block of the plan, as the actor pool schedules it."""

    index: int

    @property
    def name(self) -> str:
        return f"block {self.index}"


@dataclass(frozen=True)
class _FieldJob:
    """What every worker needs to run any block: the input, the plan and the store."""

    input_path: str
    plan: FieldPlan
    store_path: str


class _BlockWorker:
    """One Segmenter, one open input and one open store; many blocks (a Ray actor).

    ``open_options``: the keywords of :func:`~deepis_rt.io.regions.open_region_source` for the input;
    ``num_threads``: the worker's share of its node's CPUs (set by the pool per actor).
    """

    def __init__(self, factory: Callable[[], Any], job: _FieldJob, open_options: dict[str, Any],
                 num_threads: int | None = None) -> None:
        self.factory = factory
        self.job = job
        self.open_options = dict(open_options)
        self.num_threads = num_threads
        self.segmenter: Any = None
        self.source: Any = None
        self.store: FieldStore | None = None

    def _open(self) -> None:
        job = self.job
        for what, path in (("input", job.input_path), ("store", job.store_path)):
            if not Path(path).exists():
                raise ClusterError(f"{_WHERE} | the {what} {path} is not visible on {os.uname().nodename}; every "
                                   "node must see the input and --out at the same path (a shared file system)")
        if self.segmenter is None:
            self.segmenter = _with_threads(self.factory, self.num_threads)()
        if self.source is None:
            self.source = open_region_source(job.input_path, **self.open_options)
        if self.store is None:
            self.store = FieldStore.open(job.store_path)

    def process(self, block: BlockJob, attempt: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        record: dict[str, Any] = {"block": block.index, "attempt": attempt, "status": "failed", "error": "",
                                  "worker": f"{os.uname().nodename}:{os.getpid()}", **self.node()}
        try:
            self._open()
            result = run_block(self.segmenter, self.source, self.job.plan, block.index, self.store)
            record.update(status="ok", tiles_run=result.tiles_run)
        except Exception as exc:
            log.debug("%s | block %d: attempt %d failed", _WHERE, block.index, attempt, exc_info=True)
            record["error"] = f"{type(exc).__name__}: {exc}"
        record["wall_s"] = round(time.perf_counter() - t0, 3)
        return record

    @staticmethod
    def node() -> dict[str, Any]:
        import ray

        if not ray.is_initialized():
            return {}
        node_id = ray.get_runtime_context().get_node_id()
        ip = ray.util.get_node_ip_address()
        return {"node": node_label(ip, node_id), "node_id": node_id, "node_ip": ip}


@dataclass
class MosaicReport:
    """Where each block ran: the final run per block, with the runs before it (lost nodes, failures)."""

    workers: str = ""
    blocks: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def nodes(self) -> dict[str, int]:
        """Blocks per node (of their final run)."""
        out: dict[str, int] = {}
        for b in self.blocks:
            out[b.get("node", "?")] = out.get(b.get("node", "?"), 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"workers": self.workers, "wall_s": self.wall_s, "blocks_per_node": self.nodes,
                "blocks": self.blocks}


def run_blocks_on_ray(connection: RayConnection, factory: Callable[[], Any], input_path: str | os.PathLike,
                      open_options: dict[str, Any], plan: FieldPlan, store: FieldStore, *, retries: int = 1,
                      num_workers: int | None = None, cpus_per_worker: float | None = None,
                      gpus_per_worker: float | None = None, max_workers_per_node: int | None = None,
                      use_gpus: bool = True) -> MosaicReport:
    """Run every block of ``plan`` into ``store`` on the cluster of ``connection``.

    Raises
    ------
    ClusterError
        A block failed ``retries + 1`` times (the message names it and its last error), or no worker
        is left (every node that could host one was lost).
    """
    t0 = time.perf_counter()
    ray = connection.ray
    slots = plan_actors(live_nodes(ray), use_gpus=use_gpus, cpus_per_worker=cpus_per_worker,
                        gpus_per_worker=gpus_per_worker, max_per_node=max_workers_per_node)
    if num_workers is not None and num_workers > len(slots):
        log.warning("%s | %d workers asked, the cluster fits %d; using %d", _WHERE, num_workers, len(slots),
                    len(slots))
    wanted = min(num_workers or len(slots), len(slots), len(plan.blocks))
    job = _FieldJob(str(Path(input_path).resolve()), plan, str(Path(store.path).resolve()))
    pool = RayActorPool(ray, _BlockWorker, (factory, job, dict(open_options), None), slots[:wanted], slots)
    log.info("%s | %d block(s) (%d tile runs) on %s", _WHERE, len(plan.blocks), plan.tile_runs, pool.description)
    try:
        report = schedule_blocks(pool, plan, retries)
    finally:
        pool.close()
    report.workers = pool.description
    report.wall_s = round(time.perf_counter() - t0, 3)
    return report


def schedule_blocks(pool: Any, plan: FieldPlan, retries: int) -> MosaicReport:
    """Every block of ``plan`` through ``pool`` (the interface of :class:`~deepis_rt.cluster.ray_pool.RayActorPool`).

    A block whose node was lost goes back in the queue without counting an attempt (at most
    :data:`MAX_NODE_LOSSES` times); a failed one is tried again while ``attempt <= retries``.

    Raises
    ------
    ClusterError
        A block failed ``retries + 1`` times, or no worker is left.
    """
    report = MosaicReport()
    pending: deque[tuple[BlockJob, int]] = deque((BlockJob(b.index), 1) for b in plan.blocks)
    earlier: dict[int, list[dict[str, Any]]] = {}
    while pending or pool.busy():
        while pending and pool.has_capacity():
            pool.submit(*pending.popleft())
        if not pool.busy():
            raise ClusterError(f"{_WHERE} | no Ray worker left (their nodes were lost); {len(pending)} block(s) "
                               "not run: add nodes to the cluster and run the command again")
        block, attempt, result = pool.next_result()
        node_lost = bool(result.pop("node_lost", False))
        runs = earlier.setdefault(block.index, [])
        if result.get("status") == "ok":
            report.blocks.append({"block": block.index, "node": result.get("node"), "attempts": attempt,
                                  "tiles_run": result.get("tiles_run"), "wall_s": result.get("wall_s"),
                                  "earlier_runs": runs})
            continue
        runs.append({"attempt": attempt, "node": result.get("node"), "node_lost": node_lost,
                     "error": result.get("error", "")})
        if node_lost and sum(r["node_lost"] for r in runs) <= MAX_NODE_LOSSES:
            log.warning("%s | block %d: its node was lost; running it again on another node", _WHERE, block.index)
            pending.append((block, attempt))
        elif attempt <= retries:
            log.warning("%s | block %d: attempt %d failed (%s); retrying", _WHERE, block.index, attempt,
                        result.get("error"))
            pending.append((block, attempt + 1))
        else:
            raise ClusterError(f"{_WHERE} | block {block.index} {plan.blocks[block.index].region} failed after "
                               f"{attempt} attempt(s): {result.get('error')}")
    report.blocks.sort(key=lambda b: b["block"])
    return report


def segment_field_ray(
    path: str | os.PathLike,
    out: str | os.PathLike,
    model: str | os.PathLike | None = None,
    backend: str = "auto",
    *,
    ray_address: str,
    voxel_size_um: Any = None,
    time_point: int = 0,
    ri_scale: float | None = None,
    ri_offset: float | None = None,
    max_memory_gb: float | None = None,
    analyze: bool | None = None,
    chunks: tuple[int, int, int] | None = None,
    block_zyx: tuple[int, int, int] | None = None,
    retries: int = 1,
    num_workers: int | None = None,
    cpus_per_worker: float | None = None,
    gpus_per_worker: float | None = None,
    max_workers_per_node: int | None = None,
    load_options: dict[str, Any] | None = None,
    segmenter_factory: Callable[[], Any] | None = None,
) -> tuple[Any, MosaicReport]:
    """Segment one field file on a Ray cluster; results in the chunked store under ``out``.

    Parameters
    ----------
    path : path-like
        The field: any input :func:`~deepis_rt.io.regions.open_region_source` reads (TCF, OME-Zarr,
        ``.npy``, TIFF), at the same path on every node.
    out : path-like
        The store (``*.zarr``) or a folder for ``field.ome.zarr``, at the same path on every node.
    model, backend, load_options
        What this process and every worker load: ``deepis_rt.load(model, backend=backend, **load_options)``
        (this process uses its Segmenter for the plan and the merge, never to run tiles).
    ray_address : str
        As for :func:`~deepis_rt.cluster.ray_batch.run_batch` (``"auto"``, ``"HOST:PORT"``,
        ``"ray://..."``, ``"local"``).
    voxel_size_um, time_point, ri_scale, ri_offset
        How to read the input (:func:`~deepis_rt.io.regions.open_region_source`).
    max_memory_gb, analyze, chunks, block_zyx
        As :func:`~deepis_rt.field.segment.segment_field`; the budget holds per worker.
    retries, num_workers, cpus_per_worker, gpus_per_worker, max_workers_per_node
        As for :func:`~deepis_rt.cluster.ray_batch.run_batch`: further attempts of a failed block, and
        the actors' placement.
    segmenter_factory : callable, optional
        Picklable callable that returns a Segmenter; replaces ``model`` / ``backend`` / ``load_options``.

    Returns
    -------
    (FrameResult, MosaicReport)
        The field's result (its arrays are the store's) and where each block ran.
    """
    from deepis_rt.field.segment import segment_field

    if retries < 0:
        raise ConfigError(f"{_WHERE} | retries must be >= 0, got {retries}")
    if segmenter_factory is None:
        options = dict(load_options or {})
        segmenter_factory = SegmenterSpec(None if model is None else str(model), backend, options.pop("device", None),
                                          options)
    open_options = {"voxel_size_um": voxel_size_um, "time_point": time_point, "ri_scale": ri_scale,
                    "ri_offset": ri_offset}
    source = open_region_source(path, **open_options)  # refused here before the cluster is asked
    connection = connect_ray(ray_address)  # the cluster first: nothing is written before it answers
    report = MosaicReport()
    try:
        segmenter = segmenter_factory()

        def blocks_on_ray(plan: FieldPlan, store: FieldStore) -> None:
            nonlocal report
            report = run_blocks_on_ray(
                connection, segmenter_factory, path, open_options, plan, store, retries=retries,
                num_workers=num_workers, cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                max_workers_per_node=max_workers_per_node, use_gpus=backend != "triton")
            store.update_attrs(ray=report.to_dict())

        with source, segmenter:
            result = segment_field(segmenter, source, source.voxel_size_um, out=out, max_memory_gb=max_memory_gb,
                                   analyze=analyze, chunks=chunks, block_zyx=block_zyx, source=str(path),
                                   block_runner=blocks_on_ray)
    finally:
        connection.close()
    return result, report
