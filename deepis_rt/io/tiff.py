"""TIFF readers: OME-TIFF and ImageJ hyperstacks, axes ``ZYX`` or ``TZYX``, and their metadata.

What a TIFF declares is checked before its pixels are read: the chain of pages and the description
complete (a file cut short), the planes its description promises (ImageJ ``images`` / ``slices`` /
``frames`` / ``channels``, OME ``SizeZ`` x ``SizeT`` x ``SizeC``) present as pages, and the axes.
Voxel sizes come from OME ``PhysicalSize*`` (units converted to um) or ImageJ ``spacing`` and the
resolution tags; :mod:`deepis_rt.io.readers` checks them for plausibility.
"""

from __future__ import annotations

import functools
import html
import logging
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt.errors import FileFormatError, InputError
from deepis_rt.io.plausibility import show
from deepis_rt.io.tomogram import check_declared, library_reason, where_of

__all__ = ["check_tiff_axes", "tiff_items"]

log = logging.getLogger(__name__)

_UNIT_TO_UM = {"µm": 1.0, "\u03bcm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "\\u00B5m": 1.0, "nm": 1e-3,
               "mm": 1e3, "m": 1e6, "cm": 1e4, "inch": 25400.0, "pixel": None, "": None}
#: TIFF ResolutionUnit -> um per unit, for ImageJ files whose description names no unit (as ImageJ reads
#: them: inch or cm from the tag; "none" leaves the image uncalibrated)
_TIFF_RESOLUTION_UNIT_TO_UM = {2: 25400.0, 3: 1e4}

def _tiff_voxel_size(tif: Any) -> tuple[tuple[float, float, float], str] | None:
    """Voxel size (Z, Y, X) in um from OME ``PhysicalSize*`` or ImageJ spacing, with the field it came from."""
    if tif.is_ome and tif.ome_metadata:
        attrs, _ = _ome_pixels(tif.ome_metadata)
        if attrs:
            out = []
            for ax in "ZYX":
                val = attrs.get(f"PhysicalSize{ax}")
                if val is None:
                    return None
                unit = attrs.get(f"PhysicalSize{ax}Unit", "µm")
                factor = _UNIT_TO_UM.get(unit, None)
                if factor is None:
                    return None
                try:
                    out.append(float(val) * factor)
                except ValueError:
                    raise FileFormatError(f"{where_of(tif.filehandle.path)}: OME PhysicalSize{ax} = {show(val)} is "
                                          "not a number; correct the OME metadata, or pass --voxel-size Z Y X "
                                          "(voxel_size_um=) to override it") from None
            return tuple(out), "OME PhysicalSizeZ/Y/X"  # type: ignore[return-value]
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
            spacing = float(ij["spacing"])
        except (KeyError, ZeroDivisionError, TypeError, ValueError):
            return None
        if factor is None:
            return None
        return (spacing * factor, float(y) * factor, float(x) * factor), "ImageJ spacing / X,YResolution"
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


_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _open_tiff(path: Path, where: str) -> Any:
    import tifffile

    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise FileFormatError(f"{where}: cannot be opened ({type(exc).__name__}); check its permissions") from None
    if head not in _TIFF_SIGNATURES:
        raise FileFormatError(f"{where}: does not start with a TIFF signature: not a TIFF file (renamed, or "
                              "still being written); export the tomogram as TIFF")
    try:
        return tifffile.TiffFile(path)
    except Exception as exc:
        raise FileFormatError(f"{where}: not a readable TIFF ({library_reason(exc)}); "
                              "check that the file is complete") from None


def _ome_pixels(xml: str) -> tuple[dict[str, str], int]:
    """Attributes of the first OME ``Pixels`` element, and how many ``Image`` elements the XML holds."""
    m = re.search(r"<(?:[\w-]+:)?Pixels\b[^>]*>", xml)
    attrs = {k: html.unescape(v) for k, v in re.findall(r'(\w+)="([^"]*)"', m.group(0))} if m else {}
    return attrs, len(re.findall(r"<(?:[\w-]+:)?Image\b", xml))


def _declared_count(meta: dict[str, Any], key: str, where: str, what: str) -> int:
    val = meta.get(key, 1)
    try:
        n = int(str(val).strip())
    except ValueError:
        raise FileFormatError(f"{where}: {what} {key} = {show(val)} is not a whole number; the description is "
                              "corrupt: export the file again") from None
    if n < 1:
        raise FileFormatError(f"{where}: {what} {key} = {n} is not a positive count; the description is corrupt: "
                              "export the file again")
    return n


