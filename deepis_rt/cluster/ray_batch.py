"""``run_batch``: re-analyse an archive of time-lapses, one :class:`~deepis_rt.stream.Stream` per item.

An *item* is one time-lapse of the archive:

* a folder that directly holds frame files (its sub-folders belong to it, e.g. a synthetic
  video's ``labels/``), found at any depth; its results go to ``OUT/<relative path>/``;
* a multi-time-point file (TZYX TIFF, TCF, ...) lying in the archive's top folder; its results go
  to ``OUT/<file stem>/``.

Each item is processed by ``Stream(source, OUT/<item>, segmenter, once=True).run()``, so its
results are exactly those of ``deepis-rt stream`` (frames.csv, cells.csv, synapses.csv,
summary.json, masks/, plots/, errors.log). Items run

* on a Ray cluster (``ray_address="auto"`` / ``"HOST:PORT"`` / ``"ray://host:10001"`` /
  ``"local"``; connected by :mod:`.ray_connect`, token authentication included): a pool of actors,
  each holding one Segmenter and pinned to a node by the plan of :mod:`.ray_placement` (one per
  GPU where the cluster has GPUs); an item whose node is lost runs again on another node, and the
  report names the node that ran each item; or
* in this process, one after the other (``ray_address=None``), with the same bookkeeping.

Bookkeeping: an item whose attempt raised, or that produced no usable frame, is retried up to
``retries`` times (a retry of an item with no good frame starts it afresh). Finished items are
remembered in ``OUT/.batch/items/`` with a fingerprint of their input files, so a second run skips
them (and re-runs items whose folder gained frames: Stream continues from its last committed
frame). ``OUT/batch_report.json`` lists every item's status, attempts and error, and
``OUT/synapses_all.csv`` joins the items' synapse tables with an ``item`` column.

Ray workers and the driver must see the archive, the model and ``OUT`` at the same paths (a
shared file system).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from deepis_rt.cluster.items import BatchItem, find_items
from deepis_rt.cluster.ray_connect import connect_ray
from deepis_rt.cluster.ray_placement import live_nodes, node_label, plan_actors
from deepis_rt.cluster.ray_pool import RayActorPool
from deepis_rt.errors import ConfigError

__all__ = ["BatchItem", "BatchReport", "SegmenterSpec", "find_items", "make_segmenter", "process_item", "run_batch"]

log = logging.getLogger(__name__)

STATE_DIR = ".batch"
REPORT_NAME = "batch_report.json"
SYNAPSES_ALL = "synapses_all.csv"
_DONE = ("ok", "partial")
#: runs of one item lost with their node that are repeated without counting against ``retries``
MAX_NODE_LOSSES = 3


# --------------------------------------------------------------------------------------------
# segmenters on workers
# --------------------------------------------------------------------------------------------


@dataclass
class SegmenterSpec:
    """A picklable recipe for ``deepis_rt.load(model, backend, device, **options)``: run on each worker."""

    model: str | None = None
    backend: str = "auto"
    device: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __call__(self) -> Any:
        import deepis_rt.runtime as rt

        return rt.load(self.model, backend=self.backend, device=self.device, **self.options)


def make_segmenter(runner_factory: Callable[[], Any], meta: dict[str, Any], **segmenter_options: Any) -> Any:
    """``deepis_rt.load(runner=runner_factory(), meta=meta, ...)`` on the worker (for custom or test
    runners; picklable with functools.partial)."""
    import deepis_rt.runtime as rt

    return rt.load(runner=runner_factory(), meta=meta, **segmenter_options)


def _source_folder(item: BatchItem, out: Path) -> Path:
    """The folder a Stream watches for ``item``: the item itself, or a folder linking to its one file."""
    if item.kind == "folder":
        return item.path
    folder = out / STATE_DIR / "sources" / item.key
    folder.mkdir(parents=True, exist_ok=True)
    for src in (item.path, item.path.with_suffix(".json")):
        if not src.is_file():
            continue
        dst = folder / src.name
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        try:
            dst.symlink_to(src.resolve())
        except OSError:  # no symlinks here (some Windows / network shares): copy
            shutil.copy2(src, dst)
    return folder


def _reset_if_nothing_ok(result_dir: Path) -> None:
    """Remove a results folder in which no frame succeeded, so that its frames are tried again."""
    frames = result_dir / "frames.csv"
    if not frames.is_file():
        return
    with open(frames, newline="") as f:
        if any(row.get("status") == "ok" for row in csv.DictReader(f)):
            return
    log.info("batch | %s: no good frame in the earlier attempt; starting it afresh", result_dir.name)
    shutil.rmtree(result_dir, ignore_errors=True)


def _errors_excerpt(result_dir: Path, n: int = 3) -> str:
    try:
        lines = (result_dir / "errors.log").read_text().splitlines()
    except OSError:
        return ""
    more = f" (+{len(lines) - n} more in errors.log)" if len(lines) > n else ""
    return "; ".join(lines[:n]) + more


def process_item(item: BatchItem, out: str | os.PathLike, segmenter: Any, stream_settings: dict[str, Any],
                 attempt: int = 1) -> dict[str, Any]:
    """Run one item through a Stream; never raises (failures come back as ``status="failed"``)."""
    from deepis_rt.stream.stream import Stream

    out = Path(out)
    result_dir = out / item.name
    t0 = time.time()
    record: dict[str, Any] = {"item": item.name, "source": str(item.path), "kind": item.kind, "attempt": attempt,
                              "status": "failed", "frames_ok": 0, "frames_failed": 0, "error": "",
                              "worker": f"{os.uname().nodename}:{os.getpid()}"}
    try:
        _reset_if_nothing_ok(result_dir)
        source = _source_folder(item, out)
        # an item's results folder is named after the item: an archive moved elsewhere continues there
        settings = {"once": True, "settle_s": 0.0, "poll_s": 0.05, "use_events": False, "refresh_s": 3600.0,
                    "check_source": False,
                    **stream_settings}
        if item.kind == "file":  # the batch's own link to the file find_items chose (and vetted)
            settings["follow_symlinks"] = True
        with Stream(source, result_dir, segmenter, **settings) as stream:
            summary = stream.run()
        record["frames_ok"] = int(summary.get("frames_ok") or 0)
        record["frames_failed"] = int(summary.get("frames_failed") or 0)
        # frames whose backend stayed unavailable past retry_for_s: the item is not done, so the
        # next batch run continues it (the stream redoes exactly those frames)
        record["frames_retry"] = int(summary.get("frames_retry") or 0)
        if record["frames_ok"] == 0:
            record["error"] = _errors_excerpt(result_dir) or (
                "no frame succeeded" if record["frames_failed"] else "the stream committed no frame (see its log)")
        else:
            record["status"] = "partial" if record["frames_failed"] else "ok"
            if record["frames_failed"]:
                record["error"] = _errors_excerpt(result_dir)
        if record["frames_retry"]:
            record["status"] = "retry"
            record["error"] = (f"{record['frames_retry']} frame(s) recorded 'retry' (backend unavailable); "
                               "run the batch again to process them") + (f"; {record['error']}" if record["error"] else "")
    except Exception as exc:
        log.debug("batch | %s: attempt %d failed", item.name, attempt, exc_info=True)
        record["error"] = f"{type(exc).__name__}: {exc}"
    record["wall_s"] = round(time.time() - t0, 3)
    return record


def _with_threads(factory: Callable[[], Any], threads: int | None) -> Callable[[], Any]:
    """``factory``, using ``threads`` CPU threads (PyTorch, ONNX Runtime) unless it names its own number."""
    if not threads:
        return factory
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(threads))
    else:  # read by PyTorch when (and if) the runner imports it
        os.environ["OMP_NUM_THREADS"] = str(int(threads))
    if isinstance(factory, SegmenterSpec) and factory.backend != "triton":
        return SegmenterSpec(factory.model, factory.backend, factory.device,
                             {"num_threads": int(threads), **factory.options})
    return factory


class _Worker:
    """One Segmenter, many items (a Ray actor, or used in this process)."""

    def __init__(self, factory: Callable[[], Any], out: str, stream_settings: dict[str, Any],
                 num_threads: int | None = None) -> None:
        self.factory = factory
        self.out = out
        self.stream_settings = dict(stream_settings)
        self.num_threads = num_threads
        self.segmenter: Any = None

    def process(self, item: BatchItem, attempt: int) -> dict[str, Any]:
        if self.segmenter is None:
            try:
                self.segmenter = _with_threads(self.factory, self.num_threads)()
            except Exception as exc:
                return {"item": item.name, "source": str(item.path), "kind": item.kind, "attempt": attempt,
                        "status": "failed", "frames_ok": 0, "frames_failed": 0, "wall_s": 0.0,
                        "worker": f"{os.uname().nodename}:{os.getpid()}", **self.node(),
                        "error": f"the worker could not load the model: {type(exc).__name__}: {exc}"}
        return {**process_item(item, self.out, self.segmenter, self.stream_settings, attempt), **self.node()}

    @staticmethod
    def node() -> dict[str, Any]:
        """The Ray node this worker runs on (``node``: ``IP/node-id prefix``); empty outside Ray."""
        ray = sys.modules.get("ray")
        if ray is None or not ray.is_initialized():
            return {}
        node_id = ray.get_runtime_context().get_node_id()
        ip = ray.util.get_node_ip_address()
        return {"node": node_label(ip, node_id), "node_id": node_id, "node_ip": ip}

    def close(self) -> None:
        runner = getattr(self.segmenter, "runner", None)
        if runner is not None:
            runner.deactivate()
        self.segmenter = None


# --------------------------------------------------------------------------------------------
# pools: this process (Ray actors: .ray_pool)
# --------------------------------------------------------------------------------------------


class _LocalPool:
    """Items one after the other in this process (no Ray)."""

    description = "this process"

    def __init__(self, make_worker: Callable[[], _Worker]) -> None:
        self.worker = make_worker()
        self.queue: deque[tuple[BatchItem, int]] = deque()
        self.n_workers = 1

    def has_capacity(self) -> bool:
        return not self.queue

    def submit(self, item: BatchItem, attempt: int) -> None:
        self.queue.append((item, attempt))

    def busy(self) -> bool:
        return bool(self.queue)

    def next_result(self) -> tuple[BatchItem, int, dict[str, Any]]:
        item, attempt = self.queue.popleft()
        return item, attempt, self.worker.process(item, attempt)

    def close(self) -> None:
        self.worker.close()


# --------------------------------------------------------------------------------------------
# the batch
# --------------------------------------------------------------------------------------------


@dataclass
class BatchReport:
    """What :func:`run_batch` did; also written to ``OUT/batch_report.json``."""

    archive: str
    out: str
    engine: str
    started_at: str
    items: list[dict[str, Any]] = field(default_factory=list)
    finished_at: str | None = None
    wall_s: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        out = {"ok": 0, "partial": 0, "failed": 0, "skipped": 0}
        for it in self.items:
            key = "skipped" if it.get("skipped") else it["status"]
            out[key] = out.get(key, 0) + 1  # "retry": items with frames whose backend stayed unavailable
        return out

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [it for it in self.items if it["status"] == "failed"]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "counts": self.counts}


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _marker_path(out: Path, item: BatchItem) -> Path:
    return out / STATE_DIR / "items" / f"{item.key}.json"


def _read_marker(out: Path, item: BatchItem) -> dict[str, Any]:
    try:
        return json.loads(_marker_path(out, item).read_text())
    except (OSError, ValueError):
        return {}


def combine_synapses(out: str | os.PathLike, items: Sequence[str]) -> Path:
    """Write ``OUT/synapses_all.csv``: every item's synapses.csv rows with an ``item`` column first."""
    from deepis_rt.analysis.tables import SYNAPSE_COLUMNS

    out = Path(out)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["item", *SYNAPSE_COLUMNS], extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for name in sorted(items):
        path = out / name / "synapses.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                writer.writerow({"item": name, **row})
    target = out / SYNAPSES_ALL
    _atomic_text(target, buf.getvalue())
    return target


