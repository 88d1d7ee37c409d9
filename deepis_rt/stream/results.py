"""The results folder of a stream: incremental, atomic and restart-safe.

Layout (DESIGN.md section 3): ``frames.csv``, ``cells.csv``, ``synapses.csv``,
``summary.json``, ``masks/``, ``plots/``, ``errors.log``; the OME-Zarr time-lapse
``timelapse.ome.zarr`` and the TZYX OME-TIFF ``labels_tzyx.ome.tif`` (docs/results.md).

How the guarantees are kept:

* **No torn rows.** Every frame's rows for one table are written with a single
  ``os.write`` on a file opened with ``O_APPEND``; a reader sees all of them or
  none. A run killed inside that call can at worst leave a partial last line,
  which the next run cuts off before appending.
* **Restart without duplicates or losses.** A frame is *committed* by its row in
  ``frames.csv``, written last (after its mask, cell and synapse rows). On open,
  rows of ``cells.csv`` / ``synapses.csv`` whose frame has no committed row are
  dropped (the file is rewritten atomically), and committed sources are skipped
  by the watcher, so a frame killed mid-way is processed again exactly once.
* **Frames to retry.** A frame whose backend stayed unavailable (status ``retry``) is committed
  like any other, but counts as not done: the next run processes its source again under the same
  frame number, and its new row *replaces* the ``retry`` row (frames.csv rewritten atomically),
  so each frame has one row. Until that replacement, rows of ``cells.csv`` / ``synapses.csv``
  for it are dropped on open like those of any uncommitted frame.
* **The time-lapse store** (:mod:`deepis_rt.stream.timelapse_store`) is written before the
  frame's rows; on open, its time points of frames not committed ``ok`` are removed.
* **Frames held for later.** With the ``newest`` policy, frames passed over for newer ones are
  committed with status ``pending`` before any later frame, so that their numbers are kept; they
  are processed like ``retry`` frames (their rows replaced), by this run or, after a stop or a
  kill, by the next.
* **Whole-file outputs** (``summary.json``, masks, plots) are written to a temporary
  name and renamed into place.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from deepis_rt.core.files import atomic_write
from deepis_rt.core.jsonable import json_safe

__all__ = ["FRAME_COLUMNS", "STAGES", "LABELS_TIFF", "CsvTable", "ResultsFolder", "atomic_write_json",
           "ome_voxel_size_um"]

log = logging.getLogger(__name__)

#: Pipeline stages timed per frame (``<stage>_ms`` columns of frames.csv).
STAGES = ("read", "preprocess", "infer", "postprocess", "analyze", "track", "write")

#: Statuses of frames.csv rows whose frame is still to be processed (its row is replaced then).
REDO_STATUSES = ("retry", "pending")

#: Columns of frames.csv.
FRAME_COLUMNS = [
    "frame",
    "source",
    "time_s",
    "status",
    "error",
    "quality",
    "latency_ms",
    *[f"{s}_ms" for s in STAGES],
    "deferred",
    "done_at",
]


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(json_safe(obj), indent=2) + "\n").encode())


def _fmt(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        return f"{value:.6g}"
    if hasattr(value, "item"):
        return _fmt(value.item())
    return value


class CsvTable:
    """An append-only CSV file whose rows for one frame land in one ``write`` call."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.columns = list(columns)

    def _encode(self, rows: Iterable[Mapping[str, Any]], header: bool = False) -> bytes:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, extrasaction="raise", lineterminator="\n")
        if header:
            writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(v) for k, v in row.items()})
        return buf.getvalue().encode()

    def read(self) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def repair(self, keep_frames: set[int] | None = None) -> list[dict[str, str]]:
        """Cut a torn last line; with ``keep_frames``, drop rows of uncommitted frames.

        Returns the rows kept. A header that does not match ``columns`` is an error
        (the folder belongs to another version or another program).
        """
        if not self.path.exists() or self.path.stat().st_size == 0:
            atomic_write(self.path, self._encode([], header=True))
            return []
        raw = self.path.read_bytes()
        if not raw.endswith(b"\n"):
            raw = raw[: raw.rfind(b"\n") + 1]
            log.warning("results | %s: cut a partial last line left by an interrupted run", self.path.name)
        text = raw.decode()
        lines = text.splitlines()
        header = next(csv.reader([lines[0]])) if lines else []
        if header != self.columns:
            from deepis_rt.errors import InputError

            raise InputError(
                f"results | {self.path}: columns {header} differ from this version's {self.columns}; "
                "use another --out folder"
            )
        rows = list(csv.DictReader(io.StringIO(text)))
        kept = rows
        if keep_frames is not None:
            kept = [r for r in rows if int(r["frame"]) in keep_frames]
            if len(kept) != len(rows):
                log.warning(
                    "results | %s: dropped %d row(s) of frames that were not committed",
                    self.path.name,
                    len(rows) - len(kept),
                )
        if len(kept) != len(rows) or len(raw) != self.path.stat().st_size:
            atomic_write(self.path, self._encode(kept, header=True))
        return kept

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        data = self._encode(rows)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, data)
            if written != len(data):  # pragma: no cover - only on a full disk
                raise OSError(f"short write to {self.path}: {written} of {len(data)} bytes")
        finally:
            os.close(fd)


