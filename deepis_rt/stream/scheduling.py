"""Which frame a stream processes next: every frame in order, or the newest first.

Frames known to be complete (files that stopped changing, ``submit()``ted volumes) wait here,
not yet read, until the stream takes them. Two policies:

``every`` (the default)
    First come, first processed: frames are taken in frame order, as fast as the pipeline's
    bounded queues accept them.
``newest``
    The newest complete frame is always taken next, so a decision is never older than about one
    frame's processing time. Frames passed over are *deferred*, never dropped: they are taken,
    oldest first, whenever no fresh frame waits (the microscope between acquisitions, or after
    it stops). A frame is taken only when the one taken before it has left inference (``limit``
    frames in flight ahead of the network, one while frames keep arriving), so the frame taken
    is the newest at the moment the network is ready for it.

Each frame ends taken exactly once. Frame numbers are given when frames arrive, so they follow
the acquisition whatever the processing order; the stream re-links tracks in frame order at the
end (as after frames that were retried).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["POLICIES", "FrameScheduler"]

#: the processing orders a stream knows (``Stream(policy=...)``, ``deepis-rt stream --live``)
POLICIES = ("every", "newest")


class FrameScheduler:
    """Complete frames waiting to be taken, and the order they are taken in.

    Parameters
    ----------
    policy : {"every", "newest"}
        See the module docstring.
    limit : callable, optional
        ``newest`` only: how many frames may be in flight ahead of the network (taken, not yet
        through inference) before the next is taken; called at every take (the batch size the
        backlog calls for). Default 1.
    """

    def __init__(self, policy: str = "every", limit: Callable[[], int] | None = None) -> None:
        if policy not in POLICIES:
            from deepis_rt.errors import ConfigError

            raise ConfigError(f"stream: policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.policy = policy
        self.limit = limit or (lambda: 1)
        self._cond = threading.Condition()
        self._fresh: deque[Any] = deque()  # arrived since the last take, in arrival order
        self._deferred: deque[Any] = deque()  # passed over for newer frames (newest), oldest first
        self._closed = False
        self._ahead = 0  # taken and not yet through inference (newest)
        self.taken = 0

    # -- producer side ------------------------------------------------------------------------------
    def put(self, task: Any) -> None:
        """A frame is complete (file settled, volume submitted)."""
        with self._cond:
            self._fresh.append(task)
            self._cond.notify_all()

    def close(self) -> None:
        """No more frames will arrive; :meth:`take` returns None once the waiting ones are taken."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wait_below(self, n: int, stop: threading.Event) -> None:
        """Block while ``n`` or more frames wait (back-pressure for frames held in memory)."""
        with self._cond:
            while len(self._fresh) + len(self._deferred) >= n and not stop.is_set() and not self._closed:
                self._cond.wait(timeout=0.1)

    def through_inference(self, n: int = 1) -> None:
        """``n`` taken frames have left the network: room for the next (``newest``)."""
        with self._cond:
            self._ahead = max(0, self._ahead - n)
            self._cond.notify_all()

    # -- consumer side ------------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._cond:
            return len(self._fresh) + len(self._deferred)

    def waiting(self) -> list[Any]:
        """The frames waiting now (fresh, then deferred)."""
        with self._cond:
            return [*self._fresh, *self._deferred]

    def take(self, stop: threading.Event | None = None, keep: Callable[[Any], bool] | None = None) -> Any:
        """The next frame to process; blocks until one may be taken. None when closed and empty.

        With ``stop`` set, only frames for which ``keep(task)`` is true are still given (frames
        held in memory, which a later run could not find again); the others are left.
        """
        with self._cond:
            while True:
                stopping = stop is not None and stop.is_set()
                if stopping:
                    return self._take_kept(keep)
                if self._fresh or self._deferred:
                    if self.policy == "every":
                        self.taken += 1
                        self._cond.notify_all()
                        return self._fresh.popleft()
                    if self._ahead < max(1, int(self.limit())):
                        return self._take_newest()
                elif self._closed:
                    return None
                self._cond.wait(timeout=0.1)

    def _take_newest(self) -> Any:
        if self._fresh:
            # the newest acquisition (a frame given again after 'retry' arrives late but is not new)
            task = max(self._fresh, key=lambda t: t.frame)
            older = sorted((t for t in self._fresh if t is not task), key=lambda t: t.frame)
            self._fresh.clear()
            if older:
                for t in older:
                    t.deferred = True
                merged = sorted([*self._deferred, *older], key=lambda t: t.frame)
                self._deferred = deque(merged)
        else:
            task = self._deferred.popleft()  # spare capacity: the oldest deferred frame
        self._ahead += 1
        self.taken += 1
        self._cond.notify_all()
        return task

    def _take_kept(self, keep: Callable[[Any], bool] | None) -> Any:
        for q in (self._fresh, self._deferred):
            for t in list(q):
                if keep is not None and keep(t):
                    q.remove(t)
                    self.taken += 1
                    return t
        return None
