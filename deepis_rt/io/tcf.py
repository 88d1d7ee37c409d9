"""Tomocube TCF files (HDF5): both layouts, one time point and one tile at a time.

A TCF holds RI tomograms under ``/Data/3D`` (attributes ``SizeX/Y/Z``, ``ResolutionX/Y/Z`` in
um, ``TimeInterval`` in s, ``DataCount``), one child ``NNNNNN`` per time point, in one of two
layouts:

* **classic** — the child is a dataset (Z, Y, X). Floating-point data are RI as stored (format
  versions before 1.3); integer data are RI x 10 000 (uint16, format 1.3 on).
* **tiled** (current acquisition software) — the child is a group with attributes
  ``ScalarType`` (true: uint8 tiles, RI = value / 1000 + ``RIMin``; false: uint16 tiles,
  RI = value / 10 000), ``RIMin``, ``NumberOfTiles`` and, from some writers, ``DataSizeX/Y/Z``
  and ``Time``. Its datasets ``TILE_00``, ``TILE_01``, ... carry ``SamplingStep`` (only tiles
  with 1 are full resolution; the others are previews and are skipped) and
  ``DataIndexOffsetPoint{X,Y,Z}`` / ``DataIndexLastPoint{X,Y,Z}`` (0-based, inclusive). A tile
  dataset may be larger than its index range (padded edge tiles): only
  ``[0 : last - offset + 1]`` along each axis is data. Voxels covered by no tile are filled
  with the medium RI.

The medium RI is the attribute ``RI`` of ``/Info/Device`` (files written by earlier versions of
deepis-rt: ``/Data`` attribute ``MediumRI``). Per-time-point ``Time`` is used when present,
else ``TimeInterval`` x index.

Everything a time point declares (shapes, types, tile index ranges, overlaps, missing tiles)
is checked before any voxel is read; a broken time point raises
:class:`~deepis_rt.errors.FileFormatError` naming the time point and the tile. Compressed files
need ``hdf5plugin`` (``pip install 'deepis-rt[formats]'``); without it the reader says so
instead of failing inside HDF5.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt.errors import DeepisError, FileFormatError, InputError, MissingDependencyError
from deepis_rt.io.plausibility import check_time, check_times_increasing, show
from deepis_rt.io.tomogram import check_declared, library_reason, where_of

__all__ = ["TcfFile", "TcfTile", "open_tcf", "read_time_point", "tcf_items", "describe_tcf"]

log = logging.getLogger(__name__)

_TILE = re.compile(r"^TILE_(\d+)$")
_AXES = "ZYX"
#: HDF5 filters that every HDF5 build decodes without plugins
_BUILTIN_FILTERS = {1: "gzip", 2: "shuffle", 3: "fletcher32", 4: "szip", 5: "nbit", 6: "scaleoffset"}
#: registered ids of common plugin filters (https://github.com/HDFGroup/hdf5_plugins/blob/master/docs/RegisteredFilterPlugins.md)
_PLUGIN_FILTERS = {32000: "lzf", 32001: "blosc", 32004: "lz4", 32008: "bitshuffle", 32013: "zfp",
                   32015: "zstd", 32017: "sz", 32026: "blosc2", 307: "bzip2"}


def _h5py() -> Any:
    import h5py

    try:  # registers the plugin filters some TCF files are compressed with
        import hdf5plugin  # noqa: F401
    except ImportError:
        pass
    return h5py


def _attr(obj: Any, name: str) -> Any:
    """First element of a TCF attribute (stored as one-element arrays), str for bytes; None if absent."""
    if name not in obj.attrs:
        return None
    val = obj.attrs[name]
    arr = np.asarray(val)
    if arr.ndim > 0:
        if arr.size == 0:
            return None
        val = arr.ravel()[0]
    if isinstance(val, (bytes, np.bytes_)):
        return val.decode("utf-8", "replace").strip("\x00 ")
    if isinstance(val, np.generic):
        return val.item()
    return val


def _float(obj: Any, name: str) -> float | None:
    val = _attr(obj, name)
    try:
        return None if val is None else float(val)
    except (TypeError, ValueError):
        return None


def _number(obj: Any, name: str, where: str) -> float | None:
    """A numeric attribute (NaN and negative values kept, for the plausibility checks to name); None if
    absent; a :class:`FileFormatError` for one that is not a number."""
    val = _attr(obj, name)
    if val is None:
        return None
    try:
        return float(val)
    except (TypeError, ValueError):
        raise FileFormatError(f"{where}: attribute {name} = {show(val)} is not a number; the file's metadata is "
                              "corrupt: export it again from the acquisition software") from None


def _int(obj: Any, name: str, where: str) -> int | None:
    val = _attr(obj, name)
    if val is None:
        return None
    try:
        f = float(val)
    except (TypeError, ValueError):
        raise FileFormatError(f"{where}: attribute {name} = {show(val)} is not a number") from None
    if not math.isfinite(f) or f != int(f):
        raise FileFormatError(f"{where}: attribute {name} = {show(val)} is not a whole number")
    return int(f)


def _bool(obj: Any, name: str) -> bool | None:
    val = _attr(obj, name)
    if val is None:
        return None
    if isinstance(val, str):
        return val.strip().lower() in ("1", "true", "yes")
    return bool(val)


def filters_of(ds: Any) -> list[tuple[int, str]]:
    """(HDF5 filter id, name) of a dataset's filter pipeline, read from its creation properties."""
    plist = ds.id.get_create_plist()
    out = []
    for i in range(plist.get_nfilters()):
        code, _flags, _values, name = plist.get_filter(i)
        label = _BUILTIN_FILTERS.get(code) or _PLUGIN_FILTERS.get(code)
        if label is None:
            label = name.decode("utf-8", "replace").strip("\x00 ") if isinstance(name, bytes) else str(name)
            label = label or f"filter {code}"
        out.append((int(code), label))
    return out


