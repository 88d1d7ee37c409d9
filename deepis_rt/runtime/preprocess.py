"""Input checks, RI normalisation and resampling between the input grid and the model's grid."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from deepis_rt.core.meta import MEDIUM_RI, RI_SCALE
from deepis_rt.core.resample import resample
from deepis_rt.errors import InputDtypeError, InputError, NonFiniteInputError, ShapeError, VolumeTooLargeError
from deepis_rt.io.plausibility import check_voxel_size

__all__ = [
    "MAX_VOXELS",
    "Normalization",
    "validate_volume",
    "validate_voxel_size",
    "model_grid_shape",
    "resample",
    "needs_resampling",
    "frame_working_bytes",
    "default_frame_budget_bytes",
    "check_frame_memory",
]

log = logging.getLogger(__name__)

#: Volumes with more voxels than this are refused (2**34 voxels = 64 GiB as float32).
MAX_VOXELS = 2**34

#: Checks run on slabs of this many voxels, so that checking a huge volume allocates little.
_CHECK_CHUNK_VOXELS = 1 << 24


@dataclass(frozen=True)
class Normalization:
    """``x = (ri - offset) / scale``, as stored in the checkpoint's ``meta["ri_normalization"]``."""

    offset: float = MEDIUM_RI
    scale: float = RI_SCALE

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Normalization:
        norm = meta.get("ri_normalization") or {}
        offset, scale = float(norm.get("offset", cls.offset)), float(norm.get("scale", cls.scale))
        if not (math.isfinite(offset) and math.isfinite(scale)) or scale == 0:
            raise InputError(f"model meta: invalid ri_normalization {dict(norm)!r} (scale must be finite and non-zero)")
        return cls(offset, scale)

    def apply(self, ri: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Normalised float32 copy of ``ri`` (or written into ``out``)."""
        out = np.subtract(ri, self.offset, out=out, dtype=np.float32, casting="unsafe")
        out *= np.float32(1.0 / self.scale)
        return out


def validate_volume(volume: Any, where: str = "segment", max_voxels: int = MAX_VOXELS) -> np.ndarray:
    """Check an input tomogram before any heavy work; return it as a NumPy array (no copy if possible).

    Raises
    ------
    InputDtypeError
        Non-numeric dtype (bool, complex, strings, objects).
    ShapeError
        Not 3-D (Z, Y, X), or empty.
    VolumeTooLargeError
        More than ``max_voxels`` voxels.
    NonFiniteInputError
        NaN or infinite values (reports how many and the first position).
    """
    if hasattr(volume, "detach") and hasattr(volume, "cpu"):  # torch tensor
        volume = volume.detach().cpu().numpy()
    if not isinstance(volume, np.ndarray):
        try:
            volume = np.asarray(volume)
        except Exception as exc:
            raise InputError(f"{where}: cannot read the volume as an array ({type(exc).__name__}: {exc})") from None
    dtype = volume.dtype
    if dtype.kind == "b" or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise InputDtypeError(
            f"{where}: volume of dtype {dtype} is not a refractive-index map; expected a real numeric "
            "array (float32 RI values)"
        )
    if volume.ndim != 3:
        hint = " (a single channel? pass volume[0])" if volume.ndim == 4 and 1 in volume.shape[:1] else ""
        raise ShapeError(
            f"{where}: {volume.ndim}-D array of shape {volume.shape}, expected a 3-D volume (Z, Y, X){hint}"
        )
    if volume.size == 0:
        raise ShapeError(f"{where}: empty volume of shape {volume.shape}")
    if volume.size > max_voxels:
        raise VolumeTooLargeError(
            f"{where}: volume of shape {volume.shape} has {volume.size:,} voxels, more than the limit "
            f"{max_voxels:,}; split the field of view or raise max_voxels"
        )
    if np.issubdtype(dtype, np.floating):
        _check_finite(volume, where)
    return volume


def _check_finite(volume: np.ndarray, where: str) -> None:
    slab = max(1, _CHECK_CHUNK_VOXELS // max(1, volume.shape[1] * volume.shape[2]))
    bad_total, first = 0, None
    for z in range(0, volume.shape[0], slab):
        finite = np.isfinite(volume[z : z + slab])
        if not finite.all():
            bad = np.argwhere(~finite)
            bad_total += len(bad)
            if first is None:
                first = (int(bad[0][0]) + z, int(bad[0][1]), int(bad[0][2]))
    if bad_total:
        raise NonFiniteInputError(
            f"{where}: volume holds {bad_total:,} NaN/Inf voxel(s) (first at (z, y, x) = {first}); "
            "replace them (e.g. with the medium RI) before segmenting"
        )


def validate_voxel_size(voxel_size_um: Any, where: str = "segment") -> tuple[float, float, float]:
    """Three numbers (Z, Y, X) in um an optical microscope can produce; a single number means isotropic.

    See :func:`deepis_rt.io.plausibility.check_voxel_size` (the range, and the unit hint for values
    that look like nm or mm).
    """
    if voxel_size_um is None:
        raise InputError(f"{where}: voxel_size_um is missing")
    return check_voxel_size(voxel_size_um, where, "voxel_size_um",
                            fix="pass voxel_size_um=(z, y, x) in micrometres")


def needs_resampling(voxel_size_um: Sequence[float], model_voxel_size_um: Sequence[float], rtol: float = 1e-3) -> bool:
    """True unless the voxel sizes agree within ``rtol`` on every axis."""
    return any(abs(a - b) > rtol * b for a, b in zip(voxel_size_um, model_voxel_size_um, strict=False))


def model_grid_shape(
    shape: Sequence[int], voxel_size_um: Sequence[float], model_voxel_size_um: Sequence[float]
) -> tuple[int, int, int]:
    """Shape of the same physical extent sampled at the model's voxel size (at least 1 voxel)."""
    return tuple(
        max(1, int(round(n * v / m))) for n, v, m in zip(shape, voxel_size_um, model_voxel_size_um, strict=False)
    )  # type: ignore[return-value]


#: Host memory one frame may take at most, where the machine has more (input, model grid, stitched
#: output, distance map); see :func:`default_frame_budget_bytes`.
FRAME_BUDGET_BYTES = 16 * 1024**3


def frame_working_bytes(shape: Sequence[int], grid_shape: Sequence[int], stitch_on_disk: bool = False) -> int:
    """Host memory (bytes) one frame takes from resampling to the distance map on its own grid.

    float32 throughout: on the input grid the RI, the distance map resampled back and the analysis'
    masks (counted as one more volume); on the model grid the resampled RI (only when the grids
    differ) and the stitched output (on disk with ``stitch_on_disk``). Tile batches are a fixed,
    small size and are not counted.
    """
    n_in = math.prod(int(s) for s in shape)
    n_grid = math.prod(int(s) for s in grid_shape)
    grid_copies = (0 if tuple(shape) == tuple(grid_shape) else 1) + (0 if stitch_on_disk else 1)
    return 4 * (3 * n_in + grid_copies * n_grid)


def default_frame_budget_bytes() -> int:
    """:data:`FRAME_BUDGET_BYTES`, or three quarters of this machine's memory where that is less."""
    from deepis_rt.backends.failures import host_memory_bytes

    total = host_memory_bytes()
    return FRAME_BUDGET_BYTES if total is None else min(FRAME_BUDGET_BYTES, total * 3 // 4)


def check_frame_memory(shape: Sequence[int], grid_shape: Sequence[int], voxel_size_um: Sequence[float],
                       model_voxel_size_um: Sequence[float], where: str, budget_bytes: int | None = None,
                       stitch_on_disk: bool = False) -> None:
    """Refuse a frame whose working memory would exceed ``budget_bytes``, before anything is allocated.

    Raises
    ------
    VolumeTooLargeError
        Naming the input shape and voxel size, the model-grid shape they resample to, and the
        memory that would take: a permanent failure (trying again cannot help).
    """
    budget = default_frame_budget_bytes() if budget_bytes is None else int(budget_bytes)
    need = frame_working_bytes(shape, grid_shape, stitch_on_disk)
    if need <= budget:
        return
    vs = ", ".join(f"{v:g}" for v in voxel_size_um)
    mvs = ", ".join(f"{v:g}" for v in model_voxel_size_um)
    raise VolumeTooLargeError(
        f"{where}: shape {tuple(int(s) for s in shape)} at voxel size [{vs}] um resamples to "
        f"{tuple(int(s) for s in grid_shape)} at the model's [{mvs}] um; processing it would take "
        f"{need / 1024**3:,.1f} GiB, above the {budget / 1024**3:,.1f} GiB budget per frame: check the voxel "
        "size (and its unit), or crop or bin the volume"
    )


