"""A stream results folder read for viewing: its tables at once, its volumes lazily (dask).

Opening a folder reads ``frames.csv``, ``cells.csv``, ``synapses.csv``, ``summary.json`` and the
header of one label file; the volumes are read one frame at a time when a viewer shows that frame.
They come from the run's OME-Zarr time-lapse store (``timelapse.ome.zarr``: labels, and the RI
unless the run stored labels only; layout in docs/results.md) when the run wrote one, else from
``masks/frame_NNNNNN.ome.tif`` and the RI tomograms themselves (the source files named in
``frames.csv``, under ``summary.json``'s ``source_path``). A folder still being written by
``deepis-rt stream`` reads the same way: only committed frames (rows of ``frames.csv``) count.

No napari import here: the layer data built from this are plain arrays and dicts.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt.errors import InputError

__all__ = ["RunResults", "is_results_folder", "parse_source"]

log = logging.getLogger(__name__)

#: Files whose presence makes a folder a deepis-rt results folder.
MARKERS = ("frames.csv", "summary.json")
#: The OME-Zarr time-lapse store of a results folder, and the layout version this reader knows.
STORE_NAME = "timelapse.ome.zarr"
STORE_LAYOUT = 1


def _dask() -> tuple[Any, Any]:
    """dask and dask.array, or an error naming the extra that brings them."""
    from deepis_rt._optional import import_optional

    return import_optional("dask", "reading volumes lazily"), import_optional("dask.array", "reading volumes lazily")


def is_results_folder(path: str | Path) -> bool:
    """True for a folder that ``deepis-rt stream`` / ``demo`` / ``batch`` wrote (cheap: two ``stat`` calls)."""
    path = Path(path)
    return path.is_dir() and any((path / m).is_file() for m in MARKERS)


def _read_table(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV table; a partial last line (a row being written) is left out."""
    if not path.is_file():
        return []
    raw = path.read_bytes()
    raw = raw[: raw.rfind(b"\n") + 1]
    return list(csv.DictReader(io.StringIO(raw.decode("utf-8", errors="replace"))))


def _float(value: str | None) -> float:
    try:
        return float(value) if value not in (None, "") else math.nan
    except ValueError:
        return math.nan


def parse_source(source: str) -> tuple[str, int | None]:
    """``frames.csv``'s ``source``: ``name`` or ``name:tNNNN`` (a time point of a multi-frame file)."""
    name, sep, index = source.rpartition(":t")
    if sep and index.isdigit():
        return name, int(index)
    return source, None


