"""Watching a camera folder for complete tomogram files, in frame order.

Microscope software writes a frame over time, often onto a Windows share where
file events are unreliable, so a file counts as *complete* once its size and
modification time have not changed for ``settle_s`` seconds. watchdog events
only wake the scanner early; every decision comes from listing the folder, so
the polling fallback (when watchdog cannot start) behaves the same.

Frames are ordered by the last number in the file name, else by modification
time. A complete file is held back while a lower-numbered file is still being
written, so frames come out in acquisition order.

A symbolic link whose target lies outside the folder (``/etc/passwd``, another user's data) is
not followed unless ``follow_symlinks`` is set (``--follow-symlinks``): it is skipped with one
warning. Links to files inside the folder are read like the files themselves.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FRAME_SUFFIXES", "FrameFile", "FolderWatcher", "frame_number", "order_key", "points_outside"]

log = logging.getLogger(__name__)

#: File endings that hold tomograms (DESIGN.md section 3).
FRAME_SUFFIXES = frozenset({".tif", ".tiff", ".npy", ".npz", ".h5", ".tcf", ".mat"})
_IGNORED_PREFIXES = (".", "~", "_")
_NUMBER = re.compile(r"(\d+)")


def frame_number(path: str | Path) -> int | None:
    """The last run of digits in the file's stem (``frame_0042.tif`` -> 42), or None."""
    numbers = _NUMBER.findall(Path(path).name.split(".")[0])
    return int(numbers[-1]) if numbers else None


def order_key(path: Path, mtime: float) -> tuple:
    """Sort key: numbered files by number (before unnumbered ones), others by modification time."""
    number = frame_number(path)
    if number is not None:
        return (0, number, path.name)
    return (1, mtime, path.name)


def points_outside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """True for a symbolic link whose final target is not inside ``folder`` (or cannot be resolved)."""
    if not os.path.islink(path):
        return False
    try:
        target = Path(os.path.realpath(path, strict=True))
        return not target.is_relative_to(Path(os.path.realpath(folder)))
    except (OSError, RuntimeError):  # dangling or a loop
        return True


@dataclass(frozen=True)
class FrameFile:
    """A complete frame file found in the source folder."""

    path: Path
    number: int | None
    mtime: float
    size_bytes: int
    #: wall-clock time (time.time()) at which the file was seen complete: latency starts here
    complete_at: float


class _Wakeup:
    """Optional watchdog observer that sets an event on any change in the folder."""

    def __init__(self, folder: Path, event: threading.Event) -> None:
        self.observer = None
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer

            class _Handler(FileSystemEventHandler):
                def on_any_event(self, _event) -> None:  # noqa: ANN001
                    event.set()

            observer = Observer()
            observer.schedule(_Handler(), str(folder), recursive=False)
            observer.daemon = True
            observer.start()
            self.observer = observer
        except Exception as exc:  # inotify limits, network shares, no watchdog: poll instead
            log.info("watch: file events unavailable (%s); polling the folder instead", exc)

    def stop(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=2)


class FolderWatcher:
    """Finds complete frame files in ``folder`` as they appear.

    Parameters
    ----------
    folder : path-like
        The camera folder.
    settle_s : float
        A file is complete when its size and mtime stay the same this long.
    poll_s : float
        Longest wait between two scans (events wake the scanner earlier).
    use_events : bool
        Use watchdog file events to wake up early (falls back to polling).
    skip : set of str
        File names already processed (restart): never reported.
    follow_symlinks : bool
        Also read symbolic links whose target lies outside the folder (default: skipped).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        settle_s: float = 1.0,
        poll_s: float = 0.25,
        use_events: bool = True,
        skip: set[str] | None = None,
        suffixes: frozenset[str] = FRAME_SUFFIXES,
        follow_symlinks: bool = False,
    ) -> None:
        self.folder = Path(folder)
        self.follow_symlinks = bool(follow_symlinks)
        self._refused_links: set[str] = set()  # said once each
        self.settle_s = float(settle_s)
        self.poll_s = float(poll_s)
        self.suffixes = suffixes
        self._done: set[str] = set(skip or ())
        # name -> (size, mtime_ns, monotonic time the signature was first seen)
        self._pending: dict[str, tuple[int, int, float]] = {}
        self._unlistable_since: float | None = None  # the folder could not be listed since then
        self._event = threading.Event()
        self._wakeup = _Wakeup(self.folder, self._event) if use_events else None

    def close(self) -> None:
        if self._wakeup is not None:
            self._wakeup.stop()

    def __enter__(self) -> FolderWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _candidates(self) -> list[os.DirEntry]:
        try:
            entries = list(os.scandir(self.folder))
        except OSError as exc:  # e.g. a network share that dropped out: said once, retried every scan
            if self._unlistable_since is None:
                self._unlistable_since = time.monotonic()
                log.warning("watch | %s: cannot list folder (%s); retrying until it is back", self.folder, exc)
            return []
        if self._unlistable_since is not None:
            log.warning("watch | %s: folder readable again after %.0f s", self.folder,
                        time.monotonic() - self._unlistable_since)
            self._unlistable_since = None
        out = []
        for entry in entries:
            name = entry.name
            if name in self._done or name.startswith(_IGNORED_PREFIXES):
                continue
            if Path(name).suffix.lower() not in self.suffixes:
                continue
            try:
                if not entry.is_file():
                    continue
            except OSError:
                continue
            if not self.follow_symlinks and entry.is_symlink() and points_outside(entry.path, self.folder):
                if name not in self._refused_links:
                    self._refused_links.add(name)
                    log.warning("watch | %s: a symbolic link to a file outside the folder; not followed "
                                "(--follow-symlinks, follow_symlinks=True, reads it)", name)
                continue
            out.append(entry)
        return out

    def scan(self) -> list[FrameFile]:
        """One scan: complete files not reported before, in frame order."""
        now = time.monotonic()
        seen: dict[str, tuple[int, int]] = {}
        complete: list[FrameFile] = []
        incomplete_keys: list[tuple] = []
        for entry in self._candidates():
            try:
                st = entry.stat()
            except OSError:
                continue  # vanished or locked: look again next time
            sig = (st.st_size, st.st_mtime_ns)
            seen[entry.name] = sig
            prev = self._pending.get(entry.name)
            if prev is None or prev[:2] != sig:
                self._pending[entry.name] = (*sig, now)
                incomplete_keys.append(order_key(Path(entry.name), st.st_mtime))
                continue
            if now - prev[2] >= self.settle_s:
                complete.append(
                    FrameFile(Path(entry.path), frame_number(entry.name), st.st_mtime, st.st_size, time.time())
                )
            else:
                incomplete_keys.append(order_key(Path(entry.name), st.st_mtime))
        for name in list(self._pending):
            if name not in seen:
                del self._pending[name]  # deleted or renamed away
        complete.sort(key=lambda f: order_key(f.path, f.mtime))
        if incomplete_keys:
            # hold back complete files that come after a numbered file still being written
            first_incomplete = min(incomplete_keys)
            complete = [f for f in complete if order_key(f.path, f.mtime) < first_incomplete]
        for f in complete:
            self._done.add(f.path.name)
            self._pending.pop(f.path.name, None)
        return complete

    def wait(self, timeout: float | None = None) -> None:
        """Sleep until a file event or ``poll_s`` (or ``timeout``) has passed."""
        delay = self.poll_s if timeout is None else min(self.poll_s, timeout)
        self._event.wait(max(0.0, delay))
        self._event.clear()

    @property
    def has_pending(self) -> bool:
        """True while some file is seen but not yet complete."""
        return bool(self._pending)
