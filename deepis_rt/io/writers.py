"""Writers for tomograms and label volumes, in the layouts the readers read.

* ``tiff`` — OME-TIFF, axes ZYX, ``PhysicalSizeX/Y/Z`` in um.
* ``npy`` — ``<name>.npy`` plus ``<name>.json`` sidecar (``voxel_size_um``, ``time_s``, ``medium_ri``).
* label time-lapse — one OME-TIFF, axes TZYX, ``PhysicalSizeX/Y/Z`` in um and ``TimeIncrement`` in s
  (:func:`write_labels_timelapse`).
* ``tcf`` — Tomocube TCF layout (HDF5): ``/Data/3D/000000`` float32 RI (Z, Y, X) with
  attributes ``ResolutionX/Y/Z`` (um), ``SizeX/Y/Z``, ``DataCount`` and ``TimeInterval`` on
  ``/Data/3D``, ``Time`` on each dataset, the medium RI as attribute ``RI`` of ``/Info/Device``
  and root attribute ``FormatVersion = "1.2"`` (float RI, the classic layout of
  :mod:`deepis_rt.io.tcf`).

Files are written to a temporary name and renamed, so a folder watcher never sees a
half-written frame.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from deepis_rt.errors import InputError
from deepis_rt.io.tomogram import check_declared, check_values, normalize_voxel_size, where_of

__all__ = ["write_tomogram", "write_labels", "write_labels_timelapse", "FORMATS", "suffix_for"]

log = logging.getLogger(__name__)

#: Output formats and their file suffix.
FORMATS: dict[str, str] = {"tiff": ".tif", "npy": ".npy", "tcf": ".tcf"}


def suffix_for(fmt: str) -> str:
    """The file suffix of output format ``fmt`` (``tiff``, ``npy`` or ``tcf``)."""
    try:
        return FORMATS[fmt]
    except KeyError:
        raise InputError(f"io: unknown output format {fmt!r}; choose one of {sorted(FORMATS)}") from None


def _fmt_of(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        suffix_for(fmt)
        return fmt
    suf = path.suffix.lower()
    for name, s in FORMATS.items():
        if suf == s or (name == "tiff" and suf == ".tiff") or (name == "tcf" and suf == ".h5"):
            return name
    raise InputError(f"{where_of(path)}: cannot tell the format from {suf!r}; pass fmt= one of {sorted(FORMATS)}")


def _tmp(path: Path) -> Path:
    # keep the real suffix last so libraries that look at it behave
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def _ome_metadata(voxel_size_um: tuple[float, float, float] | None) -> dict:
    meta: dict = {"axes": "ZYX"}
    if voxel_size_um is not None:
        z, y, x = voxel_size_um
        meta.update(PhysicalSizeZ=z, PhysicalSizeY=y, PhysicalSizeX=x,
                    PhysicalSizeZUnit="µm", PhysicalSizeYUnit="µm", PhysicalSizeXUnit="µm")
    return meta


def write_tomogram(
    path: str | Path,
    ri: np.ndarray,
    voxel_size_um: Sequence[float] | None,
    fmt: str | None = None,
    time_s: float | None = None,
    medium_ri: float | None = None,
) -> Path:
    """Write one RI volume (Z, Y, X) with its voxel size.

    Parameters
    ----------
    path : path-like
        Destination; the suffix picks the format unless ``fmt`` is given.
    ri : numpy.ndarray
        3-D refractive-index volume; written as float32.
    voxel_size_um : (z, y, x)
        Voxel size in um, stored in the file's metadata.
    fmt : {"tiff", "npy", "tcf"}, optional
        Output format.
    time_s, medium_ri : float, optional
        Stored where the format has room for them (npy sidecar, TCF attributes).

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    fmt = _fmt_of(path, fmt)
    where = where_of(path)
    ri = np.asarray(ri)
    check_declared(ri.shape, ri.dtype, where, allow_time=False)
    ri = check_values(ri, where)
    vs = normalize_voxel_size(voxel_size_um, where)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    if fmt == "tiff":
        import tifffile

        tifffile.imwrite(tmp, ri, ome=True, metadata=_ome_metadata(vs))
    elif fmt == "npy":
        np.save(tmp, ri, allow_pickle=False)
        side = {"voxel_size_um": None if vs is None else list(vs)}
        if time_s is not None:
            side["time_s"] = float(time_s)
        if medium_ri is not None:
            side["medium_ri"] = float(medium_ri)
        path.with_suffix(".json").write_text(json.dumps(side))
    else:  # tcf
        import h5py

        with h5py.File(tmp, "w") as f:
            # float RI is the classic layout of format versions before 1.3 (uint16 RI x 10 000 from 1.3 on)
            f.attrs["FormatVersion"] = "1.2"
            f.attrs["Writer"] = "deepis-rt"
            if medium_ri is not None:
                f.create_group("Info/Device").attrs["RI"] = float(medium_ri)
            grp = f.create_group("Data").create_group("3D")
            for ax, i in zip("ZYX", range(3), strict=False):
                grp.attrs[f"Size{ax}"] = int(ri.shape[i])
                if vs is not None:
                    grp.attrs[f"Resolution{ax}"] = float(vs[i])
            grp.attrs["DataCount"] = 1
            ds = grp.create_dataset("000000", data=ri)
            if time_s is not None:
                ds.attrs["Time"] = float(time_s)
    os.replace(tmp, path)
    log.debug("wrote %s", path)
    return path