class ResultsFolder:
    """Owns a stream's ``--out`` folder: opening (and repairing) it, writing frames, summaries."""

    def __init__(self, out: str | os.PathLike, cell_columns: Sequence[str], synapse_columns: Sequence[str]) -> None:
        self.root = Path(out)
        self.masks = self.root / "masks"
        self.plots = self.root / "plots"
        self.frames = CsvTable(self.root / "frames.csv", FRAME_COLUMNS)
        self.cells = CsvTable(self.root / "cells.csv", cell_columns)
        self.synapses = CsvTable(self.root / "synapses.csv", synapse_columns)
        self.errors_log = self.root / "errors.log"
        self._lock = threading.Lock()
        self.committed: list[dict[str, str]] = []
        #: the OME-Zarr time-lapse (set before :meth:`open` by the stream's writer; None: not written)
        self.timelapse: Any = None

    def open(self) -> list[dict[str, str]]:
        """Create or repair the folder; returns the committed frame rows of earlier runs."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.masks.mkdir(exist_ok=True)
        self.plots.mkdir(exist_ok=True)
        self.committed = self.frames.repair()
        done = {int(r["frame"]) for r in self.committed if r["status"] not in REDO_STATUSES}
        self.cell_rows = self.cells.repair(done)
        self.synapse_rows = self.synapses.repair(done)
        if self.timelapse is not None:
            self.timelapse.open({int(r["frame"]) for r in self.committed if r["status"] == "ok"})
        # masks of uncommitted frames are left to be overwritten when the frame is redone
        return self.committed

    @property
    def next_frame(self) -> int:
        return max((int(r["frame"]) for r in self.committed), default=-1) + 1

    @property
    def done_sources(self) -> set[str]:
        """Sources committed for good (``ok`` or ``failed``); ``retry`` and ``pending`` ones are to be processed."""
        return {r["source"] for r in self.committed if r["status"] not in REDO_STATUSES}

    @property
    def held_frames(self) -> set[int]:
        """Frame numbers that have a row (of any status)."""
        with self._lock:
            return {int(r["frame"]) for r in self.committed}

    def retry_frame(self, source: str) -> int | None:
        """The frame number of ``source`` when it was recorded ``retry`` or ``pending``, else None."""
        for r in self.committed:
            if r["source"] == source and r["status"] in REDO_STATUSES:
                return int(r["frame"])
        return None

    def commit_frame(
        self,
        frame_row: Mapping[str, Any],
        cell_rows: Sequence[Mapping[str, Any]] = (),
        synapse_rows: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """Write a frame's cell and synapse rows, then its frames.csv row (the commit)."""
        with self._lock:
            self.cells.append(cell_rows)
            self.synapses.append(synapse_rows)
            row = {k: str(v) for k, v in frame_row.items()}
            frame = int(frame_row["frame"])
            redo = [i for i, r in enumerate(self.committed)
                    if int(r["frame"]) == frame and r["status"] in REDO_STATUSES]
            if not redo:
                self.frames.append([frame_row])
                self.committed.append(row)
                return
            # a frame recorded ``retry`` or ``pending`` earlier: its row is replaced in place (one row per frame)
            rows = [dict(r) for r in self.committed]
            rows[redo[0]] = {k: frame_row.get(k) for k in self.frames.columns}
            atomic_write(self.frames.path, self.frames._encode(rows, header=True))
            self.committed[redo[0]] = row

    def rewrite_tables(self, cell_rows: Sequence[Mapping[str, Any]], synapse_rows: Sequence[Mapping[str, Any]]) -> None:
        """Replace cells.csv and synapses.csv whole (atomic renames; the caller holds the lock)."""
        atomic_write(self.cells.path, self.cells._encode(cell_rows, header=True))
        atomic_write(self.synapses.path, self.synapses._encode(synapse_rows, header=True))

    def log_error(self, source: str, reason: str) -> None:
        line = f"{source}: {reason}".replace("\n", " ") + "\n"
        with self._lock:
            fd = os.open(self.errors_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        atomic_write_json(self.root / "summary.json", summary)

    def write_labels_tiff(self) -> Path | None:
        """``labels_tzyx.ome.tif``: every frame's labels as one TZYX OME-TIFF (time index = frame).

        From the time-lapse store, else from ``masks/``; None when neither holds a frame.
        """
        from deepis_rt.io.writers import write_labels_timelapse

        path = self.root / LABELS_TIFF
        store = self.timelapse
        if store is not None and store.exists and any(t is not None for t in store.time_s):
            times = store.time_s
            arr = store.labels()
            frames = (arr[t] if v is not None else None for t, v in enumerate(times))
            return write_labels_timelapse(path, frames, len(times), arr.shape[1:], store.voxel_size_um,
                                          store.frame_interval_s)
        return self._labels_tiff_from_masks(path)

    def _labels_tiff_from_masks(self, path: Path) -> Path | None:
        import tifffile

        from deepis_rt.io.writers import write_labels_timelapse
        from deepis_rt.stream.timelapse_store import frame_interval

        ok = {int(r["frame"]): r for r in self.committed if r["status"] == "ok"}
        files = {f: self.masks / f"frame_{f:06d}.ome.tif" for f in sorted(ok)}
        files = {f: p for f, p in files.items() if p.is_file()}
        if not files:
            return None
        first = next(iter(files.values()))
        with tifffile.TiffFile(first) as tif:
            shape = tif.series[0].shape
            pixels = tif.ome_metadata and ome_voxel_size_um(tif.ome_metadata)
        voxel = pixels or (1.0, 1.0, 1.0)
        n = max(files) + 1
        times = [None] * n
        for f in files:
            times[f] = _float_or_none(ok[f].get("time_s"))

        def frames():
            for t in range(n):
                volume = tifffile.imread(files[t]) if t in files else None
                yield volume if volume is None or volume.shape == shape else None

        return write_labels_timelapse(path, frames(), n, shape, voxel, frame_interval(times))


#: The TZYX OME-TIFF of every frame's labels, written at the end of a run.
LABELS_TIFF = "labels_tzyx.ome.tif"


def _float_or_none(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def ome_voxel_size_um(ome_xml: str) -> tuple[float, float, float] | None:
    """(z, y, x) ``PhysicalSize*`` of an OME-XML's first image, None when absent."""
    import re

    sizes = []
    for ax in "ZYX":
        m = re.search(rf'PhysicalSize{ax}="([0-9.eE+-]+)"', ome_xml)
        if m is None:
            return None
        sizes.append(float(m.group(1)))
    return tuple(sizes)  # type: ignore[return-value]
