"""Finding the time-lapses of an archive: folders of frames (any depth) and multi-time-point files."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from deepis_rt.errors import InputError

__all__ = ["BatchItem", "find_items"]

log = logging.getLogger(__name__)

_IGNORED = (".", "~", "_")


@dataclass(frozen=True)
class BatchItem:
    """One time-lapse of the archive."""

    name: str  # results sub-folder (posix, relative to OUT)
    kind: str  # "folder" | "file"
    path: Path

    @property
    def key(self) -> str:
        """File-name-safe form of :attr:`name` (for the bookkeeping files)."""
        return self.name.replace("/", "__")

    def signature(self) -> str:
        """Fingerprint of the input files (names and sizes): changes when frames are added."""
        from deepis_rt.stream.watch import FRAME_SUFFIXES

        h = hashlib.sha1()
        if self.kind == "file":
            st = self.path.stat()
            h.update(f"{self.path.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        else:
            for entry in sorted(os.scandir(self.path), key=lambda e: e.name):
                if entry.is_file() and Path(entry.name).suffix.lower() in FRAME_SUFFIXES | {".json"}:
                    h.update(f"{entry.name}\0{entry.stat().st_size}\n".encode())
        return h.hexdigest()


def _is_frame_file(name: str) -> bool:
    from deepis_rt.stream.watch import FRAME_SUFFIXES

    return not name.startswith(_IGNORED) and Path(name).suffix.lower() in FRAME_SUFFIXES


def _file_item_name(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def find_items(archive: str | os.PathLike, out: str | os.PathLike | None = None,
               follow_symlinks: bool = False) -> list[BatchItem]:
    """The time-lapses of ``archive`` (see the module docstring), sorted by name.

    A file in ``archive`` that is a symbolic link to a file outside it is skipped (with a warning)
    unless ``follow_symlinks``; symbolic links to folders are never entered.

    Raises
    ------
    InputError
        ``archive`` is not a folder, or holds no time-lapse.
    """
    from deepis_rt.stream.watch import points_outside

    root = Path(archive)
    if not root.is_dir():
        raise InputError(f"batch | {root}: no such folder")
    skip = Path(out).resolve() if out is not None else None
    items: list[BatchItem] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(_IGNORED)
                             and (skip is None or (here / d).resolve() != skip))
        frames = [f for f in filenames if _is_frame_file(f)]
        if here == root and not follow_symlinks:
            outside = [f for f in frames if points_outside(here / f, root)]
            for f in outside:
                log.warning("batch | %s: a symbolic link to a file outside %s; not followed (--follow-symlinks "
                            "reads it)", f, root)
            frames = [f for f in frames if f not in outside]
        if here == root:
            for f in sorted(frames):
                items.append(BatchItem(_file_item_name(here / f), "file", here / f))
            continue
        if frames:
            items.append(BatchItem(here.relative_to(root).as_posix(), "folder", here))
            dirnames[:] = []  # sub-folders (labels/, distance/, ...) belong to this time-lapse
    names: dict[str, int] = {}
    for it in items:
        names[it.name] = names.get(it.name, 0) + 1
    # a file item named like a folder item (or another file's stem) keeps its full name
    items = [BatchItem(it.path.name.replace(".", "_"), it.kind, it.path) if it.kind == "file" and names[it.name] > 1
             else it for it in items]
    if not items:
        raise InputError(
            f"batch | {root}: no time-lapse found (expected sub-folders of frame files or multi-time-point "
            "files: .tif, .tiff, .npy, .npz, .h5, .tcf, .mat)"
        )
    return sorted(items, key=lambda it: it.name)