def _check_declared_planes(tif: Any, where: str) -> None:
    """Refuse a TIFF whose description promises other planes than the pages it holds.

    tifffile only logs such a lie and reads what is there (or zero-fills what is missing): a
    volume with fewer, or invented, planes.
    """
    fix = "the file is incomplete or its metadata is wrong: copy or export it again"
    if tif.is_ome and tif.ome_metadata:
        attrs, n_images = _ome_pixels(tif.ome_metadata)
        if attrs:
            sizes = {k: _declared_count(attrs, f"Size{k}", where, "OME") for k in "ZTC"}
            samples = max(1, int(getattr(tif.pages[0], "samplesperpixel", 1) or 1))
            declared = sizes["Z"] * sizes["T"] * max(1, sizes["C"] // samples)
            # one image: every page of the file is one of its planes; several (positions): the pages
            # tifffile found for the first one
            present = len(tif.pages) if n_images <= 1 else sum(p is not None for p in tif.series[0].pages)
            if declared != present:
                raise FileFormatError(
                    f"{where}: OME metadata declares SizeZ {sizes['Z']} x SizeT {sizes['T']} x SizeC {sizes['C']} "
                    f"= {declared} planes, the file holds {present}; {fix}")
        return
    ij = tif.imagej_metadata
    if not ij:
        return
    counts = {k: _declared_count(ij, k, where, "ImageJ") for k in ("slices", "frames", "channels")}
    product = counts["slices"] * counts["frames"] * counts["channels"]
    images = _declared_count(ij, "images", where, "ImageJ") if "images" in ij else product
    page = tif.pages[0]
    if len(tif.pages) > 1:
        present = len(tif.pages)
    else:  # one page before contiguous data (ImageJ files over 4 GiB): count the planes the file can hold
        plane = int(np.prod(page.shape)) * page.dtype.itemsize if page.dtype is not None else 0
        offsets = getattr(page, "dataoffsets", None) or (0,)
        size = tif.filehandle.size
        present = max(1, (size - int(offsets[0])) // plane) if plane else 1
        present = min(present, images)  # trailing bytes (metadata) are not planes
    if images != product or present != images:
        raise FileFormatError(
            f"{where}: ImageJ metadata declares images={images}, slices={counts['slices']}, frames={counts['frames']}, "
            f"channels={counts['channels']}, the file holds {present} plane(s); {fix}")


def check_tiff_axes(axes: str, shape: tuple[int, ...], where: str) -> None:
    """Refuse axes other than Z, Y, X or T, Z, Y, X (after :func:`_tiff_series` dropped singleton ones)."""
    # planes are Z, or unlabelled: C (how tifffile labels the planes of a 3-D array written without
    # axes), Q / I (plain multi-page TIFF); planes along T are a time-lapse of 2-D images
    if axes[-2:] != "YX" or axes[-3] not in "ZCQI" or (len(axes) == 4 and axes[0] not in "TQI"):
        raise InputError(f"{where}: TIFF axes {axes!r} (shape {shape}) are not Z, Y, X or T, Z, Y, X: the file "
                         "holds 2-D images (time points or colour samples), not a tomogram; export the RI "
                         "tomogram as a Z stack (one per time point)")


def tiff_items(path: Path, where: str) -> tuple[list[Any], tuple[tuple[float, float, float], str] | None]:
    """The time points of a TIFF as (data or reader, time_s, index) items, and its voxel size with the
    metadata field it came from (unchecked: :mod:`deepis_rt.io.readers` checks it unless overridden)."""
    tif = _open_tiff(path, where)
    try:
        _check_complete(tif, where)
        _check_declared_planes(tif, where)
        series, shape, axes = _tiff_series(tif, where)
        # a multi-position file holds one series per position; thumbnails and previews differ in shape
        alike = sum(tuple(s.shape) == tuple(series.shape) for s in tif.series[1:])
        if alike:
            log.warning("%s: holds %d series of the same shape (several positions?); only the first is read: "
                        "export one position per file to process the others", where, alike + 1)
        check_declared(shape, series.dtype, where)
        check_tiff_axes(axes, shape, where)
        vs = _tiff_voxel_size(tif)
        data = series.asarray().reshape(shape) if len(shape) == 3 else None
    except InputError:
        raise
    except Exception as exc:
        raise FileFormatError(f"{where}: failed to read TIFF data ({library_reason(exc)})") from None
    finally:
        tif.close()
    if data is not None:
        return [(data, None, None)], vs
    # a time series: each time point is read from its own pages when it is needed
    return [(functools.partial(_read_tiff_time_point, path, t, shape, where), None, t)
            for t in range(shape[0])], vs


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
        raise FileFormatError(f"{here}: failed to read TIFF data ({library_reason(exc)})") from None
    finally:
        tif.close()


