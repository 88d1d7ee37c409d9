"""``deepis_rt.stream.Stream``: segment, measure and track tomograms as they arrive.

Wiring (one thread per stage, bounded queues in between)::

    watch -> wait (every frame in order, or the newest first) -> read -> preprocess
          -> infer (batched as the backlog calls for) -> analyse -> track + write
    submit() --^

Use it as an iterator of :class:`~deepis_rt.runtime.FrameResult` objects, with
callbacks, or both::

    seg = deepis_rt.load()
    with Stream("camera_dir/", "results/", seg, on_synapse_event=print) as stream:
        for result in stream:
            print(result.frame, len(result.synapses))

Stopping conditions: ``once`` (what is in the folder now), ``idle_timeout_s``,
``max_frames``, or :meth:`Stream.stop` (Ctrl-C in the CLI): frames in flight are
finished and written before the iteration ends.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt.stream.backlog import BacklogEvent, BacklogMonitor
from deepis_rt.stream.batching import BatchPlan
from deepis_rt.stream.continuation import check_same_source, read_previous_summary
from deepis_rt.stream.feed import FrameFeed, read_time_point
from deepis_rt.stream.live import LiveLane, label_event
from deepis_rt.stream.pipeline import (
    STOP,
    BatchStageThread,
    FrameTask,
    StageThread,
    mark_failed,
    run_callbacks,
)
from deepis_rt.stream.results import ResultsFolder
from deepis_rt.stream.retry import BackendEvent, BackendHealth, RetryPolicy
from deepis_rt.stream.settings import StreamSettings
from deepis_rt.stream.stages import AnalyseStage, InferStage, PreprocessStage
from deepis_rt.stream.watch import FolderWatcher
from deepis_rt.stream.writer import FrameWriter

__all__ = ["Stream", "StreamSettings"]

log = logging.getLogger(__name__)


def _warm_imports() -> None:
    try:
        import laptrack  # noqa: F401
    except Exception:  # the tracker reports a missing laptrack itself
        pass


# --------------------------------------------------------------------------------------------
# the stream
# --------------------------------------------------------------------------------------------


class Stream:
    """Segment, measure and track a live series of tomograms.

    Parameters
    ----------
    source : path-like or None
        Camera folder to watch; None for frames given only through :meth:`submit`.
    out : path-like or None
        Results folder (DESIGN.md section 3); None keeps results in memory only.
    segmenter : Segmenter
        From :func:`deepis_rt.load`.
    on_frame : callable, optional
        ``on_frame(result)`` for every completed frame (also failed ones: ``result.status``).
    on_synapse_event : callable, optional
        ``on_synapse_event(event)`` for formed / lost / re-formed / area-threshold events.
    on_backend : callable, optional
        ``on_backend(event)`` (:class:`~deepis_rt.stream.retry.BackendEvent`) once when the backend
        becomes unavailable (frames wait and are retried for ``retry_for_s``) and once when it is back.
    command : dict, optional
        The command line that made this stream (``name``, ``argv``, ``options``), kept in
        ``summary.json``'s reproducibility record for ``--config``.
    on_backlog : callable, optional
        ``on_backlog(event)`` (:class:`~deepis_rt.stream.backlog.BacklogEvent`) once when frames
        arrive faster than they are processed for longer than ``backlog_window_s``, and once when
        the stream has caught up.
    live_segmenter : Segmenter, optional
        A fast model that segments the newest frame at once (results in ``<out>/live/``,
        ``on_live_frame``) while ``segmenter`` processes every frame for the record (stream/live.py).
    on_live_frame : callable, optional
        ``on_live_frame(result)`` for every result of ``live_segmenter``.
    settings : StreamSettings, optional
        The stream's options, checked when made.
    **fields
        Fields of :class:`StreamSettings` (instead of ``settings``, or changing some of its fields).
    """

    def __init__(
        self,
        source: str | Path | None,
        out: str | Path | None,
        segmenter: Any,
        on_frame: Callable[[Any], None] | None = None,
        on_synapse_event: Callable[[Any], None] | None = None,
        on_backend: Callable[[BackendEvent], None] | None = None,
        command: dict[str, Any] | None = None,
        on_backlog: Callable[[BacklogEvent], None] | None = None,
        live_segmenter: Any = None,
        on_live_frame: Callable[[Any], None] | None = None,
        settings: StreamSettings | None = None,
        **fields: Any,
    ) -> None:
        from deepis_rt.analysis.tables import CELL_COLUMNS, SYNAPSE_COLUMNS
        from deepis_rt.errors import InputError

        # settings made (and checked) by the caller, or its fields as keywords; unknown names are refused
        self.settings = (StreamSettings.from_dict(fields) if settings is None
                         else settings.replace(**fields) if fields else settings)
        self.segmenter = segmenter
        self.source = Path(source) if source is not None else None
        if self.source is not None and not self.source.is_dir():
            raise InputError(f"stream | {self.source}: no such folder")
        self.command = command
        self._frame_callbacks = [on_frame] if on_frame else []
        self._event_callbacks = [on_synapse_event] if on_synapse_event else []
        self._backend_callbacks = [on_backend] if on_backend else []
        self._backlog_callbacks = [on_backlog] if on_backlog else []
        self.results = ResultsFolder(out, CELL_COLUMNS, SYNAPSE_COLUMNS) if out is not None else None
        self.writer = FrameWriter(self.results, self.settings, self._on_event)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._input_closed = threading.Event()
        self._started = False
        self._finished = False
        self._next_frame = 0
        self._frames_read = 0
        self._t0_mtime: float | None = None
        self._run_started = time.time()
        self._last_refresh = 0.0
        self._events: list[Any] = []
        self._out_q: queue.Queue = queue.Queue(maxsize=max(8, 2 * self.settings.queue_size))
        self._read_q: queue.Queue = queue.Queue(maxsize=self.settings.queue_size)
        self._threads: list[threading.Thread] = []
        self._producer: threading.Thread | None = None
        self._watcher: FolderWatcher | None = None
        self._previous_summary: dict[str, Any] = {}
        self._backend_events: list[BackendEvent] = []
        self._resubmitted: set[tuple[int, str]] = set()  # (frame, source) given again, not yet written
        self._fatal: Exception | None = None  # the results folder could not be written: the stream stops
        self.backlog = BacklogMonitor(self.settings.backlog_window_s,
                                      on_event=lambda e: run_callbacks(self._backlog_callbacks, e))
        self.health = BackendHealth(RetryPolicy(retry_for_s=self.settings.retry_for_s),
                                    on_event=self._on_backend_event, waiting=lambda: self.backlog.waiting,
                                    stop=self._stop)
        self.batch_plan = BatchPlan.for_segmenter(segmenter, self.settings.batch_curve, self.settings.max_batch)
        self._feed = FrameFeed(self.settings.policy, self._read_q, self.backlog, self.batch_plan,
                               self._check_volume, self._stop)
        self.live = None if live_segmenter is None else LiveLane(live_segmenter, out, self.settings,
                                                                 on_live_frame, self._on_event)

    # -- public API -----------------------------------------------------------------------------
    def start(self) -> Stream:
        """Open the results folder (continuing an earlier run there) and start the threads."""
        if self._started:
            return self
        self._started = True
        done_sources: set[str] = set()
        if self.results is not None:
            self._previous_summary = read_previous_summary(self.results.root)
            check_same_source(self.results.root, self.source, self._previous_summary, self.settings.check_source)
            committed = self.results.open()
            done_sources = self.results.done_sources
            self._next_frame = self.results.next_frame
            self._t0_mtime = self._previous_summary.get("t0_mtime")
            if not self._previous_summary:  # the source is on record from the start (see check_same_source)
                self.results.write_summary(self.summary())
            if committed:
                log.info("stream: continuing %s after %d committed frame(s)", self.results.root, len(committed))
                self.writer.replay(committed)
                # frames processed out of order: the tables' track ids are final only once re-linked
                self.writer.relink_needed = any(r.get("deferred") == "1" for r in committed)
        self._done_sources = done_sources
        # laptrack (pandas, scikit-learn) takes seconds to import: do it now, not on the first frame
        threading.Thread(target=_warm_imports, name="deepis-warmup", daemon=True).start()
        s, plan, feed = self.settings, self.batch_plan, self._feed
        # a batch the backlog calls for fits in front of the network; a runner call takes it whole
        q_pre: queue.Queue = queue.Queue(maxsize=max(s.queue_size, plan.best))
        self.segmenter.batch_size = max(int(getattr(self.segmenter, "batch_size", 1) or 1), plan.best)
        q_inf: queue.Queue = queue.Queue(maxsize=s.queue_size)
        q_an: queue.Queue = queue.Queue(maxsize=s.queue_size)
        self._threads = [
            StageThread(PreprocessStage(self.segmenter), self._read_q, q_pre),
            BatchStageThread(InferStage(self.segmenter, self.health), q_pre, q_inf,
                             lambda: plan.choose(self.backlog.waiting), feed.inference_took, feed.inference_done),
            StageThread(AnalyseStage(self.segmenter, s.medium_ri), q_inf, q_an),
            threading.Thread(target=self._writer_loop, args=(q_an,), name="deepis-write", daemon=True),
        ]
        for t in self._threads:
            t.start()
        if self.live is not None:
            self.live.start()
            feed.on_arrive.append(self.live.offer)
        feed.start()
        if self.source is not None:
            self._watcher = FolderWatcher(
                self.source, settle_s=s.settle_s, poll_s=s.poll_s, use_events=s.use_events,
                skip={src for src in done_sources if ":t" not in src}, follow_symlinks=s.follow_symlinks,
            )
            self._producer = threading.Thread(target=self._producer_loop, name="deepis-read", daemon=True)
            self._producer.start()
        return self

    def submit(self, volume: np.ndarray, time_s: float, voxel_size_um: Sequence[float] | None = None,
               medium_ri: float | None = None, *, ri_scale: float | None = None,
               ri_offset: float | None = None) -> int:
        """Queue an in-memory volume (e.g. from a camera SDK); returns its frame number.

        ``ri_scale`` / ``ri_offset`` (default: the stream's settings) state how ``volume`` holds
        RI, as in :meth:`deepis_rt.runtime.Segmenter.segment`. Blocks while the pipeline is full
        (back-pressure), except with ``policy="newest"``: frames then wait in memory for their
        turn, never dropped.
        """
        if not self._started:
            self.start()
        self._check_input_open("submit")
        from deepis_rt.io.plausibility import check_time

        time_s = check_time(time_s, "stream | submit", fix="pass the acquisition time in seconds")
        with self._lock:
            frame = self._next_frame
            self._next_frame += 1
        vox = tuple(float(v) for v in voxel_size_um) if voxel_size_um is not None else self.settings.voxel_size_um
        task = FrameTask(frame=frame, source=f"memory:{frame:06d}", time_s=float(time_s),
                         volume=volume, voxel_size_um=vox, medium_ri=medium_ri)
        t0 = time.perf_counter()
        if ri_scale is None and ri_offset is None:
            ri_scale, ri_offset = self.settings.ri_scale, self.settings.ri_offset
        try:
            self._check_volume(task, ri_scale, ri_offset)
        except Exception as exc:
            task.error = str(exc)
        task.timings_ms["read"] = (time.perf_counter() - t0) * 1e3
        if self.settings.policy == "every":  # in the newest-first order, every frame is held until its turn
            self._feed.scheduler.wait_below(self.settings.queue_size, self._stop)
        self._feed.put(task)
        return frame

    def resubmit(self, result: Any) -> int:
        """Give again a frame of :meth:`submit` that came back with ``status == "retry"``.

        The frame keeps its number, time and volume (``result.retry_input``): with a results folder
        its ``retry`` row is replaced, and tracks are re-linked in frame order when the stream ends.
        Blocks while the pipeline is full. Returns the frame number.

        Raises
        ------
        ConfigError
            ``result`` is not a ``retry`` result of a submitted frame of this stream, it was given
            again already, or :meth:`end_input` was called.
        """
        from deepis_rt.errors import ConfigError

        held, status = getattr(result, "retry_input", None), getattr(result, "status", None)
        if status != "retry" or held is None:
            raise ConfigError(
                "stream: resubmit() takes a result of submit() with status 'retry' (got status "
                f"{status!r}{', already given again or read from a file' if status == 'retry' else ''})"
            )
        self._check_input_open("resubmit")
        result.retry_input = None
        task = FrameTask(frame=result.frame, source=result.source, time_s=result.time_s, volume=held.volume,
                         voxel_size_um=held.voxel_size_um, medium_ri=held.medium_ri)
        with self._lock:
            self._resubmitted.add((task.frame, task.source))
        self._feed.put(task)
        return task.frame

    def _check_input_open(self, what: str) -> None:
        from deepis_rt.errors import ConfigError, ResultsWriteError

        if self._fatal is not None:
            raise ResultsWriteError(f"{self._fatal}; {what}() refused")
        if self._input_closed.is_set():
            raise ConfigError(f"stream: {what}() after end_input() or stop(): the stream takes no more frames")

    @property
    def tracker(self) -> Any:
        """The :class:`~deepis_rt.analysis.SynapseTracker` linking this stream's frames."""
        return self.writer.tracker

    def end_input(self) -> None:
        """No more frames will come: finish those in flight, then end the iteration."""
        self._input_closed.set()
        if self._producer is None and self._started:
            self._close_pipeline_input()

    def stop(self) -> None:
        """Stop taking new frames (Ctrl-C); frames in flight are finished and written."""
        self._stop.set()
        self.end_input()

    def __iter__(self) -> Iterator[Any]:
        if not self._started:
            self.start()
        while True:
            item = self._out_q.get()
            if item is STOP:
                self._finished = True
                if self._fatal is not None:
                    raise self._fatal
                break
            yield item

    def run(self) -> dict[str, Any]:
        """Process until a stop condition; returns the summary."""
        for _ in self:
            pass
        return self.summary()

    def close(self) -> None:
        """Stop, wait for the threads, write the final summary and plots."""
        if not self._started:
            return
        self.stop()
        if not self._finished:
            for _ in self:
                pass
        for t in self._threads:
            t.join(timeout=60)
        if self._watcher is not None:
            self._watcher.close()

    def __enter__(self) -> Stream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- producer --------------------------------------------------------------------------------
    def _close_pipeline_input(self) -> None:
        with self._lock:
            if getattr(self, "_input_stop_sent", False):
                return
            self._input_stop_sent = True
        self._feed.close()

    def _limit_reached(self) -> bool:
        return self.settings.max_frames is not None and self._frames_read >= self.settings.max_frames

    def _producer_loop(self) -> None:
        s = self.settings
        watcher = self._watcher
        assert watcher is not None
        last_new = time.monotonic()
        try:
            while not self._stop.is_set() and not self._limit_reached():
                files = watcher.scan()
                for ff in files:
                    if self._stop.is_set() or self._limit_reached():
                        break
                    self._read_file(ff)
                    last_new = time.monotonic()
                if files:
                    continue
                if s.once and not watcher.has_pending:
                    break
                # a file still being written (or settling) is a new frame on its way, not idleness
                if s.idle_timeout_s is not None and not watcher.has_pending \
                        and time.monotonic() - last_new >= s.idle_timeout_s:
                    log.info("stream: no new frame for %.1f s; stopping", s.idle_timeout_s)
                    break
                if self._input_closed.is_set():
                    break
                watcher.wait()
        except Exception:
            log.exception("stream: the folder reader failed; stopping")
        finally:
            self._close_pipeline_input()

    def _read_file(self, ff: Any) -> None:
        from deepis_rt.io import time_points

        name = ff.path.name
        t0 = time.perf_counter()
        try:
            s = self.settings
            points = time_points(ff.path, voxel_size_um=s.voxel_size_um, ri_scale=s.ri_scale, ri_offset=s.ri_offset)
        except Exception as exc:  # the file itself (type, header, layout): one failed frame
            if self._limit_reached():
                return
            task = self._new_task(name, ff, None)
            mark_failed(task, "read", exc)
            task.timings_ms["read"] = (time.perf_counter() - t0) * 1e3
            self._feed.put(task)
            return
        for index, point in enumerate(points):
            # each time point is its own frame: a damaged one is recorded failed and the rest are read
            source = f"{name}:t{index:04d}" if point.index is not None else name
            if source in self._done_sources:
                continue  # done by an earlier run: not even read
            if self._limit_reached() or self._stop.is_set():
                return
            # the voxels are read when the frame's turn comes (feed.py), so a backlog holds no volumes
            task = self._new_task(source, ff, None, time_s=point.time_s)
            task.load = functools.partial(read_time_point, ff.path, index, s.voxel_size_um, s.ri_scale, s.ri_offset)
            task.timings_ms["read"] = (time.perf_counter() - t0) * 1e3
            self._feed.put(task)
            t0 = time.perf_counter()

    def _new_task(self, source: str, ff: Any, tomo: Any, time_s: float | None = None) -> FrameTask:
        with self._lock:
            # a frame recorded ``retry`` by an earlier run keeps its number (its row is replaced)
            frame = self.results.retry_frame(source) if self.results is not None else None
            if frame is None:
                frame = self._next_frame
                self._next_frame += 1
            self._frames_read += 1
        if self._t0_mtime is None:
            self._t0_mtime = ff.mtime
        if tomo is not None and tomo.time_s is not None:
            time_s = float(tomo.time_s)
        elif time_s is not None:  # the file's time of a time point that could not be read
            time_s = float(time_s)
        elif self.settings.frame_interval_s is not None:
            time_s = frame * self.settings.frame_interval_s
        else:
            time_s = max(0.0, ff.mtime - self._t0_mtime)
        return FrameTask(
            frame=frame,
            source=source,
            path=ff.path,
            time_s=time_s,
            complete_at=ff.complete_at,
            volume=None if tomo is None else tomo.ri,
            voxel_size_um=(None if tomo is None else tomo.voxel_size_um) or self.settings.voxel_size_um,
            medium_ri=None if tomo is None else tomo.medium_ri,
        )

    def _check_volume(self, task: FrameTask, ri_scale: float | None = None, ri_offset: float | None = None) -> None:
        from deepis_rt.errors import InputError

        if task.voxel_size_um is None:
            raise InputError(
                f"stream | {task.source}: the file carries no voxel size; pass --voxel-size Z Y X "
                "(or write a <name>.json sidecar with voxel_size_um)"
            )
        # the volume as RI from here on (files were decoded by their reader; submit()ted arrays here)
        task.volume = self.segmenter.check_volume(task.volume, task.source, ri_scale=ri_scale, ri_offset=ri_offset)

    # -- writer ----------------------------------------------------------------------------------
    def _writer_loop(self, inbox: queue.Queue) -> None:
        try:
            while True:
                task = inbox.get()
                if task is STOP:
                    break
                if self._fatal is not None:  # draining after a write failure: nothing more is committed
                    continue
                with self._lock:
                    resubmitted = (task.frame, task.source) in self._resubmitted
                    self._resubmitted.discard((task.frame, task.source))
                try:
                    if self.settings.policy == "newest":
                        self._feed.hold_places_before(task.frame, self.results)
                    result = self.writer.finish(task, resubmitted=resubmitted)
                except Exception as exc:
                    self._write_failed(task, exc)
                    continue
                self._feed.written(task.frame)
                self.backlog.written(result.latency_ms / 1e3 if task.ok else None, task.deferred)
                run_callbacks(self._frame_callbacks, result)
                if time.time() - self._last_refresh >= self.settings.refresh_s:
                    self._refresh(final=False)
                self._out_q.put(result)
        finally:
            if self.writer.relink_needed:
                try:
                    self.writer.relink()
                except Exception:
                    log.exception("stream: re-linking tracks failed; track ids of retried frames may be off")
            if self.live is not None:
                self.live.close()
            self._refresh(final=True)
            self._out_q.put(STOP)

    def _write_failed(self, task: FrameTask, exc: Exception) -> None:
        """The results could not be written: stop taking frames, drain the pipeline, end the iteration
        with :class:`~deepis_rt.errors.ResultsWriteError`. Nothing uncommitted is lost for files: the
        next run on the folder processes every frame without a committed row."""
        from deepis_rt.errors import ResultsWriteError

        where = f"stream | {self.results.root}" if self.results is not None else "stream"
        again = ("the next run on the same folder processes every frame not committed"
                 if self.source is not None else "frames given with submit() from this one on were not written")
        self._fatal = ResultsWriteError(
            f"{where}: cannot write the results of frame {task.frame} ({task.source}): "
            f"{type(exc).__name__}: {exc}; stopped ({again})")
        log.error("%s", self._fatal, exc_info=log.isEnabledFor(logging.DEBUG))
        self._stop.set()
        self._input_closed.set()
        if self._producer is None:
            # frames come from submit(): the end-of-input marker goes in from another thread, as the
            # pipeline may be full and this (writer) thread must keep draining it meanwhile; a folder
            # reader sees the stop and puts the marker in itself, after its last frame
            threading.Thread(target=self._close_pipeline_input, name="deepis-stop", daemon=True).start()

    def _on_backend_event(self, event: BackendEvent) -> None:
        self._backend_events.append(event)
        run_callbacks(self._backend_callbacks, event)

    def _on_event(self, event: Any) -> None:
        if getattr(event, "model", "") is None:  # the record's tracker: the main model's event
            event = label_event(event, "main")
        self._events.append(event)
        run_callbacks(self._event_callbacks, event)

    # -- summaries ---------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Run facts: backend, model, frames, throughput, latency percentiles, synapse kinetics."""
        from deepis_rt.analysis.quality import quality_summary
        from deepis_rt.core.stats import latency_stats
        from deepis_rt.report.record import run_record

        elapsed = max(time.time() - self._run_started, 1e-9)
        w = self.writer
        lat = latency_stats(w.latencies_ms)
        statuses = Counter(r["status"] for r in (self.results.committed if self.results else []))
        total_ok, total_failed, total_retry = statuses["ok"], statuses["failed"], statuses["retry"]
        seg = self.segmenter
        return {
            "backend": getattr(seg, "backend", None),
            "device": getattr(seg, "device", None),
            "model": getattr(seg, "model_info", {}),
            "source": str(self.source) if self.source else None,
            # the source folder as an absolute path: a later run on this results folder checks it
            "source_path": str(self.source.resolve()) if self.source else None,
            # how inputs were turned into RI: None = as stored / RI x 10 000 integers (deepis_rt.io.ri)
            "ri_scale": self.settings.ri_scale,
            "ri_offset": self.settings.ri_offset,
            "t0_mtime": self._t0_mtime,
            "frames_ok": total_ok if self.results else w.n_ok,
            "frames_failed": total_failed if self.results else w.n_failed,
            # transient failures past retry_for_s: processed again by the next run on this folder
            # (files) or given again with resubmit() (submitted frames)
            "frames_retry": total_retry if self.results else w.n_retry,
            # passed over for newer frames (policy newest) when the run stopped: the next run does them
            "frames_pending": statuses["pending"],
            "run": {
                "frames_ok": w.n_ok,
                "frames_failed": w.n_failed,
                "frames_retry": w.n_retry,
                "backend": {**self.health.describe(),
                            "events": [dataclasses.asdict(e) for e in self._backend_events[-50:]]},
                "wall_s": elapsed,
                "throughput_fps": (w.n_ok + w.n_failed + w.n_retry) / elapsed,
                "latency_ms": {"p50": lat.p50_ms, "p95": lat.p95_ms, "p99": lat.p99_ms, "mean": lat.mean_ms,
                               "max": lat.max_ms, "n": lat.n},
                "policy": self.settings.policy,
                "backlog": self.backlog.describe(),  # largest backlog, time behind, latency trend
                "batching": self.batch_plan.describe(),
            },
            "synapses": (synapses := [{"synapse_id": i + 1, **s.to_dict()}
                                      for i, s in enumerate(self.writer.tracker.summary())]),
            "truth": self._truth_vs_fit(synapses),
            "live": self.live.summary() if self.live is not None else None,
            # frames per quality reason (deepis_rt.analysis.quality), over every run on this folder
            "quality": quality_summary([r.get("quality", "") for r in self.results.committed if r["status"] == "ok"]
                                       if self.results else w.qualities, getattr(seg, "tta", False)),
            # where the network's part of is_area_err_um2 comes from (the checkpoint's own calibration or not)
            "is_area_uncertainty": seg.uncertainty_record() if hasattr(seg, "uncertainty_record") else None,
            "events": [dataclasses.asdict(e) if dataclasses.is_dataclass(e) else repr(e) for e in self._events[-200:]],
            "reproducibility": run_record(seg, self.settings, self.command, self.source,
                                          [r["source"] for r in (self.results.committed if self.results else [])]),
        }

    @functools.cached_property
    def _source_truth(self) -> dict[str, Any] | None:
        """The true kinetics of a synthetic source (``synth.json`` in the folder), read once."""
        from deepis_rt.synth.truth import kinetics_truth

        return kinetics_truth(self.source) if self.source is not None else None

    def _truth_vs_fit(self, synapses: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Synthetic sources: true kinetics next to the fit."""
        from deepis_rt.synth.truth import compare_kinetics

        truth = self._source_truth
        return None if truth is None else compare_kinetics(truth, synapses)

    def _refresh(self, final: bool) -> None:
        self._last_refresh = time.time()
        if self.results is None:
            return
        try:
            self.results.write_summary(self.summary())
        except Exception:
            log.exception("stream: summary.json not written")
        try:
            from deepis_rt.analysis.plots import plot_synapses

            plot_synapses(self.writer.tracker, self.results.plots)
        except Exception:
            log.exception("stream: plots not written")
        if final:
            self.writer.end_of_run()
