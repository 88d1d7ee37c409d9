"""Readers for refractive-index tomograms and label volumes.

Supported formats (chosen by the file suffix):

* ``.tif`` / ``.tiff`` — OME-TIFF (``PhysicalSizeX/Y/Z``, converted to um) or ImageJ
  hyperstacks (``spacing`` for Z, the X/Y resolution tags for Y/X). Axes ``ZYX`` or
  ``TZYX`` (one tomogram per time point).
* ``.npy`` / ``.npz`` — voxel size from a ``<name>.json`` sidecar
  (``{"voxel_size_um": [z, y, x], "time_s": ..., "medium_ri": ...}``) or the caller.
  In ``.npz`` the array named ``ri`` (else ``tomogram``, ``input``, else the only one) is used.
* ``.tcf`` / ``.h5`` — Tomocube TCF layout (HDF5): datasets ``/Data/3D/000000``,
  ``000001``, ... (one per time point, axes Z, Y, X), attributes ``ResolutionX/Y/Z``
  (um) and ``TimeInterval`` (s) on ``/Data/3D``; optional root attribute
  ``FormatVersion``. RI scaling: floating-point data are RI as stored (format 1.3 and
  older); integer data are RI x 10 000 (format 1.4 and newer store uint16). Compressed
  files need the ``hdf5plugin`` package (``pip install 'deepis-rt[formats]'``).
* ``.mat`` — the original DeepIS data: variable ``input``. MATLAB 7.3 files are HDF5
  (read with h5py); older ones with :func:`scipy.io.loadmat`. MATLAB's (Y, X, Z) order
  is converted to (Z, Y, X).

Every reader validates the declared shape and type before reading voxels
(:func:`~deepis_rt.io.tomogram.check_declared`) and rejects NaN / Inf after reading.
Readers are pure functions of the file.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt.errors import FileFormatError, InputError
from deepis_rt.io.tomogram import Tomogram, check_declared, check_values, normalize_voxel_size, where_of

__all__ = ["read_tomogram", "iter_tomograms", "read_labels", "read_sidecar", "SUFFIXES"]

log = logging.getLogger(__name__)

#: File suffixes (lower case) the readers understand.
SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".npy", ".npz", ".tcf", ".h5", ".hdf5", ".mat")

_UNIT_TO_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "\\u00B5m": 1.0, "nm": 1e-3, "mm": 1e3,
               "m": 1e6, "cm": 1e4, "pixel": None, "": None}

# one time point of a file: (volume or a function that reads it, time_s, frame_index); multi-time-point
# TCF files are read one time point at a time (hours-long time-lapses do not fit in memory)
_Item = tuple[Any, float | None, int | None]


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
        data = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FileFormatError(f"{where_of(side)}: unreadable JSON sidecar ({exc}); fix or delete it") from None
    if not isinstance(data, dict):
        raise FileFormatError(f"{where_of(side)}: sidecar must hold a JSON object")
    return data


# --------------------------------------------------------------------------- TIFF
def _tiff_voxel_size(tif: Any) -> tuple[float, float, float] | None:
    if tif.is_ome and tif.ome_metadata:
        m = re.search(r"<Pixels\b[^>]*>", tif.ome_metadata)
        if m:
            attrs = dict(re.findall(r'(\w+)="([^"]*)"', m.group(0)))
            out = []
            for ax in "ZYX":
                val = attrs.get(f"PhysicalSize{ax}")
                if val is None:
                    return None
                unit = attrs.get(f"PhysicalSize{ax}Unit", "µm")
                factor = _UNIT_TO_UM.get(unit, None)
                if factor is None:
                    return None
                out.append(float(val) * factor)
            return tuple(out)  # type: ignore[return-value]
    ij = tif.imagej_metadata
    if ij and "spacing" in ij:
        factor = _UNIT_TO_UM.get(str(ij.get("unit", "um")), None)
        tags = tif.pages[0].tags
        try:
            xr = tags["XResolution"].value
            yr = tags["YResolution"].value
            x = xr[1] / xr[0]
            y = yr[1] / yr[0]
        except (KeyError, ZeroDivisionError, TypeError):
            return None
        if factor is None:
            return None
        return (float(ij["spacing"]) * factor, float(y) * factor, float(x) * factor)
    return None


def _tiff_items(path: Path, where: str) -> tuple[list[_Item], tuple[float, float, float] | None, float | None]:
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:
        raise FileFormatError(f"{where}: not a readable TIFF ({type(exc).__name__}: {exc}); "
                              "check that the file is complete") from None
    try:
        series = tif.series[0]
        shape = tuple(series.shape)
        axes = series.axes.upper()
        # drop singleton channel / sample axes (e.g. ImageJ 'TZCYX' with C=1)
        keep = [i for i, a in enumerate(axes) if not (a in "CSQ" and shape[i] == 1) or a in "ZYX"]
        if len(keep) != len(shape):
            shape = tuple(shape[i] for i in keep)
            axes = "".join(axes[i] for i in keep)
        check_declared(shape, series.dtype, where)
        if len(shape) == 4 and axes[0] not in "TQI":
            raise InputError(f"{where}: 4-D TIFF with axes {axes!r}; expected T, Z, Y, X")
        vs = _tiff_voxel_size(tif)
        data = series.asarray().reshape(shape)
    except InputError:
        raise
    except Exception as exc:
        raise FileFormatError(f"{where}: failed to read TIFF data ({type(exc).__name__}: {exc})") from None
    finally:
        tif.close()
    if data.ndim == 3:
        return [(data, None, None)], vs, None
    return [(data[t], None, t) for t in range(data.shape[0])], vs, None


# --------------------------------------------------------------------------- NumPy
def _npz_member(zf: zipfile.ZipFile, where: str) -> str:
    names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    for key in ("ri", "tomogram", "input", "arr_0"):
        if key in names:
            return key
    if len(names) == 1:
        return names[0]
    raise InputError(f"{where}: .npz holds {names}; name the tomogram array 'ri'")


def _npy_header(fh: Any) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
    else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
    return shape, dtype


def _numpy_items(path: Path, where: str) -> tuple[list[_Item], tuple[float, float, float] | None, float | None]:
    side = read_sidecar(path)
    try:
        if _suffix(path) == ".npy":
            with open(path, "rb") as fh:
                shape, dtype = _npy_header(fh)
            check_declared(shape, dtype, where)
            # a time series is memory-mapped: each time point is read when it is converted
            data = np.load(path, allow_pickle=False, mmap_mode="r" if len(shape) == 4 else None)
        else:
            with zipfile.ZipFile(path) as zf:
                key = _npz_member(zf, where)
                with zf.open(key + ".npy") as fh:
                    shape, dtype = _npy_header(fh)
            check_declared(shape, dtype, where)
            with np.load(path, allow_pickle=False) as npz:
                data = npz[key]
    except InputError:
        raise
    except Exception as exc:
        raise FileFormatError(f"{where}: not a readable NumPy file ({type(exc).__name__}: {exc})") from None
    vs = normalize_voxel_size(side.get("voxel_size_um"), where) if side.get("voxel_size_um") is not None else None
    time_s = side.get("time_s")
    medium = side.get("medium_ri")
    if data.ndim == 3:
        return [(data, None if time_s is None else float(time_s), None)], vs, medium
    # np.array copies one time point out of the memory map when it is needed
    return [(functools.partial(np.array, data[t]), None, t) for t in range(data.shape[0])], vs, medium


# --------------------------------------------------------------------------- HDF5 (TCF, MATLAB 7.3)
def _h5py(where: str) -> Any:
    import h5py

    try:  # registers compression filters used by some TCF files, when installed
        import hdf5plugin  # noqa: F401
    except ImportError:
        pass
    return h5py


def _attr_float(obj: Any, name: str) -> float | None:
    if name not in obj.attrs:
        return None
    val = np.asarray(obj.attrs[name]).ravel()
    if val.size == 0:
        return None
    try:
        return float(val[0])
    except (TypeError, ValueError):
        return None


def _tcf_ri(raw: np.ndarray) -> np.ndarray:
    # float data: RI as stored; integer data (format >= 1.4, uint16): RI x 10 000
    if raw.dtype.kind in "iu":
        return raw.astype(np.float32) / np.float32(10000.0)
    return raw


def _read_h5_dataset(ds: Any, where: str) -> np.ndarray:
    try:
        return ds[()]
    except OSError as exc:
        raise FileFormatError(
            f"{where}: cannot decode HDF5 data ({exc}); compressed TCF files need "
            "pip install 'deepis-rt[formats]' (hdf5plugin)"
        ) from None


def _tcf_items(path: Path, where: str, scale: bool = True) -> tuple[list[_Item], tuple[float, float, float] | None, float | None]:
    h5py = _h5py(where)
    try:
        f = h5py.File(path, "r")
    except Exception as exc:
        raise FileFormatError(f"{where}: not a readable HDF5/TCF file ({type(exc).__name__}: {exc})") from None
    with f:
        if "Data/3D" not in f:
            raise FileFormatError(f"{where}: no /Data/3D group; not a Tomocube TCF file with RI tomograms")
        grp = f["Data/3D"]
        names = sorted(k for k in grp.keys() if isinstance(grp[k], h5py.Dataset))
        if not names:
            raise FileFormatError(f"{where}: /Data/3D holds no datasets")
        for name in names:
            check_declared(grp[name].shape, grp[name].dtype, f"{where} /Data/3D/{name}", allow_time=False)
        res = [_attr_float(grp, f"Resolution{ax}") for ax in "ZYX"]
        vs = tuple(res) if all(r is not None and r > 0 for r in res) else None  # type: ignore[arg-type]
        dt = _attr_float(grp, "TimeInterval")
        medium = _attr_float(f["Data"], "MediumRI") if "Data" in f else None
        items: list[_Item] = []
        for i, name in enumerate(names):
            t = _attr_float(grp[name], "Time")
            if t is None and dt is not None:
                t = dt * i
            items.append((functools.partial(_read_tcf_time_point, path, name, where, scale), t,
                          i if len(names) > 1 else None))
    return items, vs, medium  # type: ignore[return-value]


def _read_tcf_time_point(path: Path, name: str, where: str, scale: bool) -> np.ndarray:
    """One dataset of /Data/3D, read when its time point is needed (the file is reopened)."""
    h5py = _h5py(where)
    here = f"{where} /Data/3D/{name}"
    try:
        f = h5py.File(path, "r")
    except Exception as exc:
        raise FileFormatError(f"{here}: the file became unreadable ({type(exc).__name__}: {exc})") from None
    with f:
        ds = f.get(f"Data/3D/{name}")
        if ds is None:
            raise FileFormatError(f"{here}: dataset disappeared while the file was being read")
        check_declared(ds.shape, ds.dtype, here, allow_time=False)
        raw = _read_h5_dataset(ds, here)
    return _tcf_ri(raw) if scale else raw


def _mat_items(path: Path, where: str) -> tuple[list[_Item], tuple[float, float, float] | None, float | None]:
    with open(path, "rb") as fh:
        head = fh.read(128)
    if b"MATLAB 7.3" in head[:116] or head[:8] == b"\x89HDF\r\n\x1a\n":
        h5py = _h5py(where)
        try:
            with h5py.File(path, "r") as f:
                if "input" not in f:
                    raise InputError(f"{where}: no variable 'input' (variables: {sorted(f.keys())[:10]})")
                ds = f["input"]
                check_declared(ds.shape, ds.dtype, where)
                data = _read_h5_dataset(ds, where)
        except (InputError, FileFormatError):
            raise
        except Exception as exc:
            raise FileFormatError(f"{where}: unreadable MATLAB 7.3 file ({type(exc).__name__}: {exc})") from None
        # h5py sees MATLAB's (Y, X, Z[, T]) column-major array reversed: ([T,] Z, X, Y)
        data = np.swapaxes(data, -1, -2)
    else:
        import scipy.io

        try:
            info = {name: (shape, cls) for name, shape, cls in scipy.io.whosmat(str(path))}
        except Exception as exc:
            raise FileFormatError(f"{where}: not a readable MATLAB file ({type(exc).__name__}: {exc})") from None
        if "input" not in info:
            raise InputError(f"{where}: no variable 'input' (variables: {sorted(info)[:10]})")
        shape, cls = info["input"]
        kinds = {"double": "f8", "single": "f4", "uint8": "u1", "uint16": "u2", "int16": "i2", "int32": "i4",
                 "uint32": "u4", "int8": "i1"}
        if cls not in kinds:
            raise InputError(f"{where}: variable 'input' is of MATLAB class {cls}; expected a numeric array")
        # MATLAB order (Y, X, Z[, T]) -> ([T,] Z, Y, X) for the check
        mshape = tuple(shape)
        check_declared(mshape[-1:] + mshape[:-1] if len(mshape) == 3 else (mshape[3], mshape[2]) + mshape[:2],
                       kinds[cls], where)
        data = scipy.io.loadmat(str(path), variable_names=["input"])["input"]
        data = np.moveaxis(data, 2, 0)
        if data.ndim == 4:
            data = np.moveaxis(data, -1, 0)
    if data.ndim == 3:
        return [(data, None, None)], None, None
    return [(data[t], None, t) for t in range(data.shape[0])], None, None


_READERS = {
    ".tif": _tiff_items, ".tiff": _tiff_items,
    ".npy": _numpy_items, ".npz": _numpy_items,
    ".tcf": _tcf_items, ".h5": _tcf_items, ".hdf5": _tcf_items,
    ".mat": _mat_items,
}


def _items(path: Path, labels: bool = False) -> tuple[list[_Item], tuple[float, float, float] | None, float | None]:
    where = where_of(path)
    if not path.is_file():
        raise InputError(f"{where}: no such file")
    reader = _READERS.get(_suffix(path))
    if reader is None:
        raise FileFormatError(f"{where}: unsupported file type {path.suffix!r}; use one of {', '.join(SUFFIXES)}")
    if path.stat().st_size == 0:
        raise FileFormatError(f"{where}: empty file (still being written?)")
    if labels and reader is _tcf_items:
        return _tcf_items(path, where, scale=False)
    return reader(path, where)


def iter_tomograms(path: str | Path, voxel_size_um: Sequence[float] | float | None = None) -> Iterator[Tomogram]:
    """Yield every tomogram of a file, one per time point.

    Parameters
    ----------
    path : path-like
        A ``.tif``/``.tiff``, ``.npy``/``.npz``, ``.tcf``/``.h5`` or ``.mat`` file.
    voxel_size_um : (z, y, x) or float, optional
        Voxel size in um; overrides what the file says (needed for files that carry none).

    Yields
    ------
    Tomogram
        float32 RI (Z, Y, X) with its voxel size, time and index.

    Raises
    ------
    InputError
        Missing file, unsupported type, wrong dimensions, too large, NaN/Inf.
    """
    path = Path(path)
    where = where_of(path)
    override = normalize_voxel_size(voxel_size_um, where)
    items, file_vs, medium = _items(path)
    vs = override if override is not None else file_vs
    if vs is None:
        log.debug("%s: no voxel size in the file and none given", where)
    for data, time_s, index in items:
        src = str(path) if index is None else f"{path}#t{index}"
        ri = check_values(_volume(data), where if index is None else f"{where} (time point {index})")
        yield Tomogram(ri=ri, voxel_size_um=vs, source=src, time_s=time_s, frame_index=index,
                       medium_ri=None if medium is None else float(medium))


def read_tomogram(path: str | Path, voxel_size_um: Sequence[float] | float | None = None) -> Tomogram:
    """Read a single-time-point tomogram (the first time point of a series).

    See :func:`iter_tomograms` for parameters; a multi-time-point file logs a
    warning and returns its first time point.
    """
    items = iter_tomograms(path, voxel_size_um)
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
