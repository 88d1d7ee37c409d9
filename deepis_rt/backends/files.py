"""Files every backend may write: the cache folder, atomic writes, inter-process locks, checksums.

Engines, compiled models and exported graphs are made once and reused by later processes, so
their writes must never leave a half-written file (:func:`atomic_write`), two processes must not
build the same file at once (:func:`file_lock`), and a file is identified by its content
(:func:`file_sha256`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from deepis_rt.core.files import atomic_write, file_sha256
from deepis_rt.errors import EngineCacheError

__all__ = ["default_cache_dir", "atomic_write", "file_lock", "file_sha256", "LOCK_TIMEOUT_S"]

log = logging.getLogger(__name__)

#: how long a process waits for another one building the same file (engine builds take minutes)
LOCK_TIMEOUT_S = 3600.0


def default_cache_dir() -> Path:
    """``$DEEPIS_RT_CACHE``, else ``$XDG_CACHE_HOME/deepis-rt``, else ``~/.cache/deepis-rt``."""
    if os.environ.get("DEEPIS_RT_CACHE"):
        return Path(os.environ["DEEPIS_RT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "deepis-rt"



@contextlib.contextmanager
def file_lock(path: str | os.PathLike, what: str, timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """An inter-process lock on ``<path>.lock`` (``filelock``), with a log line when it must wait."""
    from filelock import FileLock, Timeout  # only where a file is built: not on every load()

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

