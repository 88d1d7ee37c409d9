"""Readers for refractive-index tomograms and label volumes.

Supported formats (chosen by the file suffix):

* ``.tif`` / ``.tiff`` — OME-TIFF (``PhysicalSizeX/Y/Z``, converted to um) or ImageJ
  hyperstacks (``spacing`` for Z, the X/Y resolution tags for Y/X). Axes ``ZYX`` or
  ``TZYX`` (one tomogram per time point, read from its own pages); unlabelled planes (``C``,
  ``Q``, ``I``) are Z; 2-D images along T (``TYX``) or with colour samples are refused.
* ``.npy`` / ``.npz`` — voxel size from a ``<name>.json`` sidecar
  (``{"voxel_size_um": [z, y, x], "time_s": ..., "medium_ri": ...}``) or the caller.
  In ``.npz`` the array named ``ri`` (else ``tomogram``, ``input``, else the only one) is used.
  A 4-D ``.npy`` is memory-mapped; a ``.npz`` member is read whole.
* ``.tcf`` / ``.h5`` — Tomocube TCF (HDF5), both layouts (a dataset or a group of tiles per
  time point): :mod:`deepis_rt.io.tcf`.
* ``.mat`` — the original DeepIS data: variable ``input``. MATLAB 7.3 files are HDF5
  (read with h5py, one time point at a time); older ones with :func:`scipy.io.loadmat`,
  which reads the variable whole. MATLAB's (Y, X, Z[, T]) order becomes ([T,] Z, Y, X).

Every reader validates the declared shape and type before reading voxels
(:func:`~deepis_rt.io.tomogram.check_declared`), rejects NaN / Inf after reading, and turns
the values into RI with :mod:`deepis_rt.io.ri` (RI x 10 000 integers decoded, explicit
``ri_scale`` / ``ri_offset``, values that cannot be RI refused). Time series are read one
time point at a time. Readers are pure functions of the file.
"""

from __future__ import annotations

import functools
import json
import logging
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt.errors import FileFormatError, InputError
from deepis_rt.io.plausibility import check_medium_ri, check_time, check_voxel_size
from deepis_rt.io.ri import RIDecoder, RIScale
from deepis_rt.io.tcf import tcf_items
from deepis_rt.io.tiff import tiff_items
from deepis_rt.io.tomogram import (
    Tomogram,
    check_declared,
    check_values,
    library_reason,
    normalize_voxel_size,
    where_of,
)

__all__ = ["read_tomogram", "iter_tomograms", "read_labels", "read_sidecar", "SUFFIXES"]

log = logging.getLogger(__name__)

#: File suffixes (lower case) the readers understand.
SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".npy", ".npz", ".tcf", ".h5", ".hdf5", ".mat")


# one time point of a file: (volume or a function that reads it, time_s, frame_index); time series are
# read one time point at a time (hours-long time-lapses do not fit in memory)
_Item = tuple[Any, float | None, int | None]
# a value a file states, with the field it was found in (for refusals): checked by time_points()
_Stated = tuple[Any, str]
_Read = tuple[list[_Item], "_Stated | None", "_Stated | None"]  # items, voxel size, medium RI


def _volume(data: np.ndarray | Callable[[], np.ndarray]) -> np.ndarray:
    return data() if callable(data) else data


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def read_sidecar(path: str | Path) -> dict[str, Any]:
    """The ``<name>.json`` sidecar of a ``.npy`` / ``.npz`` file, or ``{}`` when absent."""
    path = Path(path)
    side = path.with_suffix(".json")
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_bytes())
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise FileFormatError(f"{where_of(side)}: unreadable JSON sidecar ({library_reason(exc)}); "
                              "fix or delete it") from None
    if not isinstance(data, dict):
        raise FileFormatError(f"{where_of(side)}: sidecar must hold a JSON object")
    return data


def _tiff_items(path: Path, where: str) -> _Read:
    items, vs = tiff_items(path, where)  # TIFF carries no medium RI
    return items, vs, None


