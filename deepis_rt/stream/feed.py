"""Between the frames that arrive and the pipeline: the scheduler, its reader thread, the backlog.

Frames arrive (a file settled, a volume submitted) with their frame numbers and wait, unread,
in the :class:`~deepis_rt.stream.scheduling.FrameScheduler`; one thread takes them in the
policy's order, reads them and hands them to the pipeline's first queue (bounded: it waits while
the pipeline is full). The :class:`~deepis_rt.stream.backlog.BacklogMonitor` counts every
arrival and every frame inference takes.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from deepis_rt.stream.backlog import BacklogMonitor
from deepis_rt.stream.batching import BatchPlan
from deepis_rt.stream.pipeline import STOP, FrameTask, mark_failed
from deepis_rt.stream.scheduling import FrameScheduler

__all__ = ["FrameFeed"]

log = logging.getLogger(__name__)


class FrameFeed:
    """Arrived frames -> (policy order) -> read -> the pipeline's first queue.

    Parameters
    ----------
    policy : {"every", "newest"}
    outbox : queue.Queue
        The pipeline's first queue; gets :data:`STOP` after the last frame.
    monitor : BacklogMonitor
    plan : BatchPlan
        Frames in flight ahead of the network in ``newest`` mode: the batch the backlog calls for.
    check : callable
        ``check(task)`` validates a frame's volume after reading (raises on bad input).
    stop : threading.Event
        Set: no more frames are taken, except those held only in memory (submitted frames).
    """

    def __init__(self, policy: str, outbox: queue.Queue, monitor: BacklogMonitor, plan: BatchPlan,
                 check: Callable[[FrameTask], None], stop: threading.Event) -> None:
        self.monitor = monitor
        self.plan = plan
        self.scheduler = FrameScheduler(policy, limit=lambda: plan.choose(monitor.waiting))
        self.outbox = outbox
        self.check = check
        self.stop = stop
        self._lock = threading.Lock()
        self.arrived: dict[int, str] = {}  # frame -> source, of frames not yet written
        #: called with every frame as it arrives, before it waits (a live model's lane)
        self.on_arrive: list[Callable[[FrameTask], None]] = []
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="deepis-take", daemon=True)
        self._thread.start()

    def put(self, task: FrameTask) -> None:
        """A frame arrived: it waits for its turn."""
        with self._lock:
            self.arrived[task.frame] = task.source
        for listener in self.on_arrive:
            listener(task)
        self.monitor.arrive()
        self.scheduler.put(task)

    def close(self) -> None:
        """No more frames arrive: the reader ends the pipeline's input after the waiting ones."""
        self.scheduler.close()

    def written(self, frame: int) -> None:
        with self._lock:
            self.arrived.pop(frame, None)

    def not_written_before(self, frame: int) -> list[tuple[int, str]]:
        """Frames arrived before ``frame`` and not yet written, in frame order."""
        with self._lock:
            return sorted((f, s) for f, s in self.arrived.items() if f < frame)

    def hold_places_before(self, frame: int, results: Any) -> None:
        """Frames that arrived before ``frame`` and wait: a ``pending`` row keeps each one's number,
        so that a run stopped or killed now processes them later under it (``newest`` policy)."""
        earlier_frames = self.not_written_before(frame) if results is not None else []
        if not earlier_frames:
            return
        held = results.held_frames
        for earlier, source in earlier_frames:
            if earlier not in held:
                results.commit_frame({"frame": earlier, "source": source, "status": "pending", "deferred": 1})

    def inference_took(self, tasks: Sequence[FrameTask]) -> None:
        self.monitor.take(len(tasks))

    def inference_done(self, tasks: Sequence[FrameTask]) -> None:
        self.scheduler.through_inference(len(tasks))

    def _loop(self) -> None:
        try:
            while True:
                # frames held only in memory are processed even when stopping: no later run finds them
                task = self.scheduler.take(self.stop, keep=lambda t: t.load is None)
                if task is None:
                    break
                if task.load is not None:
                    self._read(task)
                self.outbox.put(task)
        except Exception:
            log.exception("stream: the frame reader failed; stopping")
        finally:
            self.outbox.put(STOP)

    def _read(self, task: FrameTask) -> None:
        t0 = time.perf_counter()
        load, task.load = task.load, None
        try:
            tomo = load()
        except Exception as exc:
            mark_failed(task, "read", exc)
        else:
            task.volume, task.medium_ri = tomo.ri, tomo.medium_ri
            task.voxel_size_um = tomo.voxel_size_um or task.voxel_size_um
            try:
                self.check(task)
            except Exception as exc:
                mark_failed(task, "read", exc)
        task.timings_ms["read"] = task.timings_ms.get("read", 0.0) + (time.perf_counter() - t0) * 1e3


def read_time_point(path: Any, index: int, voxel_size_um: Any, ri_scale: float | None, ri_offset: float | None) -> Any:
    """Time point ``index`` of a file, read when its frame's turn comes (the header is read again:
    a backlog of frames holds no open files)."""
    from deepis_rt.io import time_points

    return time_points(path, voxel_size_um=voxel_size_um, ri_scale=ri_scale, ri_offset=ri_offset)[index].read()
