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
import html
import json
import logging
import re
import struct
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt.errors import FileFormatError, InputError
from deepis_rt.io.ri import RIDecoder, RIScale
from deepis_rt.io.tcf import tcf_items
from deepis_rt.io.tomogram import Tomogram, check_declared, check_values, normalize_voxel_size, where_of

__all__ = ["read_tomogram", "iter_tomograms", "read_labels", "read_sidecar", "SUFFIXES"]

log = logging.getLogger(__name__)

#: File suffixes (lower case) the readers understand.
SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".npy", ".npz", ".tcf", ".h5", ".hdf5", ".mat")

_UNIT_TO_UM = {"µm": 1.0, "\u03bcm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "\\u00B5m": 1.0, "nm": 1e-3,
               "mm": 1e3, "m": 1e6, "cm": 1e4, "inch": 25400.0, "pixel": None, "": None}
#: TIFF ResolutionUnit -> um per unit, for ImageJ files whose description names no unit (as ImageJ reads
#: them: inch or cm from the tag; "none" leaves the image uncalibrated)
_TIFF_RESOLUTION_UNIT_TO_UM = {2: 25400.0, 3: 1e4}

# one time point of a file: (volume or a function that reads it, time_s, frame_index); time series are
# read one time point at a time (hours-long time-lapses do not fit in memory)
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
        m = re.search(r"<(?:[\w-]+:)?Pixels\b[^>]*>", tif.ome_metadata)  # with or without a namespace prefix
        if m:
            attrs = {k: html.unescape(v) for k, v in re.findall(r'(\w+)="([^"]*)"', m.group(0))}
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
        tags = tif.pages[0].tags
        if "unit" in ij:
            factor = _UNIT_TO_UM.get(str(ij["unit"]), None)
        else:  # no unit in the description: ImageJ takes it from the ResolutionUnit tag, else uncalibrated
            unit_tag = tags.get("ResolutionUnit")
            factor = _TIFF_RESOLUTION_UNIT_TO_UM.get(int(unit_tag.value) if unit_tag is not None else 1)
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


def _tiff_series(tif: Any, where: str) -> tuple[Any, tuple[int, ...], str]:
    """The first series of an open TIFF, its shape and axes without singleton channel/sample axes."""
    series = tif.series[0]
    shape = tuple(series.shape)
    axes = series.axes.upper()
    # drop singleton channel / sample axes (e.g. ImageJ 'TZCYX' with C=1)
    keep = [i for i, a in enumerate(axes) if not (a in "CSQ" and shape[i] == 1) or a in "ZYX"]
    if len(keep) != len(shape):
        shape = tuple(shape[i] for i in keep)
        axes = "".join(axes[i] for i in keep)
    return series, shape, axes


def _check_complete(tif: Any, where: str) -> None:
    """Refuse a TIFF cut short (still being written, an interrupted copy): tifffile only logs a chain of
    pages (IFDs) that breaks off, or a description past the end of the file, and reads what is left: a
    volume with fewer planes or, without the OME-XML / ImageJ description (written last), a wrong layout."""
    n = len(tif.pages)  # follows the chain to its end or to its break
    if n == 0:
        return  # no page at all: the series check says so
    first = tif.pages[0]
    try:
        fmt, fh = tif.tiff, tif.filehandle
        fmt.tagnoformat, fmt.tagnosize, fmt.tagsize, fmt.offsetformat, fmt.offsetsize  # noqa: B018
    except AttributeError:  # a tifffile without these internals: the check is not possible
        log.debug("%s: this tifffile does not expose the IFD layout; completeness not checked", where)
        return
    try:
        fh.seek(first.offset)
        count = struct.unpack(fmt.tagnoformat, fh.read(fmt.tagnosize))[0]
        entries = fh.read(count * fmt.tagsize)
        codes = {struct.unpack(tif.byteorder + "H", entries[i:i + 2])[0] for i in range(0, len(entries), fmt.tagsize)}
        offset = tif.pages[n - 1].offset
        fh.seek(offset)
        count = struct.unpack(fmt.tagnoformat, fh.read(fmt.tagnosize))[0]
        fh.seek(offset + fmt.tagnosize + count * fmt.tagsize)
        following = struct.unpack(fmt.offsetformat, fh.read(fmt.offsetsize))[0]
    except (struct.error, OSError):
        codes, following = set(), -1
    if following != 0:
        what = f"the TIFF breaks off after page {n} (the next page lies past the end of the file or is damaged)"
    elif 270 in codes and 270 not in first.tags:
        what = "the description of the first page (OME-XML / ImageJ metadata) lies past the end of the file"
    else:
        return
    raise FileFormatError(f"{where}: {what}; the file is incomplete or corrupt: check that it was written or "
                          "copied completely")


def _open_tiff(path: Path, where: str) -> Any:
    import tifffile

    try:
        return tifffile.TiffFile(path)
    except Exception as exc:
        raise FileFormatError(f"{where}: not a readable TIFF ({type(exc).__name__}: {exc}); "
                              "check that the file is complete") from None