# --------------------------------------------------------------------------- NumPy
def _npz_member(zf: zipfile.ZipFile, where: str) -> str:
    names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    for key in ("ri", "tomogram", "input", "arr_0"):
        if key in names:
            return key
    if len(names) == 1:
        return names[0]
    raise InputError(f"{where}: .npz holds {names}; name the tomogram array 'ri'")


#: longest .npy header read (NumPy writes under 1 kB; version 1.0 cannot exceed 64 kB)
_NPY_MAX_HEADER_BYTES = 65535


def _npy_header(fh: Any) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
    # NumPy would read a damaged header length of gigabytes into memory before finding the end of file
    length_field = fh.read(2 if version == (1, 0) else 4)
    length = int.from_bytes(length_field, "little") if len(length_field) in (2, 4) else -1
    if not 0 < length <= _NPY_MAX_HEADER_BYTES:
        raise ValueError(f"header length {length} is not that of a NumPy header")
    fh.seek(-len(length_field), 1)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    return shape, dtype


def _check_data_size(shape: tuple[int, ...], dtype: np.dtype, available: int, where: str) -> None:
    """Refuse a NumPy header that declares more data than follows it: NumPy would allocate the declared
    array before finding out (a damaged header costs gigabytes), and a cut-short file must not be read."""
    declared = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if declared > available:
        raise FileFormatError(f"{where}: the header declares shape {tuple(shape)} of {np.dtype(dtype)} "
                              f"({declared:,} bytes), the file holds {max(0, available):,}; the file is incomplete or "
                              "its header is damaged: save or copy it again")


def _numpy_items(path: Path, where: str) -> _Read:
    side = read_sidecar(path)
    with open(path, "rb") as fh:
        head = fh.read(6)
    if _suffix(path) == ".npy" and head != b"\x93NUMPY":
        raise FileFormatError(f"{where}: does not start with the NumPy signature: not a .npy file (renamed, or "
                              "still being written); save it with numpy.save")
    if _suffix(path) == ".npz" and head[:4] not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise FileFormatError(f"{where}: not a zip archive: not a .npz file (renamed, or still being written); "
                              "save it with numpy.savez")
    try:
        if _suffix(path) == ".npy":
            with open(path, "rb") as fh:
                shape, dtype = _npy_header(fh)
                offset = fh.tell()
            check_declared(shape, dtype, where)
            _check_data_size(shape, dtype, path.stat().st_size - offset, where)
            # a time series is memory-mapped: each time point is read when it is converted
            data = np.load(path, allow_pickle=False, mmap_mode="r" if len(shape) == 4 else None)
        else:
            with zipfile.ZipFile(path) as zf:
                key = _npz_member(zf, where)
                with zf.open(key + ".npy") as fh:
                    shape, dtype = _npy_header(fh)
                    offset = fh.tell()
                member_size = zf.getinfo(key + ".npy").file_size
            check_declared(shape, dtype, where)
            _check_data_size(shape, dtype, member_size - offset, where)
            with np.load(path, allow_pickle=False) as npz:
                data = npz[key]
    except InputError:
        raise
    except Exception as exc:
        raise FileFormatError(f"{where}: not a readable NumPy file ({library_reason(exc)})") from None
    field = f"sidecar {path.with_suffix('.json').name}:"
    vs = None if side.get("voxel_size_um") is None else (side["voxel_size_um"], f"{field} voxel_size_um")
    medium = None if side.get("medium_ri") is None else (side["medium_ri"], f"{field} medium_ri")
    time_s = None
    if side.get("time_s") is not None:
        time_s = check_time(side["time_s"], where, f"{field} time_s",
                            fix="write the acquisition time in seconds, or delete the key (then --frame-interval "
                                "or the file times are used)")
    if data.ndim == 3:
        return [(data, time_s, None)], vs, medium
    # np.array copies one time point out of the memory map when it is needed
    return [(functools.partial(np.array, data[t]), None, t) for t in range(data.shape[0])], vs, medium


