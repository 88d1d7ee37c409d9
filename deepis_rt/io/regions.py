"""Tomograms too large for memory, read region by region and never whole.

:func:`open_region_source` opens one time point of a file and returns a :class:`RegionSource`:
``.shape`` (Z, Y, X), ``.dtype`` (float32, what a read returns), ``.voxel_size_um``,
``.medium_ri`` and NumPy slicing — ``src[z0:z1, y0:y1, x0:x1]`` reads that box, and only that
box, as float32 refractive index (positive steps subsample it: ``src[::2, ::2, ::2]``). Formats:

* **TCF** (``.tcf`` / ``.h5`` / ``.hdf5``, both layouts of :mod:`deepis_rt.io.tcf`): a classic
  time point is read as an HDF5 hyperslab; of a tiled one only the tiles that intersect the box,
  and of each only the intersection (voxels in no tile are the medium RI).
* **OME-Zarr** (a folder, NGFF 0.4 in zarr format 2 or 0.5 in zarr format 3, or a plain zarr
  array): the full-resolution level; axes from ``multiscales``, voxel size from its ``scale``
  transformations and units. Only the chunks that intersect the box are decoded.
* **NumPy** ``.npy``: memory-mapped (``np.load(mmap_mode="r")``); the box is copied out of the
  map. Voxel size from the ``<name>.json`` sidecar, as for whole files. (A ``.npz`` member is
  compressed or zipped and cannot be read by region: it is refused with the fix.)
* **TIFF / BigTIFF / OME-TIFF** (``.tif`` / ``.tiff``): through tifffile's zarr view of the
  series (``series.aszarr()``), which decodes only the pages (and, in tiled TIFFs, the tiles)
  that intersect the box.

What a file declares is checked when it is opened, before any voxel is read, with the checks of
the whole-file readers (:mod:`deepis_rt.io.readers`): dimensions and element type
(:func:`~deepis_rt.io.tomogram.check_declared`), the format's own declarations (TCF tile ranges
and overlaps, TIFF page chains and plane counts, the size of a ``.npy`` against its header), the
voxel size and medium RI (:mod:`deepis_rt.io.plausibility`). Sizes differ on purpose: a field
may be as large as :data:`MAX_FIELD_BYTES` (as float32) because it is never read whole, one read
at most :data:`~deepis_rt.io.tomogram.MAX_VOLUME_BYTES`, and a chunk of the file (the unit its
library decodes) at most that too, so that no read decodes more than it was asked for by more
than a chunk. Every region is decoded to RI and checked as a whole volume would be
(:mod:`deepis_rt.io.ri`: RI x 10 000 integers, ``ri_scale`` / ``ri_offset``, NaN/Inf and
values that cannot be RI refused) — for the region read, since the rest is not read.

A source holds its file open until :meth:`RegionSource.close` (or the end of a ``with`` block);
pickled (to a Ray worker, a process pool), it travels as its path and options and opens the file
again where it is used.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt.errors import FileFormatError, InputError, VolumeTooLargeError
from deepis_rt.io import tcf as _tcf
from deepis_rt.io import tiff as _tiff
from deepis_rt.io.plausibility import check_medium_ri, check_voxel_size
from deepis_rt.io.readers import _check_data_size, _npy_header, read_sidecar
from deepis_rt.io.ri import RIDecoder, RIScale
from deepis_rt.io.tomogram import MAX_VOLUME_BYTES, check_declared, check_values, library_reason, where_of

__all__ = ["MAX_FIELD_BYTES", "RegionSource", "open_region_source", "REGION_SUFFIXES"]

log = logging.getLogger(__name__)

#: Largest field a region source opens, as float32 bytes (1 TiB: 256 x 16 384 x 16 384 x 4 B is a quarter).
MAX_FIELD_BYTES: int = 1024**4

#: File suffixes (lower case) read by region; a folder is an OME-Zarr store.
REGION_SUFFIXES: tuple[str, ...] = (".tcf", ".h5", ".hdf5", ".zarr", ".npy", ".tif", ".tiff")

_VS_FIX = "correct it in the file, or pass --voxel-size Z Y X (voxel_size_um=) to override it"
_UNITS_UM = {"micrometer": 1.0, "micron": 1.0, "um": 1.0, "µm": 1.0, "nanometer": 1e-3, "nm": 1e-3,
             "millimeter": 1e3, "mm": 1e3, "centimeter": 1e4, "meter": 1e6, "angstrom": 1e-4}


def _chunk_check(chunk_shape: Sequence[int], itemsize: int, where: str, what: str, fix: str) -> None:
    """Refuse a file whose decoding unit is larger than one read may be: every read would decode it whole."""
    n_bytes = int(np.prod([int(c) for c in chunk_shape], dtype=np.int64)) * max(itemsize, 4)
    if n_bytes > MAX_VOLUME_BYTES:
        raise VolumeTooLargeError(f"{where}: one {what} {tuple(int(c) for c in chunk_shape)} is "
                                  f"{n_bytes / 1024**3:.1f} GiB, above the {MAX_VOLUME_BYTES / 1024**3:.0f} GiB a "
                                  f"region read may hold; {fix}")


class RegionSource(ABC):
    """One time point of a file, read by region (see the module docstring).

    Attributes
    ----------
    path : pathlib.Path
        The file (or OME-Zarr folder).
    shape : (int, int, int)
        (Z, Y, X) of the field.
    dtype : numpy.dtype
        float32: what every read returns.
    stored_dtype : numpy.dtype
        The element type in the file.
    voxel_size_um : (float, float, float) or None
        Checked for plausibility; None when the file says nothing and none was given.
    medium_ri : float or None
        The medium's RI, when the file says.
    time_point : int
        Which time point of the file.
    """

    kind = ""
    ndim = 3
    dtype = np.dtype(np.float32)

    def __init__(self, path: Path, where: str, shape: Sequence[int], stored_dtype: Any, *,
                 voxel_size_um: tuple[float, float, float] | None, medium_ri: float | None, time_point: int,
                 scale: RIScale | None, options: dict[str, Any]) -> None:
        self.path = path
        self.where = where
        self.shape: tuple[int, int, int] = tuple(int(s) for s in shape)  # type: ignore[assignment]
        self.stored_dtype = np.dtype(stored_dtype)
        self.voxel_size_um = voxel_size_um
        self.medium_ri = medium_ri
        self.time_point = time_point
        self._decoder = RIDecoder(where, scale)
        self._options = options  # what open_region_source needs to open it again elsewhere

    # ---------------------------------------------------------------- reading
    @property
    def nbytes(self) -> int:
        """Size of the whole field as float32 (never allocated by a source)."""
        return int(np.prod(self.shape, dtype=np.int64)) * 4

    def _box(self, key: Any) -> tuple[tuple[slice, slice, slice], tuple[int, ...]]:
        """A NumPy index as a box of slices (positive steps), and the axes an integer index drops."""
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (3 - len(key) + 1) + key[i + 1:]
        if len(key) > 3:
            raise IndexError(f"{self.where}: {len(key)} indices for a 3-D field (Z, Y, X)")
        key = key + (slice(None),) * (3 - len(key))
        box, drop = [], []
        for ax, (k, n) in enumerate(zip(key, self.shape, strict=True)):
            if isinstance(k, slice):
                start, stop, step = k.indices(n)
                if step < 1:
                    raise IndexError(f"{self.where}: step {step} along {'ZYX'[ax]}; a region is read with positive "
                                     "steps (flip the result instead)")
                box.append(slice(start, max(start, stop), step))
            elif isinstance(k, (int, np.integer)):
                i = int(k) + (n if int(k) < 0 else 0)
                if not 0 <= i < n:
                    raise IndexError(f"{self.where}: index {int(k)} outside axis {'ZYX'[ax]} of size {n}")
                box.append(slice(i, i + 1, 1))
                drop.append(ax)
            else:
                raise TypeError(f"{self.where}: a region is read with slices or integers, not {type(k).__name__}")
        return tuple(box), tuple(drop)  # type: ignore[return-value]

    def __getitem__(self, key: Any) -> np.ndarray:
        """The box ``key`` as float32 RI (C-contiguous); integers drop their axis, as in NumPy.

        Raises
        ------
        VolumeTooLargeError
            A box larger than :data:`~deepis_rt.io.tomogram.MAX_VOLUME_BYTES` as float32.
        ImplausibleRIError, NonFiniteInputError, FileFormatError
            The region's values cannot be RI, hold NaN/Inf, or cannot be read.
        """
        box, drop = self._box(key)
        shape = _box_shape(box)
        n_bytes = int(np.prod(shape, dtype=np.int64)) * 4
        if n_bytes > MAX_VOLUME_BYTES:
            raise VolumeTooLargeError(f"{self.where}: region {shape} is {n_bytes / 1024**3:.1f} GiB as float32, above "
                                      f"the {MAX_VOLUME_BYTES / 1024**3:.0f} GiB of one read; read smaller regions")
        here = f"{self.where} [{', '.join(f'{s.start}:{s.stop}' + (f':{s.step}' if s.step > 1 else '') for s in box)}]"
        if 0 in shape:
            ri = np.empty(shape, np.float32)
        else:
            values = self._read(box, here)
            if values.dtype.kind == "f":
                values = check_values(values, here)
            ri = check_values(self._decoder(values, here), here)
        if drop:
            ri = ri[tuple(0 if ax in drop else slice(None) for ax in range(3))]
        return ri

    @abstractmethod
    def _read(self, box: tuple[slice, slice, slice], here: str) -> np.ndarray:
        """The stored values of ``box`` (decoded to RI where the format declares its own encoding)."""

    # ---------------------------------------------------------------- life cycle
    @abstractmethod
    def close(self) -> None:
        """Release the file (a later read opens it again)."""

    def __enter__(self) -> RegionSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        # the file, not its open handle or memory map, travels to another process
        return (_reopen, (str(self.path), self._options))

    def __repr__(self) -> str:
        vs = "unknown" if self.voxel_size_um is None else "x".join(f"{v:g}" for v in self.voxel_size_um)
        return (f"<{type(self).__name__} {self.path.name} t={self.time_point} shape={self.shape} "
                f"stored={self.stored_dtype} voxel_size_um={vs}>")


def _box_shape(box: Sequence[slice]) -> tuple[int, ...]:
    return tuple(len(range(s.start, s.stop, s.step)) for s in box)


def _reopen(path: str, options: dict[str, Any]) -> RegionSource:
    return open_region_source(path, **options)


# --------------------------------------------------------------------------- TCF
class TcfRegionSource(RegionSource):
    """A TCF time point (classic dataset or tiled group), read as hyperslabs of its datasets."""

    kind = "tcf"

    def __init__(self, path: Path, where: str, name: str, tcf: _tcf.TcfFile, **kw: Any) -> None:
        here = f"{where}, time point {int(name) if name.isdigit() else name} (/Data/3D/{name})"
        self._name = name
        self._file: Any = None
        h5py = _tcf._h5py()
        with _tcf._open(path, here) as f, _tcf._damaged(here):
            obj = f.get(f"Data/3D/{name}")
            if isinstance(obj, h5py.Dataset):
                check_declared(obj.shape, obj.dtype, here, allow_time=False, limit_bytes=MAX_FIELD_BYTES)
                _tcf.check_filters(obj, here)
                if obj.chunks is not None:
                    _chunk_check(obj.chunks, obj.dtype.itemsize, here, "HDF5 chunk", "re-save it with smaller chunks")
                self._tiles: list[_tcf.TcfTile] | None = None
                shape, stored = obj.shape, obj.dtype
            elif isinstance(obj, h5py.Group):
                shape, self._uint8, self._ri_min, self._tiles = _tcf._tiled_plan(obj, tcf, here, MAX_FIELD_BYTES)
                for tile in self._tiles:
                    ds = obj[tile.name]
                    _tcf.check_filters(ds, f"{here}, {tile.name}")
                    if ds.chunks is not None:
                        _chunk_check(ds.chunks, ds.dtype.itemsize, f"{here}, {tile.name}", "HDF5 chunk",
                                     "re-save it with smaller chunks")
                covered = sum(int(np.prod(t.shape_zyx, dtype=np.int64)) for t in self._tiles)
                if covered < int(np.prod(shape, dtype=np.int64)) and tcf.medium_ri is None:
                    raise FileFormatError(f"{here}: {int(np.prod(shape)) - covered} voxel(s) lie in no tile and the "
                                          "file gives no medium RI (/Info/Device attribute RI) to fill them")
                stored = np.uint8 if self._uint8 else np.uint16
            else:
                raise FileFormatError(f"{here}: neither a dataset nor a group of tiles")
        super().__init__(path, here, shape, stored, **kw)

    def _group(self) -> Any:
        if self._file is None:
            h5py = _tcf._h5py()
            try:
                self._file = h5py.File(self.path, "r")
            except Exception as exc:
                raise FileFormatError(f"{self.where}: the file became unreadable ({library_reason(exc)})") from None
        return self._file[f"Data/3D/{self._name}"]

    def _read(self, box: tuple[slice, slice, slice], here: str) -> np.ndarray:
        with _tcf._damaged(here):
            obj = self._group()
            if self._tiles is None:
                raw = _tcf._read(obj, here, box)
                # floating point: RI as stored (before format 1.3); integers: RI x 10 000 (format 1.3 on)
                return np.divide(raw, np.float32(10000.0), dtype=np.float32) if raw.dtype.kind in "iu" else raw
            out = np.full(_box_shape(box),
                          np.float32(self.medium_ri if self.medium_ri is not None else 0.0), np.float32)
            for tile in self._tiles:
                # per axis: the box's first sample inside the tile, and the end of both
                lo = [s.start + -(-max(a - s.start, 0) // s.step) * s.step
                      for s, a in zip(box, tile.offset_zyx, strict=True)]
                hi = [min(s.stop, b + 1) for s, b in zip(box, tile.last_zyx, strict=True)]
                if any(a >= b for a, b in zip(lo, hi, strict=True)):
                    continue  # the tile lies outside the box: not read
                src = tuple(slice(a - o, b - o, s.step) for a, b, o, s in zip(lo, hi, tile.offset_zyx, box, strict=True))
                dst = tuple(slice((a - s.start) // s.step, (a - s.start) // s.step + len(range(a, b, s.step)))
                            for a, b, s in zip(lo, hi, box, strict=True))
                raw = _tcf._read(obj[tile.name], f"{here}, {tile.name}", src)
                view = out[dst]
                if self._uint8:
                    np.divide(raw, np.float32(1000.0), out=view, dtype=np.float32)
                    view += np.float32(self._ri_min)
                else:
                    np.divide(raw, np.float32(10000.0), out=view, dtype=np.float32)
            return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _open_tcf(path: Path, where: str, time_point: int, override: Any, scale: RIScale | None,
              options: dict[str, Any]) -> RegionSource:
    tcf = _tcf.open_tcf(path, where)
    if not 0 <= time_point < len(tcf.time_points):
        raise InputError(f"{where}: time point {time_point} asked for, the file holds {len(tcf.time_points)}")
    if scale is not None:
        log.warning("%s: a TCF file declares its own RI encoding; --ri-scale/--ri-offset are ignored for it", where)
    vs = override or (None if tcf.voxel_size_um is None else
                      check_voxel_size(tcf.voxel_size_um, where, "/Data/3D ResolutionZ/Y/X", fix=_VS_FIX))
    medium = None if tcf.medium_ri is None else check_medium_ri(
        tcf.medium_ri, where, "/Info/Device RI", fix="correct it in the file")
    return TcfRegionSource(path, where, tcf.time_points[time_point], tcf, voxel_size_um=vs, medium_ri=medium,
                           time_point=time_point, scale=None, options=options)


# --------------------------------------------------------------------------- arrays: zarr, memory map, TIFF
class ArrayRegionSource(RegionSource):
    """A source over an array-like that reads only what it is indexed with (zarr, memory map, tifffile's zarr
    view). ``layout`` has one entry per axis of the array: ``"z"``, ``"y"``, ``"x"`` take the box's
    slices, an integer is a fixed index (the time point, 0 of a singleton channel)."""

    def __init__(self, path: Path, where: str, open_array: Any, layout: tuple[int | str, ...], shape: Sequence[int],
                 stored: Any, kind: str, **kw: Any) -> None:
        self.kind = kind
        self._open_array = open_array
        self._layout = layout
        self._array: Any = None
        self._handle: Any = None
        super().__init__(path, where, shape, stored, **kw)

    def _read(self, box: tuple[slice, slice, slice], here: str) -> np.ndarray:
        if self._array is None:
            self._array, self._handle = self._open_array()
        try:
            return np.asarray(self._array[self._index(box)])
        except (InputError, MemoryError):
            raise
        except Exception as exc:
            raise FileFormatError(f"{here}: cannot read the data ({library_reason(exc)}); the file is truncated or "
                                  "corrupt") from None

    def _index(self, box: tuple[slice, slice, slice]) -> tuple[Any, ...]:
        return tuple(box["zyx".index(a)] if isinstance(a, str) else a for a in self._layout)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
        self._array = self._handle = None


def _ngff(node: Any, where: str) -> tuple[Any, list[str], list[str | None], list[float] | None]:
    """The full-resolution array of an OME-Zarr image group, its axis names and units, and its scale."""
    attrs = dict(node.attrs)
    ome = attrs.get("ome", attrs)  # NGFF 0.5 nests its metadata under "ome"
    multiscales = ome.get("multiscales") if isinstance(ome, dict) else None
    if not multiscales:
        raise FileFormatError(f"{where}: a zarr group without OME-NGFF multiscales metadata; give the path of the "
                              "image's array (e.g. FOLDER/0), or write the store as OME-Zarr")
    try:
        ms = multiscales[0]
        axes_meta = ms.get("axes") or []
        names = [a["name"] if isinstance(a, dict) else str(a) for a in axes_meta]
        units = [a.get("unit") if isinstance(a, dict) else None for a in axes_meta]
        level = ms["datasets"][0]
        array = node[level["path"]]
        scale: list[float] | None = None
        for transforms in (level.get("coordinateTransformations") or [], ms.get("coordinateTransformations") or []):
            for t in transforms:
                if t.get("type") == "scale":
                    scale = [float(a) * b for a, b in zip(t["scale"], scale or [1.0] * len(t["scale"]), strict=True)]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise FileFormatError(f"{where}: damaged OME-NGFF multiscales metadata ({library_reason(exc)}); write the "
                              "store again") from None
    if not names:
        names = ["t", "z", "y", "x"][-array.ndim:] if array.ndim <= 4 else []
    if len(names) != array.ndim or (scale is not None and len(scale) != array.ndim):
        raise FileFormatError(f"{where}: OME-NGFF metadata names {len(names)} axes and {len(scale or names)} scale "
                              f"factors for a {array.ndim}-D array; write the store again")
    return array, names, units, scale


def _open_zarr(path: Path, where: str, time_point: int, override: Any, scale: RIScale | None,
               options: dict[str, Any]) -> RegionSource:
    import zarr

    def open_node() -> Any:
        try:
            return zarr.open(str(path), mode="r")
        except Exception as exc:
            raise FileFormatError(f"{where}: not a readable zarr store ({library_reason(exc)})") from None

    node = open_node()
    if isinstance(node, zarr.Array):
        array, names, units, stated = node, ["t", "z", "y", "x"][-node.ndim:] if node.ndim <= 4 else [], [], None
    else:
        array, names, units, stated = _ngff(node, where)
    lead_names = names[:-3]
    if [n.lower() for n in names[-3:]] != ["z", "y", "x"] or len(names) != array.ndim:
        raise InputError(f"{where}: axes {names} (shape {tuple(array.shape)}) do not end in z, y, x; store the "
                         "tomogram with axes (t, c,) z, y, x")
    lead: list[int] = []
    for name, n in zip(lead_names, array.shape, strict=False):
        if name.lower() == "t":
            if not 0 <= time_point < n:
                raise InputError(f"{where}: time point {time_point} asked for, the store holds {n}")
            lead.append(time_point)
        elif n == 1:
            lead.append(0)
        else:
            raise InputError(f"{where}: axis {name!r} of size {n}: one RI channel expected; store one channel")
    shape = tuple(array.shape[-3:])
    check_declared(shape, array.dtype, where, allow_time=False, limit_bytes=MAX_FIELD_BYTES)
    chunks = getattr(array, "shards", None) or array.chunks  # a shard is what one read decodes
    _chunk_check(chunks[-3:], array.dtype.itemsize, where, "zarr chunk", "rechunk the store (smaller chunks)")
    vs = override
    if vs is None and stated is not None:
        factors = [_UNITS_UM.get(str(u).lower(), math.nan) if u else 1.0 for u in (units or [None] * len(names))[-3:]]
        unknown = [u for u, f in zip((units or [None] * 3)[-3:], factors, strict=True) if math.isnan(f)]
        if unknown:
            raise InputError(f"{where}: OME-NGFF space unit {unknown[0]!r} is not a length unit deepis-rt knows; "
                             "pass --voxel-size Z Y X (voxel_size_um=)")
        vs = check_voxel_size([s * f for s, f in zip(stated[-3:], factors, strict=True)], where,
                              "OME-NGFF scale of z, y, x", fix=_VS_FIX)

    def open_array() -> tuple[Any, None]:
        reopened = open_node()
        return (reopened if isinstance(reopened, zarr.Array) else _ngff(reopened, where)[0]), None

    return ArrayRegionSource(path, where, open_array, (*lead, "z", "y", "x"), shape, array.dtype, "ome-zarr",
                             voxel_size_um=vs, medium_ri=None, time_point=time_point, scale=scale, options=options)


def _sidecar(path: Path, where: str, override: Any) -> tuple[Any, float | None]:
    side = read_sidecar(path)
    field = f"sidecar {path.with_suffix('.json').name}:"
    vs = override
    if vs is None and side.get("voxel_size_um") is not None:
        vs = check_voxel_size(side["voxel_size_um"], where, f"{field} voxel_size_um", fix=_VS_FIX)
    medium = None if side.get("medium_ri") is None else check_medium_ri(
        side["medium_ri"], where, f"{field} medium_ri", fix="correct the sidecar, or delete the key")
    return vs, medium


def _open_npy(path: Path, where: str, time_point: int, override: Any, scale: RIScale | None,
              options: dict[str, Any]) -> RegionSource:
    with open(path, "rb") as fh:
        if fh.read(6) != b"\x93NUMPY":
            raise FileFormatError(f"{where}: does not start with the NumPy signature: not a .npy file (renamed, or "
                                  "still being written); save it with numpy.save")
        fh.seek(0)
        try:
            shape, dtype = _npy_header(fh)
        except ValueError as exc:
            raise FileFormatError(f"{where}: not a readable NumPy file ({library_reason(exc)})") from None
        offset = fh.tell()
    check_declared(shape, dtype, where, limit_bytes=MAX_FIELD_BYTES)
    _check_data_size(shape, dtype, path.stat().st_size - offset, where)
    layout: tuple[int | str, ...] = ("z", "y", "x")
    if len(shape) == 4:
        if not 0 <= time_point < shape[0]:
            raise InputError(f"{where}: time point {time_point} asked for, the file holds {shape[0]}")
        layout = (time_point, *layout)
    vs, medium = _sidecar(path, where, override)

    def open_array() -> tuple[Any, None]:
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False), None
        except Exception as exc:
            raise FileFormatError(f"{where}: cannot be memory-mapped ({library_reason(exc)})") from None

    return ArrayRegionSource(path, where, open_array, layout, shape[-3:], dtype, "npy", voxel_size_um=vs,
                             medium_ri=medium, time_point=time_point, scale=scale, options=options)


def _open_tiff(path: Path, where: str, time_point: int, override: Any, scale: RIScale | None,
               options: dict[str, Any]) -> RegionSource:
    import zarr

    tif = _tiff._open_tiff(path, where)
    try:
        _tiff._check_complete(tif, where)
        _tiff._check_declared_planes(tif, where)
        series, shape, axes = _tiff._tiff_series(tif, where)
        check_declared(shape, series.dtype, where, limit_bytes=MAX_FIELD_BYTES)
        _tiff.check_tiff_axes(axes, shape, where)
        page = series.pages[0]
        if page is not None and page.is_tiled:
            chunk = (page.tiledepth, page.tilelength, page.tilewidth)
        else:
            chunk = (1, *series.shape[-2:])  # a page (strips are not decoded apart by the zarr view)
        _chunk_check(chunk, series.dtype.itemsize, where, "TIFF page/tile", "save it as a tiled TIFF")
        stated = _tiff._tiff_voxel_size(tif)
        full_axes, full_shape = series.axes.upper(), tuple(series.shape)
        stored = series.dtype
    except InputError:
        raise
    except Exception as exc:
        raise FileFormatError(f"{where}: failed to read TIFF metadata ({library_reason(exc)})") from None
    finally:
        tif.close()
    if len(shape) == 4 and not 0 <= time_point < shape[0]:
        raise InputError(f"{where}: time point {time_point} asked for, the file holds {shape[0]}")
    vs = override
    if vs is None and stated is not None:
        vs = check_voxel_size(stated[0], where, stated[1], fix=_VS_FIX)
    # the zarr view has the series' own axes, the singleton channels and samples dropped from `axes` included
    wanted: list[int | str] = [time_point, "z", "y", "x"][-len(axes):]
    layout: list[int | str] = []
    j = 0
    for ax in full_axes:
        if j < len(axes) and ax == axes[j]:
            layout.append(wanted[j])
            j += 1
        else:
            layout.append(0)
    if j != len(axes) or [a for a in layout if isinstance(a, str)] != ["z", "y", "x"]:
        raise InputError(f"{where}: TIFF axes {full_axes!r} (shape {full_shape}) cannot be read by region; export "
                         "the tomogram as a Z stack with axes ZYX (or TZYX)")

    def open_array() -> tuple[Any, Any]:
        import tifffile

        handle = tifffile.TiffFile(path)
        try:
            return zarr.open(handle.series[0].aszarr(), mode="r"), handle
        except Exception:
            handle.close()
            raise

    return ArrayRegionSource(path, where, open_array, tuple(layout), shape[-3:], stored, "tiff", voxel_size_um=vs,
                             medium_ri=None, time_point=time_point, scale=scale, options=options)


_OPENERS = {".tcf": _open_tcf, ".h5": _open_tcf, ".hdf5": _open_tcf, ".npy": _open_npy, ".tif": _open_tiff,
            ".tiff": _open_tiff, ".zarr": _open_zarr}


def open_region_source(path: str | Path, voxel_size_um: Sequence[float] | float | None = None, *,
                       time_point: int = 0, ri_scale: float | None = None,
                       ri_offset: float | None = None) -> RegionSource:
    """Open one time point of a file for reading by region (see the module docstring).

    Parameters
    ----------
    path : path-like
        ``.tcf`` / ``.h5`` / ``.hdf5``, an OME-Zarr folder (or any zarr array folder), ``.npy``,
        ``.tif`` / ``.tiff``.
    voxel_size_um : (z, y, x) or float, optional
        Overrides what the file says (needed for files that carry none).
    time_point : int
        Which time point of a time-lapse file (0: the first; the only one of a single volume).
    ri_scale, ri_offset : float, optional
        The file stores RI as ``value x ri_scale + ri_offset`` (ignored for TCF, which declares its
        encoding), as for :func:`deepis_rt.io.read_tomogram`.

    Returns
    -------
    RegionSource
        Close it (or use it in a ``with`` block) to release the file.

    Raises
    ------
    InputError
        Missing file, unsupported type, wrong dimensions or axes, a field larger than
        :data:`MAX_FIELD_BYTES`, an implausible voxel size or medium RI, a time point the file does
        not hold.
    FileFormatError
        The file's own declarations are inconsistent or it is cut short.
    VolumeTooLargeError
        One chunk of the file (the unit its library decodes) is larger than one read may be.
    """
    path = Path(path)
    where = where_of(path)
    if not path.exists():
        raise InputError(f"{where}: no such file or folder")
    suffix = ".zarr" if path.is_dir() else path.suffix.lower()
    opener = _OPENERS.get(suffix)
    if opener is None:
        hint = (" (a .npz member cannot be read by region: save the array with numpy.save as .npy)"
                if suffix == ".npz" else "")
        raise FileFormatError(f"{where}: {suffix or 'no suffix'} cannot be read by region{hint}; use one of "
                              f"{', '.join(REGION_SUFFIXES)} (a folder is read as a zarr store)")
    if not path.is_dir() and path.stat().st_size == 0:
        raise FileFormatError(f"{where}: empty file (still being written?)")
    if isinstance(time_point, bool) or not isinstance(time_point, (int, np.integer)) or time_point < 0:
        raise InputError(f"{where}: time_point = {time_point!r}; give a time point index (0, 1, ...)")
    override = None if voxel_size_um is None else check_voxel_size(voxel_size_um, where)
    scale = RIScale.from_args(ri_scale, ri_offset, where)
    options = {"voxel_size_um": voxel_size_um, "time_point": int(time_point), "ri_scale": ri_scale,
               "ri_offset": ri_offset}
    return opener(path, where, int(time_point), override, scale, options)
