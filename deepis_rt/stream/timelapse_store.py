"""The results folder's OME-Zarr time-lapse: RI and labels, written frame by frame.

Layout and guarantees: docs/results.md ("The OME-Zarr time-lapse store"). In short: NGFF 0.4 in zarr
format 2, axes ``t, z, y, x`` in seconds and micrometres, time index = frame number, one time point per
chunk; the root image is the RI (or the labels, without RI), the NGFF label image is
``labels/segmentation``; ``deepis_rt.time_s`` in the root attributes names the written time points.

Commit order, as for the tables (:mod:`deepis_rt.stream.results`): chunks, then the ``time_s`` entry,
then the caller commits the frame's ``frames.csv`` row. :meth:`TimelapseStore.open` removes the time
points of frames that were not committed ``ok``.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt.core.labels import LABEL_COLORS, LABEL_NAMES

__all__ = ["TimelapseStore", "STORE_NAME", "ZARR_MODES", "frame_interval"]

log = logging.getLogger(__name__)

#: The store's folder name under a results folder.
STORE_NAME = "timelapse.ome.zarr"
#: What ``zarr`` settings write: RI and labels, labels only, or no store.
ZARR_MODES = ("ri+labels", "labels", "off")
_LABELS_PATH = "labels/segmentation"
_LAYOUT = 1


def _chunks(shape: Sequence[int]) -> tuple[int, int, int, int]:
    z, y, x = shape
    return (1, min(z, 64), min(y, 256), min(x, 256))


def _axes() -> list[dict[str, str]]:
    return [{"name": "t", "type": "time", "unit": "second"},
            *({"name": ax, "type": "space", "unit": "micrometer"} for ax in "zyx")]


def _multiscales(name: str, dt_s: float, voxel_size_um: Sequence[float]) -> list[dict[str, Any]]:
    return [{
        "version": "0.4",
        "name": name,
        "axes": _axes(),
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [float(dt_s), *(float(v) for v in voxel_size_um)]}]}],
    }]


def frame_interval(time_s: Sequence[float | None]) -> float:
    """Median seconds per time index between written frames (1 until two are written)."""
    written = [(t, v) for t, v in enumerate(time_s) if v is not None]
    steps = [(v2 - v1) / (t2 - t1) for (t1, v1), (t2, v2) in zip(written, written[1:], strict=False) if v2 > v1]
    return float(np.median(steps)) if steps else 1.0


class TimelapseStore:
    """``OUT/timelapse.ome.zarr``: open (repairing an interrupted run), write frames, read back.

    Parameters
    ----------
    path : path-like
        The store's folder.
    with_ri : bool
        Store the RI as the root image (else the labels are the root image too). An existing store
        keeps the layout it was made with.
    """

    def __init__(self, path: str | Path, with_ri: bool = True) -> None:
        self.path = Path(path)
        self.with_ri = with_ri
        self._root: Any = None
        self._time_s: list[float | None] = []
        self._shape: tuple[int, int, int] | None = None
        self._voxel_size_um: tuple[float, float, float] | None = None
        self._dt_s = 1.0

    # -- opening ----------------------------------------------------------------------------------
    def open(self, keep_frames: set[int]) -> None:
        """Continue an existing store: time points of frames not in ``keep_frames`` are removed."""
        import zarr

        from deepis_rt.errors import InputError

        if not self.path.exists():
            return
        try:
            root = zarr.open_group(self.path, mode="r+", zarr_format=2)
            meta = dict(root.attrs["deepis_rt"])
            arr = root["0"]
        except Exception as exc:
            raise InputError(f"results | {self.path}: not a deepis-rt time-lapse store ({exc}); "
                             "remove it or use another --out") from None
        for partial in self.path.rglob("*.partial"):  # left by a write that was killed
            partial.unlink(missing_ok=True)
        with_ri = meta.get("root_image") == "ri"
        if with_ri != self.with_ri:
            log.info("results | %s: continues with the layout it was made with (root image %s)",
                     self.path.name, meta.get("root_image"))
        self.with_ri = with_ri
        self._root = root
        self._shape = tuple(int(s) for s in arr.shape[1:])  # type: ignore[assignment]
        self._voxel_size_um = tuple(float(v) for v in root.attrs["multiscales"][0]["datasets"][0]
                                    ["coordinateTransformations"][0]["scale"][1:])  # type: ignore[assignment]
        self._time_s = list(meta.get("time_s") or [])
        dropped = [t for t, v in enumerate(self._time_s) if v is not None and t not in keep_frames]
        n_chunks = len(self._time_s)
        for t in range(int(arr.shape[0])):
            if t not in keep_frames or t >= n_chunks or self._time_s[t] is None:
                self._remove_time_point(t)
        for t in dropped:
            self._time_s[t] = None
        if dropped:
            log.warning("results | %s: removed %d time point(s) of frames that were not committed",
                        self.path.name, len(dropped))
        self._write_attrs()

    def _remove_time_point(self, t: int) -> None:
        for array in ("0", f"{_LABELS_PATH}/0"):
            shutil.rmtree(self.path / array / str(t), ignore_errors=True)

    # -- writing ----------------------------------------------------------------------------------
    def write_frame(self, frame: int, time_s: float | None, labels: np.ndarray,
                    voxel_size_um: Sequence[float], ri: np.ndarray | None = None) -> bool:
        """Write one frame's labels (and RI) at time index ``frame``; False when it does not fit."""
        shape = tuple(int(s) for s in labels.shape)
        vox = tuple(float(v) for v in voxel_size_um)
        if self._root is None:
            self._create(shape, vox)  # type: ignore[arg-type]
        if shape != self._shape or not np.allclose(vox, self._voxel_size_um, rtol=1e-6):
            log.warning("results | %s: frame %d (shape %s, voxel %s um) differs from the store's first frame "
                        "(shape %s, voxel %s um); left out of the store (masks/ has it)", self.path.name, frame,
                        shape, vox, self._shape, self._voxel_size_um)
            return False
        if self.with_ri and ri is None:
            raise ValueError("TimelapseStore.write_frame: the store holds the RI; pass ri=")
        n = max(len(self._time_s), frame + 1)
        self._time_s.extend([None] * (n - len(self._time_s)))
        arrays = [(self._root[f"{_LABELS_PATH}/0"], np.asarray(labels, np.uint8))]
        arrays.append((self._root["0"], np.asarray(ri if self.with_ri else labels, self._root["0"].dtype)))
        import zarr

        # one chunk at a time: zarr's default encodes up to 10 in parallel, each with its own buffers,
        # which adds about a frame to the stream's peak memory for large frames
        with zarr.config.set({"async.concurrency": 1}):
            for arr, data in arrays:
                if arr.shape[0] < n:
                    arr.resize((n, *arr.shape[1:]))
                arr[frame] = data
        # a frame without a time (none in a stream) is still marked written: its index stands for it
        self._time_s[frame] = float(time_s) if time_s is not None and math.isfinite(time_s) else float(frame)
        self._write_attrs()
        return True

    def _create(self, shape: tuple[int, int, int], voxel_size_um: tuple[float, float, float]) -> None:
        import numcodecs
        import zarr

        self._shape, self._voxel_size_um = shape, voxel_size_um
        root = zarr.open_group(self.path, mode="w", zarr_format=2)
        common = dict(shape=(0, *shape), chunks=_chunks(shape), compressors=numcodecs.Zlib(level=1),
                      chunk_key_encoding={"name": "v2", "separator": "/"})
        if self.with_ri:
            root.create_array("0", dtype="float32", fill_value=float("nan"), **common)
        else:
            root.create_array("0", dtype="uint8", fill_value=0, **common)
        root.create_group("labels")
        root.create_group(_LABELS_PATH).create_array("0", dtype="uint8", fill_value=0, **common)
        self._root = root

    def _write_attrs(self) -> None:
        """Root, ``labels`` and label-image attributes (each ``.zattrs`` replaced atomically by zarr)."""
        assert self._root is not None and self._voxel_size_um is not None
        self._dt_s = frame_interval(self._time_s)
        vox = self._voxel_size_um
        name = "RI" if self.with_ri else "labels"
        window = {"start": 1.33, "end": 1.40, "min": 1.0, "max": 2.0} if self.with_ri else \
            {"start": 0, "end": 3, "min": 0, "max": 255}
        self._root["labels"].attrs.put({"labels": ["segmentation"]})
        self._root[_LABELS_PATH].attrs.put({
            "multiscales": _multiscales("segmentation", self._dt_s, vox),
            "image-label": {
                "version": "0.4",
                "colors": [{"label-value": v, "rgba": list(c)} for v, c in LABEL_COLORS.items()],
                # NGFF: the same label values in colors and properties
                "properties": [{"label-value": v, "name": n} for v, n in {0: "background", **LABEL_NAMES}.items()],
                "source": {"image": "../../"},
            },
        })
        # the root last: its time_s names the time points that are complete
        self._root.attrs.put({
            "multiscales": _multiscales(name, self._dt_s, vox),
            "omero": {"name": name, "version": "0.4", "channels": [
                {"label": name, "color": "FFFFFF", "active": True, "coefficient": 1.0, "family": "linear",
                 "inverted": False, "window": window}], "rdefs": {"model": "greyscale"}},
            "deepis_rt": {"layout": _LAYOUT, "root_image": "ri" if self.with_ri else "labels",
                          "labels": _LABELS_PATH, "label_names": {str(k): v for k, v in LABEL_NAMES.items()},
                          "time_s": self._time_s},
        })

    # -- reading back -----------------------------------------------------------------------------
    @property
    def exists(self) -> bool:
        return self._root is not None

    @property
    def time_s(self) -> list[float | None]:
        """Time of each time index; None where nothing is written."""
        return list(self._time_s)

    @property
    def voxel_size_um(self) -> tuple[float, float, float] | None:
        return self._voxel_size_um

    @property
    def frame_interval_s(self) -> float:
        return self._dt_s

    def labels(self) -> Any:
        """The label array (zarr, (T, Z, Y, X) uint8)."""
        return self._root[f"{_LABELS_PATH}/0"]