# --------------------------------------------------------------------------- HDF5 (MATLAB 7.3)
def _h5py(where: str) -> Any:
    import h5py

    try:  # registers compression filters, when installed
        import hdf5plugin  # noqa: F401
    except ImportError:
        pass
    return h5py


def _read_h5_dataset(ds: Any, where: str, index: int | None = None) -> np.ndarray:
    from deepis_rt.io.tcf import check_filters

    check_filters(ds, where)
    try:
        return ds[()] if index is None else ds[index]
    except OSError as exc:
        raise FileFormatError(f"{where}: cannot read the HDF5 data ({library_reason(exc)}); the file is truncated or corrupt") from None


def _mat_items(path: Path, where: str) -> _Read:
    with open(path, "rb") as fh:
        head = fh.read(128)
    if not head.startswith(b"MATLAB") and head[:8] != b"\x89HDF\r\n\x1a\n":
        raise FileFormatError(f"{where}: no MATLAB header: not a MATLAB 5/7/7.3 file (renamed, or still being "
                              "written); save it with save(..., '-v7.3')")
    if b"MATLAB 7.3" in head[:116] or head[:8] == b"\x89HDF\r\n\x1a\n":
        h5py = _h5py(where)
        try:
            with h5py.File(path, "r") as f:
                if "input" not in f:
                    raise InputError(f"{where}: no variable 'input' (variables: {sorted(f.keys())[:10]})")
                ds = f["input"]
                if not isinstance(ds, h5py.Dataset):
                    raise InputError(f"{where}: variable 'input' is not a numeric array")
                # h5py sees MATLAB's (Y, X, Z[, T]) column-major array reversed: ([T,] Z, X, Y)
                shape = tuple(ds.shape)
                check_declared(shape[:-2] + shape[-1:] + shape[-2:-1], ds.dtype, where)
                data = np.swapaxes(_read_h5_dataset(ds, where), -1, -2) if len(shape) == 3 else None
        except (InputError, FileFormatError):
            raise
        except Exception as exc:
            raise FileFormatError(f"{where}: unreadable MATLAB 7.3 file ({library_reason(exc)})") from None
        if data is not None:
            return [(data, None, None)], None, None
        # HDF5: each time point is read when it is needed
        return [(functools.partial(_read_mat73_time_point, path, t, where), None, t) for t in range(shape[0])], None, None
    import scipy.io

    try:
        info = {name: (shape, cls) for name, shape, cls in scipy.io.whosmat(str(path))}
    except Exception as exc:
        raise FileFormatError(f"{where}: not a readable MATLAB file ({library_reason(exc)})") from None
    if "input" not in info:
        raise InputError(f"{where}: no variable 'input' (variables: {sorted(info)[:10]})")
    shape, cls = info["input"]
    kinds = {"double": "f8", "single": "f4", "uint8": "u1", "uint16": "u2", "int16": "i2", "int32": "i4",
             "uint32": "u4", "int8": "i1"}
    if cls not in kinds:
        raise InputError(f"{where}: variable 'input' is of MATLAB class {cls}; expected a numeric array")
    # MATLAB order (Y, X, Z[, T]) -> ([T,] Z, Y, X) for the check; other dimensions as they are (refused)
    mshape = tuple(shape)
    order = {3: (2, 0, 1), 4: (3, 2, 0, 1)}.get(len(mshape), range(len(mshape)))
    check_declared(tuple(mshape[i] for i in order), kinds[cls], where)
    # files before MATLAB 7.3 are not HDF5: scipy.io reads the variable whole, even a time series
    try:
        data = scipy.io.loadmat(str(path), variable_names=["input"])["input"]
    except Exception as exc:
        raise FileFormatError(f"{where}: unreadable MATLAB file ({library_reason(exc)})") from None
    data = np.moveaxis(data, 2, 0)
    if data.ndim == 4:
        data = np.moveaxis(data, -1, 0)
    if data.ndim == 3:
        return [(data, None, None)], None, None
    return [(data[t], None, t) for t in range(data.shape[0])], None, None


