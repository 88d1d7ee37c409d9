"""Riding out a backend outage: capped exponential backoff, bounded by ``retry_for_s``.

When the inference backend fails *transiently* (:func:`deepis_rt.backends.failures.is_transient`:
server restarting or unreachable, timed out, overloaded, out of memory), the frame is not failed:
the inference stage waits and tries again, with delays ``initial_s, initial_s * factor, ...``
capped at ``max_delay_s``, while the frames behind it wait in their queues (order is kept, and
back-pressure stops the reader). The outage is reported once when it starts and once when it ends
(:class:`BackendEvent`), never per frame.

``retry_for_s`` bounds the wait, counted from the start of the outage: a frame still failing then
is recorded with status ``retry`` (the next run on the same results folder processes it again), and
while the outage lasts each further frame gets a single attempt, so the stream keeps draining and
notices the backend's return at once.

Clock and sleep are injectable, so the schedule is tested without waiting.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from deepis_rt.backends.failures import is_transient
from deepis_rt.errors import ConfigError

__all__ = ["RetryPolicy", "BackendEvent", "BackendHealth", "DEFAULT_RETRY_FOR_S"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: long enough to ride out the restart of an inference server (model loading included)
DEFAULT_RETRY_FOR_S = 120.0


@dataclass(frozen=True)
class RetryPolicy:
    """When to try a transiently failing frame again.

    Attributes
    ----------
    retry_for_s : float
        Longest wait for a backend that stays unavailable (0: no retry; the frame is recorded
        ``retry`` at once).
    initial_s : float
        First delay.
    factor : float
        Each further delay is the previous one times this.
    max_delay_s : float
        Cap of a single delay.
    """

    retry_for_s: float = DEFAULT_RETRY_FOR_S
    initial_s: float = 0.5
    factor: float = 2.0
    max_delay_s: float = 5.0  # a recovered server is noticed within 5 s

    def __post_init__(self) -> None:
        if self.retry_for_s < 0 or self.initial_s <= 0 or self.factor < 1 or self.max_delay_s < self.initial_s:
            raise ConfigError(
                "stream: retry_for_s must be >= 0, initial delay > 0, factor >= 1 and max_delay_s >= initial delay"
            )

    def delays(self) -> Iterator[float]:
        """The delays between attempts, without end (the caller stops at the deadline)."""
        delay = self.initial_s
        while True:
            yield delay
            delay = min(delay * self.factor, self.max_delay_s)


@dataclass(frozen=True)
class BackendEvent:
    """A change of the backend's availability, as reported to ``on_backend`` callbacks.

    Attributes
    ----------
    kind : {"unavailable", "available"}
    time : float
        Wall-clock time (``time.time()``).
    error : str
        For ``unavailable``: the failure that started the outage.
    waiting_frames : int
        Frames held back (in the failing batch and queued behind it).
    retry_for_s : float
        How long frames are retried.
    outage_s : float
        For ``available``: how long the backend was unavailable.
    """

    kind: str
    time: float
    error: str = ""
    waiting_frames: int = 0
    retry_for_s: float = 0.0
    outage_s: float = 0.0


class BackendHealth:
    """Runs backend calls with retries of transient failures; knows whether an outage is on.

    Parameters
    ----------
    policy : RetryPolicy
    on_event : callable, optional
        ``on_event(BackendEvent)`` when an outage starts and when it ends.
    waiting : callable, optional
        Returns how many frames wait behind the current call (for the report).
    stop : threading.Event, optional
        When set (the stream is stopping), a failing call is not retried any more.
    clock, sleep : callable, optional
        ``time.monotonic`` and an interruptible sleep by default (tests inject fakes).
    """

    def __init__(
        self,
        policy: RetryPolicy,
        on_event: Callable[[BackendEvent], None] | None = None,
        waiting: Callable[[], int] | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.policy = policy
        self.on_event = on_event
        self.waiting = waiting or (lambda: 0)
        self.stop = stop or threading.Event()
        self.clock = clock
        self.sleep = sleep or (lambda s: self.stop.wait(s))
        self.outage_since: float | None = None
        self.outages = 0
        self.attempts_failed = 0

    @property
    def unavailable(self) -> bool:
        """Whether an outage is going on."""
        return self.outage_since is not None

    def _emit(self, event: BackendEvent) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception:
            log.exception("stream: a backend-event callback raised; continuing")

    def _failed(self, exc: BaseException, n_frames: int) -> None:
        self.attempts_failed += 1
        if self.outage_since is None:
            self.outage_since = self.clock()
            self.outages += 1
            waiting = n_frames + self.waiting()
            log.warning("stream: backend unavailable (%s); %d frame(s) wait, retried for up to %g s",
                        exc, waiting, self.policy.retry_for_s)
            self._emit(BackendEvent("unavailable", time.time(), error=str(exc), waiting_frames=waiting,
                                    retry_for_s=self.policy.retry_for_s))

    def _succeeded(self) -> None:
        if self.outage_since is not None:
            outage = self.clock() - self.outage_since
            self.outage_since = None
            log.warning("stream: backend available again after %.1f s", outage)
            self._emit(BackendEvent("available", time.time(), outage_s=outage, retry_for_s=self.policy.retry_for_s))

    def call(self, fn: Callable[[], T], n_frames: int = 1) -> T:
        """``fn()``, tried again after transient failures until the outage is ``retry_for_s`` old.

        Permanent failures are raised at once; a transient failure is raised when the deadline
        has passed (or the stream is stopping): the caller records the frames ``retry``.
        """
        delays = self.policy.delays()
        while True:
            try:
                out = fn()
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._failed(exc, n_frames)
                assert self.outage_since is not None
                left = self.outage_since + self.policy.retry_for_s - self.clock()
                if left <= 0 or self.stop.is_set():
                    raise
                delay = min(next(delays), left)
                log.debug("stream: retrying in %.2f s (%s)", delay, exc)
                self.sleep(delay)
                continue
            self._succeeded()
            return out

    def describe(self) -> dict[str, Any]:
        """Facts for summary.json."""
        return {"retry_for_s": self.policy.retry_for_s, "outages": self.outages,
                "failed_attempts": self.attempts_failed, "unavailable_now": self.unavailable}
