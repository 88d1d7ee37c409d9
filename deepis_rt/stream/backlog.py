"""Knowing when a stream falls behind the microscope, and when it has caught up.

"Near real time" holds only while frames arrive no faster than the stream processes them. The
:class:`BacklogMonitor` counts frames as they arrive (complete on disk or submitted) and as
inference takes them, and times the results as they are written:

* **arrival rate**: frames per second over the recent arrivals;
* **processing rate**: what the stream sustains, from the intervals between results written
  back to back while frames were waiting (the pipeline busy), else from single-frame latencies;
* **frames waiting**: arrived, not yet taken by inference;
* **latency trend**: the slope of the latency (file complete -> results written) over the recent
  results, in seconds of latency per second of run: > 0 when decisions get older and older.

The stream is *behind* once more than one frame has waited for longer than ``window_s`` while
frames arrived faster than they were processed; it has *caught up* when at most one waits again.
Each change is reported once (:class:`BacklogEvent`), never per frame.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["BacklogEvent", "BacklogMonitor", "DEFAULT_BACKLOG_WINDOW_S"]

log = logging.getLogger(__name__)

#: how long frames must pile up before the stream says it is behind (s): longer than the jitter of
#: a pipeline that keeps up (a frame read while the previous one is in inference), far shorter than
#: a time-lapse
DEFAULT_BACKLOG_WINDOW_S = 5.0

_RECENT = 20  # arrivals / results the rates and the trend are computed over


@dataclass(frozen=True)
class BacklogEvent:
    """The stream fell behind the arrival of frames, or caught up, as given to ``on_backlog``.

    Attributes
    ----------
    kind : {"behind", "caught_up"}
    time : float
        Wall-clock time (``time.time()``).
    arrival_fps : float or None
        Frames arriving per second, recently.
    processing_fps : float or None
        Frames per second the stream sustains.
    waiting_frames : int
        Frames arrived and not yet taken by inference.
    latency_s : float or None
        Latency of the last result written (file complete -> results written).
    latency_trend_s_per_s : float or None
        Slope of the recent latencies: seconds of latency gained per second of run.
    behind_s : float
        For ``caught_up``: how long the stream was behind.
    max_waiting_frames : int
        For ``caught_up``: the largest backlog of the episode.
    """

    kind: str
    time: float
    arrival_fps: float | None
    processing_fps: float | None
    waiting_frames: int
    latency_s: float | None = None
    latency_trend_s_per_s: float | None = None
    behind_s: float = 0.0
    max_waiting_frames: int = 0


def _rate(times: deque[float]) -> float | None:
    if len(times) < 2 or times[-1] <= times[0]:
        return None
    return (len(times) - 1) / (times[-1] - times[0])


class BacklogMonitor:
    """Tracks arrivals, takes and results; reports falling behind and catching up.

    Parameters
    ----------
    window_s : float
        How long more than one frame must wait before the stream says it is behind.
    on_event : callable, optional
        ``on_event(BacklogEvent)``; exceptions are logged, never raised.
    clock : callable
        Monotonic seconds (tests inject a fake).
    """

    def __init__(self, window_s: float = DEFAULT_BACKLOG_WINDOW_S,
                 on_event: Callable[[BacklogEvent], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = float(window_s)
        self.on_event = on_event
        self.clock = clock
        self._lock = threading.Lock()
        self.arrived = 0
        self.taken = 0
        self._arrivals: deque[float] = deque(maxlen=_RECENT)
        self._busy_intervals: deque[float] = deque(maxlen=_RECENT)
        self._latencies: deque[tuple[float, float]] = deque(maxlen=_RECENT)  # (written at, latency s)
        self._all_latencies: list[tuple[float, float]] = []
        self.decision_latencies_s: list[float] = []  # of frames processed on arrival (not deferred)
        self._last_written: float | None = None
        self._busy_since_last = False
        self._piling_since: float | None = None  # more than one frame waiting since
        self._behind_since: float | None = None
        self._episode_max = 0
        self.max_waiting = 0
        self.behind_s_total = 0.0
        self.episodes = 0
        self.events: list[BacklogEvent] = []

    # -- what happens to frames -----------------------------------------------------------------------
    def arrive(self, n: int = 1) -> None:
        """``n`` frames are complete and wait."""
        with self._lock:
            now = self.clock()
            self.arrived += n
            for _ in range(n):
                self._arrivals.append(now)
            self._busy_since_last = True
            event = self._check(now)
        self._emit(event)

    def take(self, n: int = 1) -> None:
        """Inference took ``n`` waiting frames."""
        with self._lock:
            self.taken += n
            event = self._check(self.clock())
        self._emit(event)

    def written(self, latency_s: float | None, deferred: bool = False) -> None:
        """A result was written; ``latency_s`` from file complete (None for a frame that failed);
        ``deferred``: the frame was passed over for newer ones (its latency is no decision's)."""
        with self._lock:
            now = self.clock()
            if self._last_written is not None and self._busy_since_last:
                self._busy_intervals.append(now - self._last_written)
            self._last_written = now
            self._busy_since_last = self.waiting > 0
            if latency_s is not None and np.isfinite(latency_s):
                self._latencies.append((now, float(latency_s)))
                self._all_latencies.append((now, float(latency_s)))
                if not deferred:
                    self.decision_latencies_s.append(float(latency_s))
            event = self._check(now)
        self._emit(event)

    # -- state ----------------------------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        """Frames arrived and not yet taken by inference."""
        return max(0, self.arrived - self.taken)

    @property
    def behind(self) -> bool:
        return self._behind_since is not None

    def arrival_fps(self) -> float | None:
        return _rate(self._arrivals)

    def processing_fps(self) -> float | None:
        if self._busy_intervals:
            mean = float(np.mean(self._busy_intervals))
            return 1.0 / mean if mean > 0 else None
        if self._latencies:  # never busy back to back yet: one frame at a time (a lower bound)
            median = float(np.median([lat for _, lat in self._latencies]))
            return 1.0 / median if median > 0 else None
        return None

    @staticmethod
    def _trend(points: Any) -> float | None:
        pts = list(points)
        if len(pts) < 3:
            return None
        t = np.array([p[0] for p in pts])
        if np.ptp(t) <= 0:
            return None
        return float(np.polyfit(t - t[0], np.array([p[1] for p in pts]), 1)[0])

    def latency_trend(self) -> float | None:
        """Seconds of latency gained per second of run, over the recent results."""
        return self._trend(self._latencies)

    def _check(self, now: float) -> BacklogEvent | None:
        waiting = self.waiting
        self.max_waiting = max(self.max_waiting, waiting)
        if self._behind_since is not None:
            self._episode_max = max(self._episode_max, waiting)
            if waiting <= 1:
                behind_s = now - self._behind_since
                self.behind_s_total += behind_s
                self._behind_since = None
                self._piling_since = None
                return self._event("caught_up", behind_s=behind_s, max_waiting=self._episode_max)
            return None
        if waiting <= 1:
            self._piling_since = None
            return None
        if self._piling_since is None:
            self._piling_since = now
            return None
        if now - self._piling_since < self.window_s:
            return None
        arrival, processing = self.arrival_fps(), self.processing_fps()
        if processing is None:
            return None  # said with the first result, when the rate it is behind at is known
        if arrival is not None and arrival <= processing:
            return None  # a burst that is being worked off, not a stream that cannot keep up
        self._behind_since = now
        self._episode_max = waiting
        self.episodes += 1
        return self._event("behind")

    def _event(self, kind: str, behind_s: float = 0.0, max_waiting: int = 0) -> BacklogEvent:
        last = self._latencies[-1][1] if self._latencies else None
        event = BacklogEvent(kind, time.time(), self.arrival_fps(), self.processing_fps(), self.waiting,
                             latency_s=last, latency_trend_s_per_s=self.latency_trend(), behind_s=behind_s,
                             max_waiting_frames=max_waiting)
        self.events.append(event)
        return event

    def _emit(self, event: BacklogEvent | None) -> None:
        if event is None:
            return
        if event.kind == "behind":
            log.warning("stream: falling behind: %s frame(s) waiting, arriving at %s, processed at %s",
                        event.waiting_frames, _fps(event.arrival_fps), _fps(event.processing_fps))
        else:
            log.warning("stream: caught up after %.1f s behind (at most %d frame(s) waited)",
                        event.behind_s, event.max_waiting_frames)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                log.exception("stream: a backlog callback raised; continuing")

    def describe(self) -> dict[str, Any]:
        """Facts for summary.json."""
        with self._lock:
            now = self.clock()
            behind_s = self.behind_s_total + (now - self._behind_since if self._behind_since is not None else 0.0)
            decisions = np.asarray(self.decision_latencies_s) * 1e3
            return {
                "behind_now": self.behind,
                "waiting_frames": self.waiting,
                "max_waiting_frames": self.max_waiting,
                "behind_s": behind_s,
                "episodes": self.episodes,
                "arrival_fps": self.arrival_fps(),
                "processing_fps": self.processing_fps(),
                "latency_trend_s_per_s": self._trend(self._all_latencies),
                "window_s": self.window_s,
                # latency of the frames processed on arrival: how old a decision is when it is made
                "decision_latency_ms": {"p50": float(np.percentile(decisions, 50)) if decisions.size else None,
                                        "p99": float(np.percentile(decisions, 99)) if decisions.size else None,
                                        "n": int(decisions.size)},
                "events": [dataclasses.asdict(e) for e in self.events[-50:]],
            }


def _fps(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} frames/s"
