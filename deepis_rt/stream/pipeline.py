"""Threaded stages with bounded queues: read -> preprocess -> infer -> analyse -> track/write.

Every stage is a small object with ``open() / process(item) / close()`` run by one
thread; items are typed payloads (:class:`FrameTask`). Queues are bounded, so a
slow stage makes the ones before it wait (back-pressure) instead of memory
growing. A failure in any stage marks the task failed (or, for a transient failure of
the backend, to be retried by the next run: :func:`mark_failed`) and passes it on, so the
writer still records it in order and the stream goes on.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["FrameTask", "Stage", "StageThread", "BatchStageThread", "STOP", "mark_failed", "run_callbacks"]

log = logging.getLogger(__name__)


class _Stop:
    """End-of-stream marker passed through every queue."""

    def __repr__(self) -> str:
        return "STOP"


STOP = _Stop()


@dataclass
class FrameTask:
    """One frame travelling through the pipeline."""

    frame: int
    #: key in frames.csv: the file name, ``name:tNNNN`` for a time point of a multi-frame file,
    #: or ``memory:NNNN`` for frames submitted in memory
    source: str
    path: Path | None = None
    time_s: float | None = None
    #: wall-clock time the frame was complete (file stopped changing / submit() called)
    complete_at: float = field(default_factory=time.time)
    volume: Any = None  # (Z, Y, X) float32 RI
    voxel_size_um: tuple[float, float, float] | None = None
    medium_ri: float | None = None
    prepared: Any = None  # runtime-specific pre-processed input
    output: Any = None  # raw network output for ``prepared``
    result: Any = None  # FrameResult once post-processed and analysed
    tracked: Any = None  # TrackedFrame once linked
    error: str | None = None
    #: the failure is transient (backend unavailable past the retry deadline): recorded with
    #: status ``retry`` and processed again by the next run on the same results folder
    retry: bool = False
    timings_ms: dict[str, float] = field(default_factory=dict)
    #: reads the frame's tomogram when the frame's turn comes (files); None once read / in memory
    load: Callable[[], Any] | None = None
    #: passed over for newer frames (``newest`` policy) and processed later, from the backlog
    deferred: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def status(self) -> str:
        """``ok``, ``retry`` (transient failure: processed again by the next run) or ``failed``."""
        return "ok" if self.error is None else ("retry" if self.retry else "failed")


class Stage:
    """A pipeline stage. Subclasses override :meth:`process` (and optionally open/close)."""

    name = "stage"

    def open(self) -> None:  # noqa: B027 - optional hook
        pass

    def process(self, task: FrameTask) -> FrameTask:
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - optional hook
        pass


def mark_failed(task: FrameTask, stage: str, exc: BaseException) -> None:
    """Record ``exc`` on ``task``; transient failures (:func:`~deepis_rt.backends.failures.is_transient`)
    mark it for retry by the next run instead of failing it."""
    from deepis_rt.backends.failures import is_transient
    from deepis_rt.errors import DeepisError

    task.retry = is_transient(exc)
    if isinstance(exc, DeepisError):
        task.error = str(exc)
    else:
        from deepis_rt.io.tomogram import library_reason

        task.error = f"{stage}: {library_reason(exc)}"  # a library's text may quote the file's bytes
        log.debug("stage %s failed on %s", stage, task.source, exc_info=True)


class StageThread(threading.Thread):
    """Runs ``stage.process`` on every task of ``inbox`` and puts the result in ``outbox``.

    Failed tasks are passed through untouched; a task failing here gets ``error`` set.
    """

    def __init__(self, stage: Stage, inbox: queue.Queue, outbox: queue.Queue | None) -> None:
        super().__init__(name=f"deepis-{stage.name}", daemon=True)
        self.stage = stage
        self.inbox = inbox
        self.outbox = outbox
        self.fatal: BaseException | None = None

    def _put(self, item: Any) -> None:
        if self.outbox is not None:
            self.outbox.put(item)

    def _run_one(self, task: FrameTask) -> FrameTask:
        if not task.ok:
            return task
        t0 = time.perf_counter()
        try:
            task = self.stage.process(task)
        except Exception as exc:
            mark_failed(task, self.stage.name, exc)
        task.timings_ms[self.stage.name] = task.timings_ms.get(self.stage.name, 0.0) + (
            time.perf_counter() - t0
        ) * 1e3
        return task

    def _loop(self) -> None:
        while True:
            item = self.inbox.get()
            if item is STOP:
                self._got_stop = True
                return
            self._put(self._run_one(item))

    def run(self) -> None:
        self._got_stop = False
        try:
            self.stage.open()
            self._loop()
        except BaseException as exc:  # a broken stage must not hang the pipeline
            self.fatal = exc
            log.error("stage %s stopped: %s", self.stage.name, exc, exc_info=True)
            # drain so that producers never block forever, and fail what is left
            while not self._got_stop:
                item = self.inbox.get()
                if item is STOP:
                    break
                if isinstance(item, FrameTask):
                    mark_failed(item, self.stage.name, exc)
                    self._put(item)
        finally:
            try:
                self.stage.close()
            finally:
                self._put(STOP)


class BatchStageThread(StageThread):
    """Like :class:`StageThread`, but hands the stage every task that is queued up
    (at most ``max_batch``, a number or a callable asked at every batch) at once:
    ``stage.process_batch(tasks)``.

    Batching only happens when frames queue up, so a single frame is never delayed. ``on_take``
    and ``on_done`` (optional) are called with each batch before and after the stage runs it.
    """

    def __init__(self, stage: Stage, inbox: queue.Queue, outbox: queue.Queue | None,
                 max_batch: int | Callable[[], int],
                 on_take: Callable[[Sequence[FrameTask]], None] | None = None,
                 on_done: Callable[[Sequence[FrameTask]], None] | None = None) -> None:
        super().__init__(stage, inbox, outbox)
        self.max_batch = max_batch if callable(max_batch) else (lambda n=max(1, int(max_batch)): n)
        self.on_take = on_take or (lambda batch: None)
        self.on_done = on_done or (lambda batch: None)

    def _put(self, item: Any) -> None:
        if isinstance(item, FrameTask):  # also tasks drained after a fatal error
            self.on_done([item])
        super()._put(item)

    def _loop(self) -> None:
        while True:
            item = self.inbox.get()
            if item is STOP:
                self._got_stop = True
                return
            batch = [item]
            size = max(1, int(self.max_batch()))
            while len(batch) < size:
                try:
                    nxt = self.inbox.get_nowait()
                except queue.Empty:
                    break
                if nxt is STOP:
                    self._got_stop = True
                    break
                batch.append(nxt)
            self.on_take(batch)
            for task in self._run_batch(batch):
                self._put(task)
            if self._got_stop:
                return

    def _run_batch(self, batch: Sequence[FrameTask]) -> Sequence[FrameTask]:
        good = [t for t in batch if t.ok]
        if good:
            t0 = time.perf_counter()
            try:
                self.stage.process_batch(good)  # type: ignore[attr-defined]
            except Exception:
                # one bad frame must not fail its batch-mates: retry one by one
                for task in good:
                    task.output = None
                    try:
                        self.stage.process_batch([task])  # type: ignore[attr-defined]
                    except Exception as exc:
                        mark_failed(task, self.stage.name, exc)
            per_frame = (time.perf_counter() - t0) * 1e3 / len(good)
            for task in good:
                task.timings_ms[self.stage.name] = task.timings_ms.get(self.stage.name, 0.0) + per_frame
        return batch


def run_callbacks(callbacks: Sequence[Callable[..., Any]], *args: Any) -> None:
    """Call user callbacks; an exception in one is logged, never stops the stream."""
    for cb in callbacks:
        try:
            cb(*args)
        except Exception:
            log.exception("stream: a callback raised; continuing")