def check_filters(ds: Any, where: str) -> None:
    """Refuse a dataset whose compression filter this installation cannot decode (before reading it)."""
    h5py = _h5py()
    for code, label in filters_of(ds):
        if not h5py.h5z.filter_avail(code):
            raise MissingDependencyError(
                f"{where}: compressed with the HDF5 filter {label!r} (id {code}), which this installation "
                "cannot decode; install the plugins with: pip install 'deepis-rt[formats]' (hdf5plugin)"
            )


def _read(ds: Any, where: str, region: tuple[slice, ...] | None = None) -> np.ndarray:
    check_filters(ds, where)
    try:
        return ds[region] if region is not None else ds[()]
    except OSError as exc:
        raise FileFormatError(f"{where}: cannot read the data ({library_reason(exc)}); the file is truncated or corrupt") from None


@dataclass(frozen=True)
class TcfTile:
    """One full-resolution tile of a tiled time point: where it goes, how much of it is data."""

    name: str
    offset_zyx: tuple[int, int, int]
    last_zyx: tuple[int, int, int]

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(b - a + 1 for a, b in zip(self.offset_zyx, self.last_zyx, strict=True))  # type: ignore[return-value]

    @property
    def target(self) -> tuple[slice, slice, slice]:
        return tuple(slice(a, b + 1) for a, b in zip(self.offset_zyx, self.last_zyx, strict=True))  # type: ignore[return-value]

    @property
    def valid(self) -> tuple[slice, slice, slice]:
        return tuple(slice(0, n) for n in self.shape_zyx)  # type: ignore[return-value]

    def overlaps(self, other: TcfTile) -> bool:
        return all(a0 <= b1 and b0 <= a1 for a0, a1, b0, b1 in
                   zip(self.offset_zyx, self.last_zyx, other.offset_zyx, other.last_zyx, strict=True))


@dataclass
class TcfFile:
    """What a TCF declares, read without touching voxels (:func:`open_tcf`)."""

    path: Path
    format_version: str | None
    time_points: list[str]
    layouts: list[str]  # "classic", "tiled" or "damaged" (unreadable metadata), per time point
    size_zyx: tuple[int, int, int] | None
    voxel_size_um: tuple[float, float, float] | None
    time_interval_s: float | None
    data_count: int | None
    medium_ri: float | None
    times_s: list[float | None] = field(default_factory=list)
    device: dict[str, Any] = field(default_factory=dict)

    @property
    def layout(self) -> str:
        kinds = set(self.layouts)
        return kinds.pop() if len(kinds) == 1 else "mixed"