def _read_mat73_time_point(path: Path, t: int, where: str) -> np.ndarray:
    h5py = _h5py(where)
    here = f"{where} (time point {t})"
    try:
        f = h5py.File(path, "r")
    except Exception as exc:
        raise FileFormatError(f"{here}: the file became unreadable ({library_reason(exc)})") from None
    with f:
        ds = f.get("input")
        if ds is None or not isinstance(ds, h5py.Dataset):
            raise FileFormatError(f"{here}: variable 'input' disappeared while the file was being read")
        return np.swapaxes(_read_h5_dataset(ds, here, t), -1, -2)


_READERS = {
    ".tif": _tiff_items, ".tiff": _tiff_items,
    ".npy": _numpy_items, ".npz": _numpy_items,
    ".tcf": tcf_items, ".h5": tcf_items, ".hdf5": tcf_items,
    ".mat": _mat_items,
}


def _items(path: Path, labels: bool = False) -> _Read:
    where = where_of(path)
    if not path.is_file():
        raise InputError(f"{where}: no such file")
    reader = _READERS.get(_suffix(path))
    if reader is None:
        raise FileFormatError(f"{where}: unsupported file type {path.suffix!r}; use one of {', '.join(SUFFIXES)}")
    if path.stat().st_size == 0:
        raise FileFormatError(f"{where}: empty file (still being written?)")
    if labels and reader is tcf_items:
        return tcf_items(path, where, decode=False)
    return reader(path, where)


def iter_tomograms(path: str | Path, voxel_size_um: Sequence[float] | float | None = None, *,
                   ri_scale: float | None = None, ri_offset: float | None = None,
                   as_ri: bool = True) -> Iterator[Tomogram]:
    """Yield every tomogram of a file, one per time point, each read only when it is reached.

    Parameters
    ----------
    path : path-like
        A ``.tif``/``.tiff``, ``.npy``/``.npz``, ``.tcf``/``.h5`` or ``.mat`` file.
    voxel_size_um : (z, y, x) or float, optional
        Voxel size in um; overrides what the file says (needed for files that carry none).
    ri_scale, ri_offset : float, optional
        The file stores RI as ``value x ri_scale + ri_offset`` (any element type). Without them
        integers in the RI x 10 000 range are decoded as such and any other integer range is
        refused (:mod:`deepis_rt.io.ri`). TCF files declare their own encoding: these are
        ignored for them (with a warning).
    as_ri : bool
        False: the values as stored (float32), without RI decoding or plausibility check (for
        volumes that are not RI, e.g. distance maps).

    Yields
    ------
    Tomogram
        float32 RI (Z, Y, X) with its voxel size, time, index and medium RI.

    Raises
    ------
    InputError
        Missing file, unsupported type, wrong dimensions, too large, NaN/Inf.
    ImplausibleRIError
        Values that cannot be RI after decoding (an :class:`InputError`).
    """
    for point in time_points(path, voxel_size_um, ri_scale=ri_scale, ri_offset=ri_offset, as_ri=as_ri):
        yield point.read()


@dataclass(frozen=True)
class TimePoint:
    """One time point of a file, read (and checked) only when :meth:`read` is called.

    Attributes
    ----------
    index : int or None
        The time point's index in a multi-time-point file; None for a single-volume file.
    time_s : float or None
        Its acquisition time, when the file records one.
    read : callable
        Returns the :class:`Tomogram`; raises (:class:`InputError`, :class:`FileFormatError`) for a
        time point that cannot be read, without affecting the file's other time points.
    """

    index: int | None
    time_s: float | None
    read: Callable[[], Tomogram]