@dataclass
class RunResults:
    """What a results folder holds, its tables read, its volumes to be read frame by frame.

    Attributes
    ----------
    root : Path
    frames, cells, synapses : list of dict
        Rows of the three tables (strings, as written), committed frames only.
    summary : dict
        ``summary.json`` (empty while a run has not written it).
    n_frames : int
        Frames on the time axis: the largest committed frame number + 1.
    frame_interval_s : float
        Seconds between frames (median over the committed frames; 1.0 when unknown).
    """

    root: Path
    frames: list[dict[str, str]]
    cells: list[dict[str, str]]
    synapses: list[dict[str, str]]
    summary: dict[str, Any]
    n_frames: int
    frame_interval_s: float
    source_root: Path | None = None
    _label_grid: tuple[tuple[int, int, int], tuple[float, float, float]] | None = field(default=None, repr=False)

    @classmethod
    def open(cls, root: str | Path, source: str | Path | None = None) -> RunResults:
        """Read the tables of ``root``; ``source`` overrides the camera folder recorded in summary.json."""
        root = Path(root)
        if not is_results_folder(root):
            raise InputError(f"napari | {root}: not a deepis-rt results folder (no frames.csv or summary.json); "
                             "open the --out folder of 'deepis-rt stream' or 'deepis-rt demo'")
        summary: dict[str, Any] = {}
        if (root / "summary.json").is_file():
            try:
                summary = json.loads((root / "summary.json").read_text())
            except (OSError, json.JSONDecodeError) as exc:  # being replaced right now, or damaged
                log.warning("napari | %s: summary.json unreadable (%s); the camera folder is unknown", root, exc)
        frames = [r for r in _read_table(root / "frames.csv") if r.get("frame", "").isdigit()]
        done = {r["frame"] for r in frames}
        cells = [r for r in _read_table(root / "cells.csv") if r.get("frame") in done]
        synapses = [r for r in _read_table(root / "synapses.csv") if r.get("frame") in done]
        n = max((int(r["frame"]) for r in frames), default=-1) + 1
        src = source if source is not None else summary.get("source_path")
        return cls(root=root, frames=frames, cells=cells, synapses=synapses, summary=summary, n_frames=n,
                   frame_interval_s=_interval(frames), source_root=None if src is None else Path(src))

    # ------------------------------------------------------------------ time
    def frame_time_s(self, frame: int) -> float:
        """World time of a frame on the viewer's time axis: ``frame x frame_interval_s``."""
        return frame * self.frame_interval_s

    # ------------------------------------------------------------------ OME-Zarr store
    def store(self) -> dict[str, Any] | None:
        """The root attributes of the run's OME-Zarr store, when it has one this reader knows."""
        path = self.root / STORE_NAME / ".zattrs"
        try:
            attrs = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("napari | %s: unreadable (%s); reading masks/ and the tomograms instead", path, exc)
            return None
        if (attrs.get("deepis_rt") or {}).get("layout") != STORE_LAYOUT or not attrs.get("multiscales"):
            log.warning("napari | %s: not a deepis-rt time-lapse store of layout %d; reading masks/ instead",
                        path.parent, STORE_LAYOUT)
            return None
        return attrs

    def _store_array(self, group: str, fill: float) -> tuple[Any, tuple[float, float, float]] | None:
        """(T, Z, Y, X) dask array of a store image (its committed frames), and its voxel size."""
        _, da = _dask()

        folder = self.root / STORE_NAME / group
        try:
            attrs = json.loads((folder / ".zattrs").read_text())
            ms = attrs["multiscales"][0]
            scale = next(t["scale"] for t in ms["datasets"][0]["coordinateTransformations"] if t["type"] == "scale")
            arr = da.from_zarr(str(folder / ms["datasets"][0]["path"]))
        except Exception as exc:  # a store being created, or damaged
            log.warning("napari | %s: not readable (%s: %s)", folder, type(exc).__name__, exc)
            return None
        n = self.n_frames
        if arr.shape[0] < n:  # committed frames the store does not hold (they did not fit it): empty
            arr = da.concatenate([arr, da.full((n - arr.shape[0], *arr.shape[1:]), fill, dtype=arr.dtype,
                                               chunks=(1, *arr.chunksize[1:]))])
        return arr[:n], tuple(float(v) for v in scale[-3:])  # type: ignore[return-value]

    # ------------------------------------------------------------------ labels
    def mask_path(self, frame: int) -> Path:
        return self.root / "masks" / f"frame_{frame:06d}.ome.tif"

    def label_grid(self) -> tuple[tuple[int, int, int], tuple[float, float, float]] | None:
        """(shape, voxel size um) of the label volumes, from the header of the first one; None without any."""
        if self._label_grid is None and self.store() is not None:
            found = self._store_array((self.store() or {})["deepis_rt"].get("labels", "labels/segmentation"), 0)
            if found is not None and found[0].shape[0]:
                self._label_grid = (tuple(found[0].shape[1:]), found[1])  # type: ignore[assignment]
        if self._label_grid is None:
            for r in self.frames:
                path = self.mask_path(int(r["frame"]))
                if r.get("status") == "ok" and path.is_file():
                    self._label_grid = _tiff_grid(path)
                    break
        return self._label_grid

    def labels(self) -> Any:
        """(T, Z, Y, X) uint8 dask array; a frame without a label file (failed, not yet written) is empty."""
        dask, da = _dask()

        store = self.store()
        if store is not None and self.n_frames:
            found = self._store_array(store["deepis_rt"].get("labels", "labels/segmentation"), 0)
            if found is not None:
                return found[0]
        grid = self.label_grid()
        if grid is None or self.n_frames == 0:
            return None
        shape, _ = grid
        ok = {int(r["frame"]) for r in self.frames if r.get("status") == "ok"}
        read = dask.delayed(_read_mask, pure=True)
        planes = [da.from_delayed(read(self.mask_path(f) if f in ok else None, shape), shape, np.uint8)
                  for f in range(self.n_frames)]
        return da.stack(planes)

    # ------------------------------------------------------------------ RI
    def ri(self) -> tuple[Any, tuple[float, float, float] | None, str | None]:
        """(T, Z, Y, X) float32 dask array of the RI tomograms, their voxel size, and why not (None, None, why).

        From the store when it holds the RI (a frame it lacks reads NaN); else from the tomograms, one
        read now (the first ``ok`` frame's: its shape and voxel size) and the rest when shown, a frame
        whose file is gone or unreadable showing the medium (its error logged).
        """
        dask, da = _dask()

        store = self.store()
        if store is not None and store["deepis_rt"].get("root_image") == "ri" and self.n_frames:
            found = self._store_array("", math.nan)
            if found is not None:
                return found[0], found[1], None
        if self.source_root is None:
            return None, None, "summary.json names no camera folder (source_path)"
        ok = [r for r in self.frames if r.get("status") == "ok"]
        if not ok:
            return None, None, "no frame was segmented yet"
        first = _source_file(self.source_root, ok[0]["source"])
        if not first[0].is_file():
            return None, None, (f"the camera folder {self.source_root} no longer holds {first[0].name} "
                                "(deleted after the run?); only the labels can be shown")
        try:
            tomo = _read_ri(*first, None)
        except Exception as exc:
            return None, None, f"{first[0]}: {exc}"
        shape = tomo.shape
        by_frame = {int(r["frame"]): _source_file(self.source_root, r["source"]) for r in ok}
        read = dask.delayed(_read_ri_or_medium, pure=True)
        planes = [da.from_delayed(read(*by_frame[f], shape), shape, np.float32) if f in by_frame
                  else da.full(shape, MEDIUM_RI, dtype=np.float32) for f in range(self.n_frames)]
        return da.stack(planes), tomo.voxel_size_um, None

    # ------------------------------------------------------------------ tables
    def cell_table(self) -> dict[str, np.ndarray]:
        """cells.csv as numeric columns (``kind`` as 1 CAR-T / 2 target); rows without a track left out."""
        rows = [r for r in self.cells if r.get("track_id", "") != ""]
        cols = ("frame", "track_id", "volume_um3", "surface_um2", "mean_ri", "dry_mass_pg", "z_um", "y_um", "x_um")
        out = {c: np.array([_float(r.get(c)) for r in rows], dtype=float) for c in cols}
        out["kind"] = np.array([1 if r.get("kind") == "tcell" else 2 for r in rows], dtype=np.int8)
        return out

    def synapse_table(self) -> dict[str, np.ndarray]:
        """synapses.csv as numeric columns (every numeric column the file has)."""
        if not self.synapses:
            return {}
        out: dict[str, np.ndarray] = {}
        for col in self.synapses[0]:
            values = np.array([_float(r.get(col)) for r in self.synapses], dtype=float)
            if col in ("frame", "synapse_id", "tcell_track", "target_track") or np.isfinite(values).any():
                out[col] = values
        return out


