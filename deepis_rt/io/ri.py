"""From stored values to refractive index, and the check that a volume can be RI at all.

Every tomogram passes here before the network sees it (the readers, and
:meth:`deepis_rt.runtime.Segmenter.preprocess` for arrays given in memory):

* an explicit scaling (``--ri-scale S --ri-offset O``, ``ri_scale=`` / ``ri_offset=`` in the
  API) means RI = value x S + O, for any element type;
* otherwise integers whose range fits the RI x 10 000 convention (10 000-20 000, how
  Tomocube's TIFF export and TCF from format 1.3 store RI) are divided by 10 000, logged once
  per source; any other integer range is refused (the scaling must be stated);
* floating-point values are RI as stored.

After decoding, values outside :data:`RI_RANGE` are refused with
:class:`~deepis_rt.errors.ImplausibleRIError`, naming the source, the observed range and the
fix: a volume in the wrong units never reaches the network silently. The check costs one
min/max pass over the volume.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from deepis_rt.errors import ConfigError, ImplausibleRIError, InputDtypeError

__all__ = ["RI_RANGE", "RI_X10000_RANGE", "RIScale", "RIDecoder", "value_range", "check_ri_range"]

log = logging.getLogger(__name__)

#: Refractive indices a tomogram may hold (inclusive): vacuum 1.0 to beyond any biological sample.
RI_RANGE: tuple[float, float] = (1.0, 2.0)

#: Integer range decoded as RI x 10 000 without an explicit scaling (RI 1.0-2.0).
RI_X10000_RANGE: tuple[int, int] = (10_000, 20_000)

_FIX = ("pass --ri-scale S --ri-offset O (ri_scale=/ri_offset= in the Python API) so that "
        "RI = value x S + O")


@dataclass(frozen=True)
class RIScale:
    """An explicit linear mapping from stored values to refractive index: RI = value x scale + offset."""

    scale: float
    offset: float = 0.0

    @classmethod
    def from_args(cls, ri_scale: float | None, ri_offset: float | None, where: str = "ri") -> RIScale | None:
        """The mapping given by ``ri_scale`` / ``ri_offset`` (None when neither is given).

        An offset alone means a scale of 1.

        Raises
        ------
        ConfigError
            A non-finite value or a zero scale.
        """
        if ri_scale is None and ri_offset is None:
            return None
        scale = 1.0 if ri_scale is None else float(ri_scale)
        offset = 0.0 if ri_offset is None else float(ri_offset)
        if not (math.isfinite(scale) and math.isfinite(offset)) or scale == 0:
            raise ConfigError(f"{where}: ri_scale must be a finite non-zero number and ri_offset finite "
                              f"(got scale {ri_scale!r}, offset {ri_offset!r})")
        return cls(scale, offset)

    def to_dict(self) -> dict[str, float]:
        return {"ri_scale": self.scale, "ri_offset": self.offset}


def value_range(volume: np.ndarray) -> tuple[float, float]:
    """(min, max) of a volume as floats (NaN when the volume holds NaN)."""
    if volume.size == 0:
        return (math.nan, math.nan)
    return float(np.min(volume)), float(np.max(volume))


def _fmt(v: float) -> str:
    return f"{v:,.6g}".replace(",", " ") if abs(v) >= 1000 else f"{v:.6g}"


def _span(lo: float, hi: float) -> str:
    return f"{_fmt(lo)} .. {_fmt(hi)}"


def _in_ri_range(lo: float, hi: float) -> bool:
    # written so that NaN fails
    return lo >= RI_RANGE[0] and hi <= RI_RANGE[1]


def _hint_for_floats(lo: float, hi: float) -> str:
    a, b = RI_X10000_RANGE
    if lo >= a and hi <= b:
        return "they look like RI x 10 000 stored as floating point: pass --ri-scale 0.0001"
    if lo >= 0 and RI_RANGE[1] < hi <= 255:
        return ("they look like 8-bit display values, which carry no RI: export RI from the reconstruction "
                "software, or " + _FIX + " if the mapping is known")
    if lo >= 0 and 255 < hi <= 65535:
        return "they look like camera or display counts: " + _FIX + " if the mapping is known"
    if lo < RI_RANGE[0] and hi <= RI_RANGE[1]:
        return ("values below 1.0 are no RI (zeros outside the reconstructed region? RI minus the medium RI?): "
                "fill such voxels with the medium RI, or " + _FIX)
    return _FIX + " if the values are RI in other units"


def check_ri_range(ri: np.ndarray, where: str, explicit: RIScale | None = None,
                   lo_hi: tuple[float, float] | None = None) -> None:
    """Refuse a decoded volume whose values cannot be refractive indices.

    Parameters
    ----------
    ri : numpy.ndarray
        The volume after decoding.
    where : str
        Prefix of the error message (``"io | frame_0001.tif"``).
    explicit : RIScale, optional
        The explicit scaling that produced ``ri`` (named in the message).
    lo_hi : (float, float), optional
        ``value_range(ri)`` when already known.

    Raises
    ------
    ImplausibleRIError
        Values outside :data:`RI_RANGE`.
    """
    lo, hi = value_range(ri) if lo_hi is None else lo_hi
    if _in_ri_range(lo, hi):
        return
    what = f"{where}: values span {_span(lo, hi)}, which cannot be refractive indices (about {RI_RANGE[0]}-{RI_RANGE[1]})"
    if explicit is not None:
        raise ImplausibleRIError(f"{what} after RI = value x {explicit.scale:g} + {explicit.offset:g}; "
                                 "check --ri-scale / --ri-offset (ri_scale= / ri_offset=)")
    raise ImplausibleRIError(f"{what}; {_hint_for_floats(lo, hi)}")


class RIDecoder:
    """Turns the values of one source (a file, a Segmenter's callers) into checked RI.

    Parameters
    ----------
    source : str
        Named in the log line that reports RI x 10 000 decoding (logged once per decoder).
    scale : RIScale, optional
        Explicit mapping applied to every volume of this source (calls may override it).
    """

    def __init__(self, source: str, scale: RIScale | None = None) -> None:
        self.source = source
        self.scale = scale
        self._announced = False

    def __call__(self, values: np.ndarray, where: str, scale: RIScale | None = None) -> np.ndarray:
        """RI of ``values`` (float32 for decoded integers; floats are returned as given).

        Raises
        ------
        InputDtypeError
            Non-numeric values.
        ImplausibleRIError
            An integer range outside the RI x 10 000 convention without an explicit scaling, or
            values outside :data:`RI_RANGE` after decoding.
        """
        scale = scale if scale is not None else self.scale
        values = np.asarray(values)
        kind = values.dtype.kind
        if kind not in "iuf":
            raise InputDtypeError(f"{where}: element type {values.dtype} holds no refractive index; expected "
                                  "float RI or integers")
        if scale is not None:
            ri = np.multiply(values, np.float32(scale.scale), dtype=np.float32)
            if scale.offset:
                ri += np.float32(scale.offset)
            check_ri_range(ri, where, scale)
            return ri
        lo, hi = value_range(values)
        if kind in "iu":
            a, b = RI_X10000_RANGE
            if not (lo >= a and hi <= b):
                raise ImplausibleRIError(
                    f"{where}: integer values {_span(lo, hi)} do not follow the RI x 10 000 convention "
                    f"({_fmt(a)}-{_fmt(b)} for RI {RI_RANGE[0]}-{RI_RANGE[1]}) and carry no unit; {_FIX}"
                )
            if not self._announced:
                self._announced = True
                log.info("%s: integer values %s read as RI x 10 000 (RI %.4f .. %.4f)", self.source,
                         _span(lo, hi), lo / 1e4, hi / 1e4)
            return np.divide(values, np.float32(10000.0), dtype=np.float32)
        check_ri_range(values, where, lo_hi=(lo, hi))
        return values
