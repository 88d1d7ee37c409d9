"""The :class:`Tomogram` record and the checks every reader applies.

Readers check what a file *declares* (dimensions, dtype, size) before reading
any voxel, and reject NaN / Inf after reading, so that a bad file costs
neither memory nor a confusing error further down the pipeline.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepis_rt.errors import InputDtypeError, InputError, NonFiniteInputError, VolumeTooLargeError
from deepis_rt.io.plausibility import check_voxel_size

__all__ = [
    "Tomogram",
    "MAX_VOLUME_BYTES",
    "check_declared",
    "check_values",
    "normalize_voxel_size",
    "library_reason",
]

log = logging.getLogger(__name__)

#: Largest volume a reader accepts, counted as float32 voxels (2 GiB: 512 x 1024 x 1024).
#: Larger declared sizes are refused before anything is read.
MAX_VOLUME_BYTES: int = 2 * 1024**3


@dataclass
class Tomogram:
    """One refractive-index volume and what is known about it.

    Attributes
    ----------
    ri : numpy.ndarray
        Refractive index, float32, axes (Z, Y, X).
    voxel_size_um : tuple of float or None
        Voxel size (Z, Y, X) in micrometres; None when the file does not say.
    source : str
        Where the volume came from (file path, with ``#t`` for a time point).
    time_s : float or None
        Acquisition time in seconds, when the file carries it.
    frame_index : int or None
        Time-point index inside a multi-time-point file, else None.
    medium_ri : float or None
        Refractive index of the medium, when the file carries it.
    """

    ri: np.ndarray
    voxel_size_um: tuple[float, float, float] | None
    source: str
    time_s: float | None = None
    frame_index: int | None = None
    medium_ri: float | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.ri.shape)  # type: ignore[return-value]


def normalize_voxel_size(value: Sequence[float] | float | None, where: str,
                         field: str = "voxel_size_um") -> tuple[float, float, float] | None:
    """A voxel size (Z, Y, X) in um, or None; a single number means isotropic.

    Checked for physical plausibility by :func:`deepis_rt.io.plausibility.check_voxel_size`.
    """
    if value is None:
        return None
    return check_voxel_size(value, where, field)


def check_declared(shape: Sequence[int], dtype: np.dtype | str, where: str, allow_time: bool = True,
                   limit_bytes: int | None = None) -> None:
    """Check a declared shape and dtype before any voxel is read.

    Parameters
    ----------
    shape : sequence of int
        Shape as declared by the file header, (Z, Y, X) or (T, Z, Y, X).
    dtype : numpy dtype
        Declared element type.
    where : str
        Prefix of error messages, e.g. ``"io | frame_0001.tif"``.
    allow_time : bool
        Whether a leading time axis (4-D) is acceptable.
    limit_bytes : int, optional
        Largest volume accepted, as float32 bytes; default :data:`MAX_VOLUME_BYTES` (a volume read
        whole). Sources read region by region (:mod:`deepis_rt.io.regions`) pass their own.

    Raises
    ------
    InputError
        Wrong number of dimensions, non-numeric type, empty or too large.
    """
    shape = tuple(int(s) for s in shape)
    ndims = (3, 4) if allow_time else (3,)
    if len(shape) not in ndims:
        hint = "a 3-D volume (Z, Y, X)" + (" or a time series (T, Z, Y, X)" if allow_time else "")
        raise InputError(f"{where}: {len(shape)}-D data of shape {shape}, expected {hint}; give one tomogram per file")
    dt = np.dtype(dtype)
    if dt.kind not in "biuf":
        raise InputDtypeError(f"{where}: element type {dt} is not numeric; expected float32 refractive index or integers")
    if any(s < 1 for s in shape):
        raise InputError(f"{where}: empty volume of shape {shape}")
    if any(s < 2 for s in shape[-3:]):
        raise InputError(f"{where}: shape {shape} has a spatial axis of size 1; expected a 3-D volume (Z, Y, X)")
    volume_bytes = int(np.prod(shape[-3:], dtype=np.int64)) * 4
    limit = MAX_VOLUME_BYTES if limit_bytes is None else limit_bytes
    if volume_bytes > limit:
        raise VolumeTooLargeError(
            f"{where}: declared volume {shape[-3:]} is {volume_bytes / 1024**3:.1f} GiB as float32, above the "
            f"{limit / 1024**3:.0f} GiB limit per volume; crop or bin it first"
        )


def check_values(ri: np.ndarray, where: str) -> np.ndarray:
    """Return ``ri`` as C-contiguous float32, refusing NaN or Inf."""
    ri = np.ascontiguousarray(ri, dtype=np.float32)
    if not np.isfinite(ri).all():
        bad = int(np.size(ri) - np.count_nonzero(np.isfinite(ri)))
        raise NonFiniteInputError(f"{where}: {bad} voxel(s) are NaN or Inf; fix or mask the reconstruction before segmenting")
    return ri


# a bytes literal (b'...' / b"..."), as libraries quote the first bytes of a file they cannot parse
_BYTES_LITERAL = re.compile(r"b'(?:[^'\\]|\\.)*'" + r'|b"(?:[^"\\]|\\.)*"')


def library_reason(exc: BaseException, limit: int = 160) -> str:
    """``"Type: message"`` of a library's exception, safe to write into tables and logs.

    Parsers quote what they could not parse (tifffile: ``header=b'root'``; NumPy: ``got b'...'``);
    for a file that is not what its name says, that is the content of an arbitrary file. Bytes
    literals are replaced by ``<bytes>``, control characters removed, and the text is cut to ``limit``.
    """
    text = _BYTES_LITERAL.sub("<bytes>", str(exc))
    text = "".join(c if c.isprintable() else " " for c in text).strip()
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def where_of(path: str | Path) -> str:
    return f"io | {Path(path).name}"