def time_points(path: str | Path, voxel_size_um: Sequence[float] | float | None = None, *,
                ri_scale: float | None = None, ri_offset: float | None = None,
                as_ri: bool = True) -> list[TimePoint]:
    """The time points of a file, each read only when asked for, so that one damaged time point
    of a time-lapse costs that frame and not the ones after it.

    The file's header (type, layout, declared shapes) is checked here; voxels are read by each
    :attr:`TimePoint.read`. Parameters and errors as :func:`iter_tomograms`.
    """
    path = Path(path)
    where = where_of(path)
    override = normalize_voxel_size(voxel_size_um, where)
    scale = RIScale.from_args(ri_scale, ri_offset, where)
    items, stated_vs, stated_medium = _items(path)
    if scale is not None and _READERS.get(_suffix(path)) is tcf_items:
        log.warning("%s: a TCF file declares its own RI encoding; --ri-scale/--ri-offset are ignored for it", where)
        scale = None
    decoder = RIDecoder(where, scale)
    vs = override
    if override is None and stated_vs is not None:  # an override makes what the file says irrelevant
        vs = check_voxel_size(stated_vs[0], where, stated_vs[1],
                              fix="correct it in the file, or pass --voxel-size Z Y X (voxel_size_um=) to override it")
    medium = None
    if stated_medium is not None:
        medium = check_medium_ri(stated_medium[0], where, stated_medium[1],
                                 fix="correct it in the file, or delete it (then --medium-ri or the model's is used)")
    if vs is None:
        log.debug("%s: no voxel size in the file and none given", where)

    def reader(data: Any, time_s: float | None, index: int | None) -> Callable[[], Tomogram]:
        def read() -> Tomogram:
            src = str(path) if index is None else f"{path}#t{index}"
            here = where if index is None else f"{where} (time point {index})"
            values = _volume(data)
            if as_ri:
                if values.dtype.kind == "f":
                    values = check_values(values, here)
                values = decoder(values, here)
            ri = check_values(values, here)
            return Tomogram(ri=ri, voxel_size_um=vs, source=src, time_s=time_s, frame_index=index,
                            medium_ri=None if medium is None else float(medium))

        return read

    return [TimePoint(index, time_s, reader(data, time_s, index)) for data, time_s, index in items]


def read_tomogram(path: str | Path, voxel_size_um: Sequence[float] | float | None = None, *,
                  ri_scale: float | None = None, ri_offset: float | None = None, as_ri: bool = True) -> Tomogram:
    """Read a single-time-point tomogram (the first time point of a series).

    See :func:`iter_tomograms` for parameters; a multi-time-point file logs a
    warning and returns its first time point (the others are not read).
    """
    items = iter_tomograms(path, voxel_size_um, ri_scale=ri_scale, ri_offset=ri_offset, as_ri=as_ri)
    first = next(items)
    if first.frame_index is not None:
        log.warning("%s: holds several time points; using the first (use iter_tomograms for all)", where_of(path))
    return first


def read_labels(path: str | Path) -> np.ndarray:
    """Read a label volume (0 background, 1 CAR-T, 2 target, 3 IS) as uint8 (Z, Y, X).

    Any format :func:`read_tomogram` reads; TCF RI scaling is not applied.

    Raises
    ------
    InputError
        Not 3-D, non-integer values, or labels outside 0..255.
    """
    path = Path(path)
    where = where_of(path)
    items, _, _ = _items(path, labels=True)
    if len(items) != 1:
        raise InputError(f"{where}: a label file must hold one 3-D volume, found {len(items)} time points")
    data = np.asarray(_volume(items[0][0]))
    if data.dtype.kind == "f":
        if not np.isfinite(data).all() or not np.array_equal(data, np.round(data)):
            raise InputError(f"{where}: labels must be whole numbers (0 background, 1 CAR-T, 2 target, 3 IS)")
    if data.size and (data.min() < 0 or data.max() > 255):
        raise InputError(f"{where}: label values outside 0..255")
    return np.ascontiguousarray(data, dtype=np.uint8)