def _progress(total: int, enabled: bool | None) -> Any:
    from tqdm import tqdm

    show = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(total=total, unit="item", desc="batch", disable=not show, dynamic_ncols=True, file=sys.stderr)


def run_batch(
    archive: str | os.PathLike,
    out: str | os.PathLike,
    model: str | os.PathLike | None = None,
    backend: str = "auto",
    *,
    ray_address: str | None = None,
    retries: int = 1,
    num_workers: int | None = None,
    cpus_per_worker: float | None = None,
    gpus_per_worker: float | None = None,
    max_workers_per_node: int | None = None,
    load_options: dict[str, Any] | None = None,
    segmenter_factory: Callable[[], Any] | None = None,
    stream_settings: dict[str, Any] | None = None,
    progress: bool | None = None,
    on_item: Callable[[dict[str, Any]], None] | None = None,
    command: dict[str, Any] | None = None,
) -> BatchReport:
    """Segment, measure and track every time-lapse of an archive, on Ray or in this process.

    Parameters
    ----------
    archive : path-like
        Folder of time-lapses (see the module docstring for what counts as one).
    out : path-like
        Results: ``OUT/<item>/`` per time-lapse, ``OUT/synapses_all.csv``, ``OUT/batch_report.json``.
    model, backend : optional
        What each worker loads: ``deepis_rt.load(model, backend=backend, **load_options)``.
    ray_address : str, optional
        None: no Ray, items one after the other here. ``"local"``: start Ray on this machine.
        ``"auto"``: the cluster this machine belongs to (``ray start --head`` / ``--address``).
        ``"HOST:PORT"``: the cluster whose head node listens there (``ray start --head --port``).
        ``"ray://host:10001"``: a remote cluster through Ray Client. When Ray is already
        initialised in this process, that runtime is used as it is. A cluster that requires Ray's
        token authentication gets the token from ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or
        ``~/.ray/auth_token`` (see :mod:`deepis_rt.cluster.ray_connect`); nothing is written into
        ``out`` before the cluster has answered.
    retries : int
        Further attempts of an item whose attempt failed (0: none).
    num_workers : int, optional
        Actors (each with one Segmenter, pinned to a node); default: one per GPU where the cluster
        has GPUs, else one per ``cpus_per_worker`` CPUs (one per CPU by default); never more than
        there are items. See :mod:`deepis_rt.cluster.ray_placement`.
    cpus_per_worker : float, optional
        CPUs reserved per actor, also its PyTorch / ONNX Runtime thread count; default: the node's
        CPUs shared equally among the actors on it.
    gpus_per_worker : float, optional
        GPUs reserved per actor; default 1 when the cluster has GPUs (0 with the Triton backend:
        the server owns the GPUs), else 0.
    max_workers_per_node : int, optional
        At most this many actors on one node (e.g. to leave a node's memory or CPUs to others).
    load_options : dict, optional
        Further ``deepis_rt.load`` keywords (``url=``, ``model_name=`` for Triton, ``precision=``, ...).
    segmenter_factory : callable, optional
        Picklable callable that returns a Segmenter; replaces ``model`` / ``backend`` / ``load_options``.
    stream_settings : dict, optional
        :class:`~deepis_rt.stream.StreamSettings` fields (``voxel_size_um``, ``frame_interval_s``,
        ``medium_ri``, ``write_masks``, ``max_batch``, ...).
    progress : bool, optional
        tqdm bar over completed items (default: when stderr is a terminal).
    on_item : callable, optional
        Called with each item's final record (as in the report).
    command : dict, optional
        The command line (``name``, ``argv``, ``options``), kept as ``settings.command`` in the report.

    Returns
    -------
    BatchReport
    """
    if retries < 0:
        raise ConfigError(f"batch | retries must be >= 0, got {retries}")
    if (cpus_per_worker is not None and cpus_per_worker <= 0) or (num_workers is not None and num_workers < 1) \
            or (max_workers_per_node is not None and max_workers_per_node < 1):
        raise ConfigError("batch | cpus_per_worker must be > 0, num_workers and max_workers_per_node >= 1")
    from deepis_rt.stream.settings import StreamSettings

    stream_settings = dict(stream_settings or {})
    unknown = set(stream_settings) - set(StreamSettings.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"batch | unknown stream setting(s) {sorted(unknown)}")
    StreamSettings(**stream_settings)  # a setting out of range fails here, not in every item
    archive, out = Path(archive), Path(out)
    items = find_items(archive, out, follow_symlinks=bool(stream_settings.get("follow_symlinks")))
    started = time.time()
    report = BatchReport(
        archive=str(archive), out=str(out), engine="ray" if ray_address else "local",
        started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        settings={"model": None if model is None else str(model), "backend": backend, "retries": retries,
                  "ray_address": ray_address, **{k: v for k, v in stream_settings.items()}},
    )
    if command is not None:  # the command line, for `deepis-rt batch --config batch_report.json`
        report.settings["command"] = command
    todo: list[BatchItem] = []
    for item in items:
        marker = _read_marker(out, item)
        if marker.get("status") in _DONE and marker.get("signature") == item.signature() \
                and (out / item.name / "frames.csv").is_file():
            report.items.append({**marker, "skipped": True})
        else:
            todo.append(item)
    if report.items:
        log.info("batch | %d item(s) already done; skipped (delete %s to redo them)", len(report.items),
                 out / STATE_DIR)

    if segmenter_factory is None:
        options = dict(load_options or {})
        segmenter_factory = SegmenterSpec(None if model is None else str(model), backend, options.pop("device", None),
                                          options)
    # in this process threads are left as they are; on Ray each actor gets its share of its node
    worker_args = (segmenter_factory, str(out), stream_settings, None)
    connection = None
    pool: Any = None
    if todo and ray_address:
        # the cluster first: a cluster that cannot be used leaves OUT as it was
        connection = connect_ray(ray_address)
        try:
            slots = plan_actors(live_nodes(connection.ray), use_gpus=backend != "triton",
                                cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                                max_per_node=max_workers_per_node)
            wanted = min(num_workers or len(slots), len(slots), len(todo))
            if num_workers is not None and num_workers > len(slots):
                # actors that cannot be placed would hold their items forever
                log.warning("batch | %d workers asked, the cluster fits %d; using %d", num_workers, len(slots),
                            len(slots))
            # the plan lists nodes in turn, so its first slots spread over the nodes
            pool = RayActorPool(connection.ray, _Worker, worker_args, slots[:wanted], slots)
        except BaseException:
            connection.close()
            raise
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / STATE_DIR / "items").mkdir(parents=True, exist_ok=True)
    except BaseException:
        for opened in (pool, connection):
            if opened is not None:
                opened.close()
        raise
    bar = _progress(len(todo), progress)
    try:
        if todo:
            if pool is None:
                pool = _LocalPool(lambda: _Worker(*worker_args))
            log.info("batch | %d item(s) to process on %s", len(todo), pool.description)
            report.settings["workers"] = pool.description
            _schedule(pool, todo, retries, out, report, bar, on_item)
    finally:
        bar.close()
        if pool is not None:
            pool.close()
        if connection is not None:
            connection.close()
        report.finished_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        report.wall_s = round(time.time() - started, 3)
        report.items.sort(key=lambda it: it["item"])
        done = [it["item"] for it in report.items if it["status"] in _DONE]
        try:
            combine_synapses(out, done)
        except Exception as exc:
            log.warning("batch | %s not written: %s", SYNAPSES_ALL, exc)
        _atomic_text(out / REPORT_NAME, json.dumps(report.to_dict(), indent=2) + "\n")
    c = report.counts
    log.info("batch | done: %d ok, %d partial, %d failed, %d skipped; report in %s", c["ok"], c["partial"],
             c["failed"], c["skipped"], out / REPORT_NAME)
    return report