def write_labels(path: str | Path, labels: np.ndarray, voxel_size_um: Sequence[float] | None) -> Path:
    """Write a label volume (uint8; 0 background, 1 CAR-T, 2 target, 3 IS) as OME-TIFF.

    Parameters
    ----------
    path : path-like
        Destination ``.tif``.
    labels : numpy.ndarray
        3-D integer volume with values 0..255.
    voxel_size_um : (z, y, x)
        Voxel size in um, stored as ``PhysicalSize*``.
    """
    import tifffile

    path = Path(path)
    where = where_of(path)
    labels = np.asarray(labels)
    check_declared(labels.shape, labels.dtype, where, allow_time=False)
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise InputError(f"{where}: label values outside 0..255")
    vs = normalize_voxel_size(voxel_size_um, where)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tifffile.imwrite(tmp, labels.astype(np.uint8), ome=True, metadata=_ome_metadata(vs), compression="zlib")
    os.replace(tmp, path)
    return path


def write_labels_timelapse(
    path: str | Path,
    frames: Iterable[np.ndarray | None],
    n_frames: int,
    shape_zyx: Sequence[int],
    voxel_size_um: Sequence[float],
    frame_interval_s: float,
) -> Path:
    """Write a label time-lapse as one uint8 OME-TIFF, axes TZYX, a frame at a time.

    Parameters
    ----------
    path : path-like
        Destination ``.ome.tif``.
    frames : iterable of numpy.ndarray or None
        ``n_frames`` label volumes of shape ``shape_zyx`` in time order; None for a time point without
        labels (written as zeros). Read one at a time, so a long time-lapse is never held in memory.
    n_frames : int
        Number of time points.
    shape_zyx : (Z, Y, X)
        Shape of every frame.
    voxel_size_um : (z, y, x)
        Voxel size in um (``PhysicalSize*``).
    frame_interval_s : float
        Seconds between time points (``TimeIncrement``).
    """
    import tifffile

    path = Path(path)
    shape_zyx = tuple(int(s) for s in shape_zyx)
    vs = normalize_voxel_size(voxel_size_um, where_of(path))
    empty = np.zeros(shape_zyx, np.uint8)

    def planes():
        for i, labels in enumerate(frames):
            if i >= n_frames:
                break
            volume = empty if labels is None else np.asarray(labels)
            if volume.shape != shape_zyx:
                raise InputError(f"{where_of(path)}: time point {i} has shape {volume.shape}, expected {shape_zyx}")
            yield from volume.astype(np.uint8, copy=False)

    meta = _ome_metadata(vs)
    meta.update(axes="TZYX", TimeIncrement=float(frame_interval_s), TimeIncrementUnit="s")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tifffile.imwrite(tmp, planes(), shape=(int(n_frames), *shape_zyx), dtype=np.uint8, ome=True,
                     metadata=meta, compression="zlib")
    os.replace(tmp, path)
    return path