def _open(path: Path, where: str) -> Any:
    h5py = _h5py()
    try:
        return h5py.File(path, "r")
    except Exception as exc:
        raise FileFormatError(f"{where}: not a readable HDF5/TCF file ({library_reason(exc)}); "
                              "check that the file is complete") from None


@contextlib.contextmanager
def _damaged(where: str) -> Iterator[None]:
    """What h5py raises on damaged metadata (RuntimeError, KeyError, ... without the file's name) as a
    :class:`FileFormatError`."""
    try:
        yield
    except DeepisError:
        raise
    except Exception as exc:
        raise FileFormatError(f"{where}: damaged HDF5 structure ({library_reason(exc)}); the file is "
                              "truncated or corrupt") from None


def _order(name: str) -> tuple[int, int | str]:
    return (0, int(name)) if name.isdigit() else (1, name)


def _device(f: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("DeviceSerial", "DeviceHost", "DeviceSoftwareVersion", "SoftwareVersion"):
        val = _attr(f, key)
        if val not in (None, ""):
            out[key] = val
    if "Info/Device" in f:
        dev = f["Info/Device"]
        for key in ("Magnification", "NA", "Wavelength", "RI", "Iteration"):
            val = _attr(dev, key)
            if val is not None:
                out[key] = val
    return out


def _medium_ri(f: Any, where: str) -> float | None:
    if "Info/Device" in f:
        ri = _number(f["Info/Device"], "RI", f"{where} /Info/Device")
        if ri is not None:
            return ri
    return _number(f["Data"], "MediumRI", f"{where} /Data") if "Data" in f else None


def open_tcf(path: str | Path, where: str | None = None) -> TcfFile:
    """Read the layout of a TCF file (no voxels).

    Raises
    ------
    FileFormatError
        Not an HDF5 file, no ``/Data/3D`` group or no time points in it.
    """
    path = Path(path)
    where = where or where_of(path)
    h5py = _h5py()
    with _open(path, where) as f, _damaged(where):
        if "Data/3D" not in f or not isinstance(f["Data/3D"], h5py.Group):
            raise FileFormatError(f"{where}: no /Data/3D group; not a Tomocube TCF file with RI tomograms")
        grp = f["Data/3D"]
        names, layouts, times = [], [], []
        for name in sorted(grp.keys(), key=_order):
            try:
                obj = grp.get(name)
                kind = "classic" if isinstance(obj, h5py.Dataset) else "tiled" if isinstance(obj, h5py.Group) else None
            except Exception:  # a damaged time point fails alone, when it is read
                kind, obj = "damaged", None
            time_s = None
            if kind in ("classic", "tiled"):
                # unreadable attributes: the time point fails alone when it is read; a Time that is not a
                # number fails the file
                with contextlib.suppress(KeyError, OSError, RuntimeError):
                    time_s = _number(obj, "Time", f"{where} /Data/3D/{name}")
            if kind is None:
                continue
            layouts.append(kind)
            names.append(name)
            times.append(time_s)
        if not names:
            raise FileFormatError(f"{where}: /Data/3D holds no time points (neither datasets nor tile groups)")
        sizes = [_int(grp, f"Size{ax}", f"{where} /Data/3D") for ax in _AXES]
        res = [_number(grp, f"Resolution{ax}", f"{where} /Data/3D") for ax in _AXES]
        version = _attr(f, "FormatVersion")
        tcf = TcfFile(
            path=path,
            format_version=None if version is None else str(version),
            time_points=names,
            layouts=layouts,
            size_zyx=tuple(sizes) if all(s is not None for s in sizes) else None,  # type: ignore[arg-type]
            # as stated (checked by the readers unless the caller overrides it)
            voxel_size_um=tuple(res) if all(r is not None for r in res) else None,  # type: ignore[arg-type]
            time_interval_s=_number(grp, "TimeInterval", f"{where} /Data/3D"),
            data_count=_int(grp, "DataCount", f"{where} /Data/3D"),
            medium_ri=_medium_ri(f, where),
            times_s=times,
            device=_device(f),
        )
    if tcf.data_count is not None and tcf.data_count != len(names):
        log.warning("%s: /Data/3D declares DataCount %d but holds %d time point(s); reading those present",
                    where, tcf.data_count, len(names))
    return tcf


# --------------------------------------------------------------------------- one time point
def _tiled_plan(grp: Any, tcf: TcfFile, here: str,
                limit_bytes: int | None = None) -> tuple[tuple[int, int, int], bool, float | None, list[TcfTile]]:
    """Check a tiled time point's declarations; returns (shape, uint8?, RIMin, full-resolution tiles).

    ``limit_bytes``: the largest volume accepted (:func:`~deepis_rt.io.tomogram.check_declared`).
    """
    h5py = _h5py()
    scalar_type = _bool(grp, "ScalarType")
    if scalar_type is None:
        raise FileFormatError(f"{here}: tile group without a ScalarType attribute (uint8 or uint16 tiles?)")
    ri_min = _float(grp, "RIMin")
    if scalar_type and ri_min is None:
        raise FileFormatError(f"{here}: uint8 tiles (ScalarType true) need the RIMin attribute, which is missing")
    declared = [_int(grp, f"DataSize{ax}", here) for ax in _AXES]
    if all(d is not None for d in declared):
        shape = tuple(declared)
        if tcf.size_zyx is not None and shape != tcf.size_zyx:
            raise FileFormatError(f"{here}: DataSizeZ/Y/X {shape} differ from /Data/3D SizeZ/Y/X {tcf.size_zyx}")
    elif tcf.size_zyx is not None:
        shape = tcf.size_zyx
    else:
        raise FileFormatError(f"{here}: the volume size is declared nowhere (/Data/3D SizeX/Y/Z or DataSizeX/Y/Z)")
    dtype = np.dtype(np.uint8 if scalar_type else np.uint16)
    check_declared(shape, dtype, here, allow_time=False, limit_bytes=limit_bytes)

    numbered: dict[int, str] = {}
    for key in grp.keys():
        m = _TILE.match(key)
        if m:
            numbered[int(m.group(1))] = key
    n_declared = _int(grp, "NumberOfTiles", here)
    if n_declared is not None:
        missing = [i for i in range(n_declared) if i not in numbered]
        if missing:
            raise FileFormatError(f"{here}: tile TILE_{missing[0]:02d} is missing (NumberOfTiles = {n_declared}, "
                                  f"found {len(numbered)}); the file is incomplete")
        extra = [numbered[i] for i in sorted(numbered) if i >= n_declared]
        if extra:
            raise FileFormatError(f"{here}: tile {extra[0]} beyond NumberOfTiles = {n_declared}; the layout is inconsistent")
    tiles: list[TcfTile] = []
    for i in sorted(numbered):
        name = numbered[i]
        where_tile = f"{here}, {name}"
        ds = grp.get(name)
        if not isinstance(ds, h5py.Dataset):
            raise FileFormatError(f"{where_tile}: not a dataset")
        step = _int(ds, "SamplingStep", where_tile)
        if step is None:
            raise FileFormatError(f"{where_tile}: no SamplingStep attribute; cannot tell a full-resolution tile "
                                  "from a preview")
        if step != 1:
            continue  # a preview at reduced sampling
        if ds.dtype != dtype:
            raise FileFormatError(f"{where_tile}: element type {ds.dtype}, but ScalarType = {scalar_type} "
                                  f"declares {dtype} tiles")
        if ds.ndim != 3:
            raise FileFormatError(f"{where_tile}: {ds.ndim}-D tile, expected (Z, Y, X)")
        offset, last = [], []
        for ax in _AXES:
            a = _int(ds, f"DataIndexOffsetPoint{ax}", where_tile)
            b = _int(ds, f"DataIndexLastPoint{ax}", where_tile)
            if a is None or b is None:
                raise FileFormatError(f"{where_tile}: DataIndexOffsetPoint{ax} / DataIndexLastPoint{ax} missing")
            offset.append(a)
            last.append(b)
        tile = TcfTile(name, tuple(offset), tuple(last))  # type: ignore[arg-type]
        for k, ax in enumerate(_AXES):
            if not 0 <= tile.offset_zyx[k] <= tile.last_zyx[k] < shape[k]:
                raise FileFormatError(
                    f"{where_tile}: index range {ax} {tile.offset_zyx[k]}..{tile.last_zyx[k]} lies outside the "
                    f"volume (size {shape[k]} along {ax}); the file is corrupt"
                )
            if ds.shape[k] < tile.shape_zyx[k]:
                raise FileFormatError(
                    f"{where_tile}: holds {ds.shape[k]} voxels along {ax} but its index range needs "
                    f"{tile.shape_zyx[k]}; the file is corrupt"
                )
        for other in tiles:
            if tile.overlaps(other):
                raise FileFormatError(f"{where_tile}: overlaps {other.name} (index ranges {tile.offset_zyx}.."
                                      f"{tile.last_zyx} and {other.offset_zyx}..{other.last_zyx}); the file is corrupt")
        tiles.append(tile)
    if not tiles:
        raise FileFormatError(f"{here}: no full-resolution tile (SamplingStep 1) among {len(numbered)} tile(s)")
    return shape, bool(scalar_type), ri_min, tiles  # type: ignore[return-value]


def read_time_point(path: str | Path, name: str, where: str | None = None, decode: bool = True,
                    tcf: TcfFile | None = None) -> np.ndarray:
    """One time point of ``/Data/3D`` (the file is opened for this read and closed after).

    Parameters
    ----------
    path : path-like
        The TCF file.
    name : str
        The time point (``"000000"``).
    where : str, optional
        Prefix of error messages.
    decode : bool
        Return RI (float32): classic integers / 10 000, tiles by ScalarType, gaps filled with
        the medium RI. False: the stored values (tiles stitched, gaps 0).
    tcf : TcfFile, optional
        The file's layout from :func:`open_tcf` (read again when not given).

    Raises
    ------
    FileFormatError
        The time point is missing or inconsistent (named with the tile at fault), or the file
        is truncated.
    MissingDependencyError
        A compression filter that this installation cannot decode.
    """
    path = Path(path)
    where = where or where_of(path)
    here = f"{where}, time point {int(name) if name.isdigit() else name} (/Data/3D/{name})"
    h5py = _h5py()
    if tcf is None:
        tcf = open_tcf(path, where)
    try:
        f = h5py.File(path, "r")
    except Exception as exc:
        raise FileFormatError(f"{here}: the file became unreadable ({library_reason(exc)})") from None
    with f, _damaged(here):
        obj = f.get(f"Data/3D/{name}")
        if obj is None:
            raise FileFormatError(f"{here}: time point disappeared while the file was being read")
        if isinstance(obj, h5py.Dataset):
            check_declared(obj.shape, obj.dtype, here, allow_time=False)
            raw = _read(obj, here)
            if not decode:
                return raw
            # floating point: RI as stored (before format 1.3); integers: RI x 10 000 (format 1.3 on)
            return np.divide(raw, np.float32(10000.0), dtype=np.float32) if raw.dtype.kind in "iu" else raw
        shape, is_uint8, ri_min, tiles = _tiled_plan(obj, tcf, here)
        covered = sum(int(np.prod(t.shape_zyx)) for t in tiles)
        gaps = covered < int(np.prod(shape))
        if decode:
            if gaps and tcf.medium_ri is None:
                raise FileFormatError(f"{here}: {int(np.prod(shape)) - covered} voxel(s) lie in no tile and the file "
                                      "gives no medium RI (/Info/Device attribute RI) to fill them")
            out = np.full(shape, np.float32(tcf.medium_ri if gaps else 0.0), np.float32)
        else:
            out = np.zeros(shape, np.uint8 if is_uint8 else np.uint16)
        for tile in tiles:
            raw = _read(obj[tile.name], f"{here}, {tile.name}", tile.valid)
            view = out[tile.target]
            if not decode:
                view[...] = raw
            elif is_uint8:
                np.divide(raw, np.float32(1000.0), out=view, dtype=np.float32)
                view += np.float32(ri_min)
            else:
                np.divide(raw, np.float32(10000.0), out=view, dtype=np.float32)
        return out


def tcf_items(path: Path, where: str, decode: bool = True) -> tuple[list[tuple[Callable[[], np.ndarray], float | None, int | None]], tuple[Any, str] | None, tuple[Any, str] | None]:
    """The time points of a TCF as (reader, time_s, index) items for :mod:`deepis_rt.io.readers`, and the
    voxel size and medium RI it states with the attribute each came from.

    Times are checked here: each finite and non-negative, increasing along the series.
    """
    tcf = open_tcf(path, where)
    items, times = [], []
    multi = len(tcf.time_points) > 1
    fix = "correct the time stamps in the acquisition software's export"
    interval = tcf.time_interval_s
    if interval is not None and multi and any(t is None for t in tcf.times_s):
        interval = check_time(interval, where, "/Data/3D TimeInterval", fix=fix)
        if interval == 0:
            raise InputError(f"{where}: /Data/3D TimeInterval = 0 s gives every time point the same time; {fix}")
    for i, name in enumerate(tcf.time_points):
        t = tcf.times_s[i]
        if t is not None:
            t = check_time(t, where, f"/Data/3D/{name} Time", fix=fix)
        elif interval is not None:
            t = check_time(interval * i, where, "/Data/3D TimeInterval x index", fix=fix)
        times.append(t)
        items.append((functools.partial(read_time_point, path, name, where, decode, tcf), t, i if multi else None))
    check_times_increasing(times, where, "Time")
    vs = None if tcf.voxel_size_um is None else (tcf.voxel_size_um, "/Data/3D ResolutionZ/Y/X")
    medium = None if tcf.medium_ri is None else (tcf.medium_ri, "/Info/Device RI")
    return items, vs, medium


# --------------------------------------------------------------------------- info
def _encoding(obj: Any, h5py: Any) -> str:
    if isinstance(obj, h5py.Dataset):
        return "RI as stored (floating point)" if obj.dtype.kind == "f" else f"RI x 10 000 ({obj.dtype})"
    scalar = _bool(obj, "ScalarType")
    if scalar:
        return f"uint8 tiles, RI = value / 1000 + RIMin (RIMin {_float(obj, 'RIMin')})"
    return "uint16 tiles, RI = value / 10 000" if scalar is not None else "tiles (ScalarType missing)"


def describe_tcf(path: str | Path) -> dict[str, Any]:
    """What ``deepis-rt info FILE.TCF`` prints: layout, version, device, time points, size, compression.

    Reads attributes and dataset properties only, never voxels.
    """
    path = Path(path)
    where = f"info | {path.name}"
    tcf = open_tcf(path, where)
    h5py = _h5py()
    compression: set[str] = set()
    with _open(path, where) as f, _damaged(where):
        grp = f["Data/3D"]

        def visit(_name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                compression.update(label for _code, label in filters_of(obj) if label not in ("shuffle", "fletcher32"))

        grp.visititems(visit)
        first = grp[tcf.time_points[0]]
        encoding = _encoding(first, h5py)
        tiles: dict[str, Any] = {}
        if isinstance(first, h5py.Group):
            names = [k for k in first.keys() if _TILE.match(k)]
            steps = [_int(first[k], "SamplingStep", where) for k in names]
            tiles = {"per_time_point": len(names), "full_resolution": sum(1 for s in steps if s == 1),
                     "previews": sum(1 for s in steps if s not in (1, None))}
    times = [t for t in tcf.times_s if t is not None]
    desc: dict[str, Any] = {
        "kind": "tcf",
        "path": str(path),
        "file_size_bytes": path.stat().st_size,
        "layout": tcf.layout,
        "format_version": tcf.format_version,
        "encoding": encoding,
        "device": tcf.device,
        "time_points": len(tcf.time_points),
        "data_count": tcf.data_count,
        "size_zyx": None if tcf.size_zyx is None else list(tcf.size_zyx),
        "voxel_size_um": None if tcf.voxel_size_um is None else list(tcf.voxel_size_um),
        "time_interval_s": tcf.time_interval_s,
        "time_s": [min(times), max(times)] if times else None,
        "medium_ri": tcf.medium_ri,
        "compression": sorted(compression) or "none",
    }
    if tiles:
        desc["tiles"] = tiles
    return desc