def _tiff_items(path: Path, where: str) -> tuple[list[_Item], tuple[float, float, float] | None, float | None]:
    tif = _open_tiff(path, where)
    try:
        _check_complete(tif, where)
        series, shape, axes = _tiff_series(tif, where)
        # a multi-position file holds one series per position; thumbnails and previews differ in shape
        alike = sum(tuple(s.shape) == tuple(series.shape) for s in tif.series[1:])
        if alike:
            log.warning("%s: holds %d series of the same shape (several positions?); only the first is read: "
                        "export one position per file to process the others", where, alike + 1)
        check_declared(shape, series.dtype, where)
        # planes are Z, or unlabelled: C (how tifffile labels the planes of a 3-D array written without
        # axes), Q / I (plain multi-page TIFF); planes along T are a time-lapse of 2-D images
        if axes[-2:] != "YX" or axes[-3] not in "ZCQI" or (len(axes) == 4 and axes[0] not in "TQI"):
            raise InputError(f"{where}: TIFF axes {axes!r} (shape {shape}) are not Z, Y, X or T, Z, Y, X: the file "
                             "holds 2-D images (time points or colour samples), not a tomogram; export the RI "
                             "tomogram as a Z stack (one per time point)")
        vs = _tiff_voxel_size(tif)
        data = series.asarray().reshape(shape) if len(shape) == 3 else None
    except InputError:
        raise
    except Exception as exc:
        raise FileFormatError(f"{where}: failed to read TIFF data ({type(exc).__name__}: {exc})") from None
    finally:
        tif.close()
    if data is not None:
        return [(data, None, None)], vs, None
    # a time series: each time point is read from its own pages when it is needed
    return [(functools.partial(_read_tiff_time_point, path, t, shape, where), None, t)
            for t in range(shape[0])], vs, None


def _read_tiff_time_point(path: Path, t: int, shape: tuple[int, ...], where: str) -> np.ndarray:
    """Time point ``t`` of a (T, Z, Y, X) TIFF: its pages only, else a memory map, else the whole file."""
    import tifffile

    here = f"{where} (time point {t})"
    tif = _open_tiff(path, here)
    try:
        series = tif.series[0]
        n_pages = len(series.pages)
        if n_pages % shape[0] == 0:
            per_t = n_pages // shape[0]
            return tif.asarray(key=slice(t * per_t, (t + 1) * per_t), series=0).reshape(shape[1:])
        try:  # one contiguous block (e.g. ImageJ files over 4 GiB): map it, read only this time point
            return np.array(tifffile.memmap(path, series=0, mode="r").reshape(shape)[t])
        except Exception as exc:
            log.info("%s: pages do not split by time point and the data cannot be memory-mapped (%s); "
                     "reading the whole series", where, exc)
            return series.asarray().reshape(shape)[t]
    except InputError:
        raise
    except Exception as exc:
        raise FileFormatError(f"{here}: failed to read TIFF data ({type(exc).__name__}: {exc})") from None
    finally:
        tif.close()


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
        raise FileFormatError(f"{where}: cannot read the HDF5 data ({exc}); the file is truncated or corrupt") from None


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
                if not isinstance(ds, h5py.Dataset):
                    raise InputError(f"{where}: variable 'input' is not a numeric array")
                # h5py sees MATLAB's (Y, X, Z[, T]) column-major array reversed: ([T,] Z, X, Y)
                shape = tuple(ds.shape)
                check_declared(shape[:-2] + shape[-1:] + shape[-2:-1], ds.dtype, where)
                data = np.swapaxes(_read_h5_dataset(ds, where), -1, -2) if len(shape) == 3 else None
        except (InputError, FileFormatError):
            raise
        except Exception as exc:
            raise FileFormatError(f"{where}: unreadable MATLAB 7.3 file ({type(exc).__name__}: {exc})") from None
        if data is not None:
            return [(data, None, None)], None, None
        # HDF5: each time point is read when it is needed
        return [(functools.partial(_read_mat73_time_point, path, t, where), None, t) for t in range(shape[0])], None, None
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
    # MATLAB order (Y, X, Z[, T]) -> ([T,] Z, Y, X) for the check; other dimensions as they are (refused)
    mshape = tuple(shape)
    order = {3: (2, 0, 1), 4: (3, 2, 0, 1)}.get(len(mshape), range(len(mshape)))
    check_declared(tuple(mshape[i] for i in order), kinds[cls], where)
    # files before MATLAB 7.3 are not HDF5: scipy.io reads the variable whole, even a time series
    try:
        data = scipy.io.loadmat(str(path), variable_names=["input"])["input"]
    except Exception as exc:
        raise FileFormatError(f"{where}: unreadable MATLAB file ({type(exc).__name__}: {exc})") from None
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
        raise FileFormatError(f"{here}: the file became unreadable ({type(exc).__name__}: {exc})") from None
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


def _items(path: Path, labels: bool = False) -> tuple[list[_Item], tuple[float, float, float] | None, float | None]:
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
    items, file_vs, medium = _items(path)
    if scale is not None and _READERS.get(_suffix(path)) is tcf_items:
        log.warning("%s: a TCF file declares its own RI encoding; --ri-scale/--ri-offset are ignored for it", where)
        scale = None
    decoder = RIDecoder(where, scale)
    vs = override if override is not None else file_vs
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
