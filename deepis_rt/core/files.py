"""Files every layer writes or checks: checksums and all-or-nothing writes."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["atomic_write", "file_sha256"]


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in blocks of ``chunk`` bytes."""
    import hashlib  # loads OpenSSL: only when a file is hashed, not on every import of the package

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a hidden temporary file and a rename: readers see all or nothing."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
