"""Physical plausibility of the metadata that comes with a tomogram: voxel size, time, medium RI.

Every voxel size and time that enters deepis-rt passes here, whatever it comes from: a sidecar
JSON, OME-TIFF ``PhysicalSize*``, ImageJ spacing and resolution, TCF ``Resolution*`` / ``Time`` /
``TimeInterval``, a CLI option (``--voxel-size``, ``--frame-interval``) or an API argument
(``segment(voxel_size_um=...)``, ``Stream.submit(time_s=...)``). A value an optical microscope
cannot produce is refused with an :class:`~deepis_rt.errors.InputError` (or a
:class:`~deepis_rt.errors.ConfigError` for options) that names the source, the field, the value
and the fix, before any voxel is resampled: a voxel size in the wrong unit would otherwise ask for
a petabyte array, or shrink the volume to a single voxel and report no cells.

Voxel size: :data:`VOXEL_SIZE_RANGE_UM`, per axis. The lower end (20 nm) is below the sampling
any far-field optical tomogram needs: holotomography resolves about 0.1-0.2 um laterally and
0.3-0.8 um axially, and even super-resolved optical stacks are sampled at 20 nm or more. The upper
end (5 um) is a z step coarse enough to miss a whole T cell's synapse (cells are about 8-15 um
across) and a low-magnification pixel; nothing finer than that is a cell-scale tomogram. A value
that becomes plausible when read as nanometres or millimetres gets that hint with the converted
numbers.

Times: finite, non-negative seconds; within one file's time series, increasing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from deepis_rt.errors import ConfigError, InputError

__all__ = [
    "VOXEL_SIZE_RANGE_UM",
    "MEDIUM_RI_RANGE",
    "check_voxel_size",
    "check_time",
    "check_times_increasing",
    "check_medium_ri",
    "config_voxel_size",
    "show",
]

#: Voxel edge lengths (um, inclusive) an optical microscope can produce for a cell-scale tomogram.
VOXEL_SIZE_RANGE_UM: tuple[float, float] = (0.02, 5.0)

#: Refractive index of a medium: the range every RI value must lie in (:data:`deepis_rt.io.ri.RI_RANGE`).
MEDIUM_RI_RANGE: tuple[float, float] = (1.0, 2.0)

_VOXEL_FIX = "give the voxel size (Z, Y, X) in micrometres"


def show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: a refusal names a value without copying a file into a log."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number(value: Any) -> float | None:
    """``value`` as a float, or None when it is not a number (strings, booleans, lists, None)."""
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    if isinstance(value, (bool, np.bool_, str, bytes)) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _unit_hint(values: Sequence[float]) -> str:
    """A hint when every axis out of range becomes plausible in another unit, with the corrected numbers."""
    lo, hi = VOXEL_SIZE_RANGE_UM
    bad = [not lo <= v <= hi for v in values]
    for unit, factor in (("nanometres", 1e-3), ("millimetres", 1e3)):
        fixed = [v * factor if b else v for v, b in zip(values, bad, strict=True)]
        if all(lo <= f <= hi for f in fixed):
            nums = ", ".join(f"{f:.6g}" for f in fixed)
            return f"; the values out of range look like {unit}: in micrometres that is [{nums}]"
    return ""


def check_voxel_size(value: Any, where: str, field: str = "voxel_size_um", fix: str = _VOXEL_FIX,
                     error: type[Exception] = InputError) -> tuple[float, float, float]:
    """A voxel size (Z, Y, X) in um that an optical microscope can produce; one number means isotropic.

    Parameters
    ----------
    value : sequence of 3 numbers or a number
        The voxel size as given.
    where : str
        Prefix of the message (e.g. ``"io | frame_0001.npy"``).
    field : str
        Where the value came from (e.g. ``"sidecar frame_0001.json: voxel_size_um"``).
    fix : str
        What to do about it, appended to the message.
    error : exception type
        :class:`InputError` for files and arrays, :class:`ConfigError` for options.

    Raises
    ------
    InputError or ConfigError
        Not three numbers, not finite and positive, or outside :data:`VOXEL_SIZE_RANGE_UM`.
    """
    raw = value
    if _number(value) is not None or isinstance(value, (str, bytes)):
        value = (value,) * 3
    try:
        items = list(value)
    except TypeError:
        items = []
    numbers = [_number(v) for v in items]
    if len(items) != 3 or any(n is None for n in numbers):
        raise error(f"{where}: {field} = {show(raw)} is not three numbers (Z, Y, X); {fix}")
    vs = tuple(float(n) for n in numbers)  # type: ignore[arg-type]
    if not all(math.isfinite(v) and v > 0 for v in vs):
        raise error(f"{where}: {field} = {show(raw)}: a voxel size must be three positive numbers (Z, Y, X) in um; "
                    f"{fix}")
    lo, hi = VOXEL_SIZE_RANGE_UM
    bad = [ax for ax, v in zip("ZYX", vs, strict=True) if not lo <= v <= hi]
    if bad:
        shown = ", ".join(f"{v:.6g}" for v in vs)
        raise error(f"{where}: {field} = [{shown}] um is outside what an optical microscope produces "
                    f"({lo:g}-{hi:g} um per axis; axis {', '.join(bad)}){_unit_hint(vs)}; {fix}")
    return vs  # type: ignore[return-value]


def check_time(value: Any, where: str, field: str = "time_s",
               fix: str = "give the acquisition time in seconds from the start of the time-lapse",
               error: type[Exception] = InputError) -> float:
    """A time in seconds: a finite, non-negative number.

    Raises
    ------
    InputError or ConfigError
        Not a number (a string, a boolean, a list), NaN or infinite, or negative.
    """
    t = _number(value)
    if t is None:
        raise error(f"{where}: {field} = {show(value)} is not a number of seconds; {fix}")
    if not math.isfinite(t):
        raise error(f"{where}: {field} = {show(value)} is not a finite number of seconds; {fix}")
    if t < 0:
        raise error(f"{where}: {field} = {t:g} s is negative; {fix}")
    return t


def check_times_increasing(times: Sequence[float | None], where: str, field: str = "time") -> None:
    """Refuse a time series whose known times do not increase from one time point to the next.

    Raises
    ------
    InputError
        Naming the first pair of time points out of order.
    """
    last: tuple[int, float] | None = None
    for i, t in enumerate(times):
        if t is None:
            continue
        if last is not None and not t > last[1]:
            raise InputError(f"{where}: {field} of time point {i} ({t:g} s) is not after that of time point "
                             f"{last[0]} ({last[1]:g} s); the time stamps of this series are out of order: "
                             "correct them in the acquisition software's export, or export the time points "
                             "as separate files")
        last = (i, t)


def check_medium_ri(value: Any, where: str, field: str = "medium_ri",
                    fix: str = "give the refractive index of the medium (about 1.33-1.34 for culture medium)",
                    error: type[Exception] = InputError) -> float:
    """A medium refractive index within :data:`MEDIUM_RI_RANGE`."""
    n = _number(value)
    lo, hi = MEDIUM_RI_RANGE
    if n is None or not math.isfinite(n) or not lo <= n <= hi:
        hint = "; it looks like RI x 10 000" if n is not None and 1e4 * lo <= n <= 1e4 * hi else ""
        raise error(f"{where}: {field} = {show(value)} is not a refractive index of a medium "
                    f"({lo:g}-{hi:g}){hint}; {fix}")
    return n


def config_voxel_size(value: Any, where: str) -> tuple[float, float, float]:
    """:func:`check_voxel_size` for an option (raises :class:`ConfigError`)."""
    return check_voxel_size(value, where, field="voxel_size_um", error=ConfigError,
                            fix="give --voxel-size Z Y X (voxel_size_um=) in micrometres")