def _interval(frames: list[dict[str, str]]) -> float:
    pts = sorted((int(r["frame"]), _float(r.get("time_s"))) for r in frames)
    pts = [(f, t) for f, t in pts if math.isfinite(t)]
    steps = [(t1 - t0) / (f1 - f0) for (f0, t0), (f1, t1) in zip(pts, pts[1:], strict=False) if f1 > f0 and t1 > t0]
    return float(np.median(steps)) if steps else 1.0


def _tiff_grid(path: Path) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Shape and voxel size of a label OME-TIFF, from its header (no voxel is read)."""
    import tifffile

    from deepis_rt.io.tiff import _tiff_voxel_size

    with tifffile.TiffFile(path) as tif:
        shape = tuple(int(s) for s in tif.series[0].shape)
        found = _tiff_voxel_size(tif)  # ((z, y, x) in um, the field it came from) or None
    if len(shape) != 3:
        raise InputError(f"napari | {path}: a label volume must be 3-D (Z, Y, X), found shape {shape}")
    return shape, found[0] if found else (1.0, 1.0, 1.0)


def _read_mask(path: Path | None, shape: tuple[int, int, int]) -> np.ndarray:
    if path is None or not path.is_file():
        return np.zeros(shape, np.uint8)
    from deepis_rt.io import read_labels

    labels = read_labels(path)
    if labels.shape != tuple(shape):
        log.warning("napari | %s: labels of shape %s, the run's others %s; shown empty", path, labels.shape, shape)
        return np.zeros(shape, np.uint8)
    return labels


def _source_file(root: Path, source: str) -> tuple[Path, int | None]:
    name, index = parse_source(source)
    return root / name, index


def _read_ri(path: Path, index: int | None, voxel_size_um: Any) -> Any:
    from deepis_rt.io import time_points

    points = time_points(path, voxel_size_um)
    return points[index or 0].read()


#: RI shown for a frame that cannot be read (the medium of the demo data and of the paper)
MEDIUM_RI = 1.337


def _read_ri_or_medium(path: Path, index: int | None, shape: tuple[int, ...]) -> np.ndarray:
    try:
        ri = _read_ri(path, index, None).ri
    except Exception as exc:
        log.warning("napari | %s: %s; shown as medium", path, exc)
        return np.full(shape, MEDIUM_RI, np.float32)
    if ri.shape != tuple(shape):
        log.warning("napari | %s: tomogram of shape %s, the run's others %s; shown as medium", path, ri.shape, shape)
        return np.full(shape, MEDIUM_RI, np.float32)
    return np.asarray(ri, dtype=np.float32)
