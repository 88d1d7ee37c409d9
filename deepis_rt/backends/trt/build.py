"""The parts of a TensorRT build that touch files or the GPU: device scope, locks, timing cache.

* :func:`device_scope` makes one CUDA device current (``torch.cuda.device(index)``) while GPU objects
  are created or used: a builder, a runtime, an ``ICudaEngine`` and its execution contexts belong to
  the device that was current when they were made.
* :func:`file_lock` serialises processes that build the same engine or write the same timing cache
  (as Polygraphy does), so two builds never overwrite each other's files and the second one finds
  the first one's engine instead of spending minutes building it again.
* :class:`TimingCache` loads the cache beside the engines, attaches it with ``set_timing_cache``
  (whose result is checked: a cache from another device or TensorRT is *not* used and is replaced,
  never written back unchanged), and after the build merges the new timings into the file under
  the lock.
* :func:`make_logger` / :func:`make_progress_monitor` subclass the real ``trt.ILogger`` /
  ``trt.IProgressMonitor``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deepis_rt.errors import EngineCacheError

__all__ = ["cuda_device_index", "device_scope", "file_lock", "TimingCache", "make_logger",
           "make_progress_monitor"]

log = logging.getLogger(__name__)

#: how long a process waits for another one building the same engine (builds take minutes)
LOCK_TIMEOUT_S = 3600.0


def cuda_device_index(device: Any = None) -> int:
    """The CUDA device index of ``device`` (``None``/``"cuda"``: the current device; ``"cuda:1"``: 1).

    Raises
    ------
    EngineCacheError
        ``device`` names no CUDA device (e.g. ``"cpu"``).
    """
    import torch

    if device is None:
        return int(torch.cuda.current_device())
    if isinstance(device, int):
        return device
    dev = device if isinstance(device, torch.device) else torch.device(str(device))
    if dev.type != "cuda":
        raise EngineCacheError(f"tensorrt | device {device!r} is not a CUDA device; use 'cuda' or 'cuda:N'")
    return int(torch.cuda.current_device()) if dev.index is None else int(dev.index)


@contextlib.contextmanager
def device_scope(index: int) -> Iterator[None]:
    """Make CUDA device ``index`` current for the block (``torch.cuda.device``)."""
    import torch

    with torch.cuda.device(int(index)):
        yield


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, what: str, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """An inter-process lock on ``<path>.lock`` (``filelock``), with a log line when it must wait."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path) + ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("%s: another process holds %s.lock; waiting for it (up to %.0f s)", what, path, timeout_s)
        try:
            lock.acquire(timeout=timeout_s)
        except Timeout:
            raise EngineCacheError(f"{what}: {path}.lock still held after {timeout_s:.0f} s; if no other "
                                   "deepis-rt process is building, delete the .lock file") from None
    try:
        yield
    finally:
        lock.release()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class TimingCache:
    """The builder's timing cache, kept in one file per TensorRT version and GPU model.

    Parameters
    ----------
    path : path-like
        The cache file (created on :meth:`save`).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.cache: Any = None
        self._config: Any = None
        self._loaded = b""
        #: "loaded", "new" or "rejected: <why>": what happened to the file on disk
        self.status = "new"

    def attach(self, config: Any) -> Any:
        """Create the cache from the file and attach it to ``config`` (an ``IBuilderConfig``).

        A file TensorRT cannot read, or one ``set_timing_cache`` refuses (another device or
        TensorRT version), is not used: the build starts from an empty cache, and :meth:`save`
        replaces the file afterwards.
        """
        blob = b""
        self._config = config
        with file_lock(self.path, f"timing cache | {self.path}"):
            if self.path.is_file():
                blob = self.path.read_bytes()
        cache = None
        if blob:
            try:
                cache = config.create_timing_cache(blob)
            except Exception as exc:  # noqa: BLE001 - a damaged cache only costs build time
                self.status = f"rejected: unreadable ({type(exc).__name__}: {exc})"
            if cache is None and self.status == "new":
                self.status = "rejected: TensorRT could not read it"
            if cache is not None:
                if config.set_timing_cache(cache, False):
                    self.status = "loaded"
                    self.cache, self._loaded = cache, blob
                    return cache
                self.status = "rejected: made on another device or TensorRT version"
        if self.status != "new":
            log.warning("timing cache | %s %s; building with a new one, which will replace it", self.path,
                        self.status)
        cache = config.create_timing_cache(b"")
        if cache is None or not config.set_timing_cache(cache, False):
            raise EngineCacheError(f"timing cache | {self.path}: TensorRT refused a new, empty timing cache")
        self.cache = cache
        return cache

    def save(self) -> None:
        """Merge this build's timings into the file (under the lock) and write it atomically.

        The cache attached to the config is the one the build filled in. Timings another process
        wrote meanwhile are combined into it when compatible; an incompatible file is replaced.
        """
        if self.cache is None:
            return
        with file_lock(self.path, f"timing cache | {self.path}"):
            on_disk = self.path.read_bytes() if self.path.is_file() else b""
            if on_disk and on_disk != self._loaded and self.status == "loaded":
                # another build wrote timings meanwhile: keep them (an incompatible file is replaced)
                other = None
                try:
                    other = self._config.create_timing_cache(on_disk)
                except Exception as exc:  # noqa: BLE001
                    log.debug("timing cache | %s: unreadable now (%s); replacing it", self.path, exc)
                if other is not None and not self.cache.combine(other, False):
                    log.info("timing cache | %s: the file changed to an incompatible cache; replacing it",
                             self.path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(self.path, bytes(self.cache.serialize()))


def make_logger(trt: Any) -> Any:
    """A ``trt.ILogger`` that forwards TensorRT's messages to Python logging."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            sev = trt.ILogger.Severity
            level = {
                sev.INTERNAL_ERROR: logging.ERROR,
                sev.ERROR: logging.ERROR,
                sev.WARNING: logging.WARNING,
                sev.INFO: logging.DEBUG,
            }.get(severity, logging.DEBUG)
            log.log(level, "TensorRT: %s", msg)

    return _Logger()


def make_progress_monitor(trt: Any, show: bool) -> Any:
    """A ``trt.IProgressMonitor`` that shows one tqdm bar per builder phase."""
    from tqdm import tqdm

    class _Progress(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._bars: dict[str, Any] = {}
            self._parents: dict[str, str | None] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            depth = 0
            parent = parent_phase
            while parent is not None and parent in self._bars:
                depth += 1
                parent = self._parents.get(parent)
            self._parents[phase_name] = parent_phase
            self._bars[phase_name] = tqdm(total=num_steps, desc=phase_name, position=depth, leave=False,
                                          disable=not show, file=sys.stderr)

        def step_complete(self, phase_name: str, step: int) -> bool:
            bar = self._bars.get(phase_name)
            if bar is not None:
                bar.update(step + 1 - bar.n)
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            bar = self._bars.pop(phase_name, None)
            self._parents.pop(phase_name, None)
            if bar is not None:
                bar.close()

    return _Progress()