def _schedule(pool: Any, todo: list[BatchItem], retries: int, out: Path, report: BatchReport, bar: Any,
              on_item: Callable[[dict[str, Any]], None] | None) -> None:
    pending: deque[tuple[BatchItem, int]] = deque((item, 1) for item in todo)
    signatures = {item.name: item.signature() for item in todo}
    earlier: dict[str, list[dict[str, Any]]] = {}  # per item: the runs before its final one
    for item, attempt, result in _results(pool, pending):
        result = {"item": item.name, "source": str(item.path), "kind": item.kind, "frames_ok": 0,
                  "frames_failed": 0, "wall_s": None, "worker": None, **result, "attempts": attempt}
        result.pop("attempt", None)
        node_lost = result.pop("node_lost", False)
        runs = earlier.setdefault(item.name, [])
        lost_runs = sum(1 for r in runs if r["node_lost"])
        if result["status"] == "failed" and (attempt <= retries or (node_lost and lost_runs < MAX_NODE_LOSSES)):
            runs.append({"attempt": attempt, "node": result.get("node"), "node_lost": node_lost,
                         "error": result["error"]})
            if node_lost and lost_runs < MAX_NODE_LOSSES:
                # the node's fault, not the item's: run it again elsewhere without using up a retry
                log.warning("batch | %s: its node was lost; running it again on another node", item.name)
                pending.append((item, attempt))
            else:
                log.warning("batch | %s: attempt %d failed (%s); retrying", item.name, attempt, result["error"])
                pending.append((item, attempt + 1))
            continue
        if result["status"] == "failed":
            log.error("batch | %s: failed after %d attempt(s): %s", item.name, attempt, result["error"])
        result["earlier_runs"] = runs
        result["signature"] = signatures[item.name]
        result["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        _atomic_text(_marker_path(out, item), json.dumps(result, indent=2) + "\n")
        report.items.append(result)
        _atomic_text(out / REPORT_NAME, json.dumps(report.to_dict(), indent=2) + "\n")
        c = report.counts
        bar.update(1)
        bar.set_postfix(ok=c["ok"], partial=c["partial"], failed=c["failed"], refresh=False)
        if on_item is not None:
            on_item(result)


def _results(pool: Any, pending: deque) -> Iterator[tuple[BatchItem, int, dict[str, Any]]]:
    while pending or pool.busy():
        while pending and pool.has_capacity():
            pool.submit(*pending.popleft())
        if not pool.busy():  # no worker left: every node that could host one was lost
            item, attempt = pending.popleft()
            yield item, attempt, {"status": "failed", "error": "no Ray worker left (their nodes were lost)"}
            continue
        yield pool.next_result()
