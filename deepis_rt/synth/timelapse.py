"""Synthetic conjugate time-lapses with ground truth, in memory or on disk."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt.errors import ConfigError
from deepis_rt.synth.scene import DEFAULT_IMAGING, MEDIUM_RI, make_video, render_frame

__all__ = ["SynthFrame", "generate_timelapse", "iter_timelapse", "write_timelapse", "TRUTH_COLUMNS",
           "DEFAULT_SHAPE", "DEFAULT_VOXEL_SIZE_UM"]

log = logging.getLogger(__name__)

#: Default frame shape (Z, Y, X): the bundled checkpoint's tile.
DEFAULT_SHAPE: tuple[int, int, int] = (64, 128, 128)
#: Default voxel size (Z, Y, X) in um: the bundled checkpoint's voxel size.
DEFAULT_VOXEL_SIZE_UM: tuple[float, float, float] = (0.5, 0.25, 0.25)

#: Columns of truth.csv, in order.
TRUTH_COLUMNS: tuple[str, ...] = (
    "frame", "file", "time_s", "contact", "is_area_um2", "is_area_model_um2", "cart_volume_um3",
    "target_volume_um3", "second_cell", "cart_z_um", "cart_y_um", "cart_x_um", "target_z_um", "target_y_um",
    "target_x_um", "normal_z", "normal_y", "normal_x",
)


@dataclass
class SynthFrame:
    """One synthetic frame and its ground truth.

    Attributes
    ----------
    ri : numpy.ndarray
        Refractive index, float32 (Z, Y, X).
    labels : numpy.ndarray
        uint8 (Z, Y, X): 0 background, 1 CAR-T, 2 target, 3 IS (cell voxels face-adjacent
        to the other cell of the conjugate).
    distance_um : numpy.ndarray
        Signed distance map, float32 um: + inside CAR-T cells (Euclidean distance to the
        cell's border with anisotropic voxels), - inside target cells, 0 in the background;
        it changes sign across the IS.
    truth : dict
        ``frame``, ``time_s``, ``contact``, ``is_area_um2`` (geometric area of the contact
        plane inside both cells), ``is_area_model_um2`` (the kinetic law A(t)), cell volumes,
        centres (um) and the contact normal.
    voxel_size_um : tuple of float
        Voxel size (Z, Y, X) in um.
    seed : int
        Video seed.
    imaging : dict
        The imaging condition (:mod:`deepis_rt.synth.optics`) and ``acquisition_voxel_um``.
    """

    ri: np.ndarray
    labels: np.ndarray
    distance_um: np.ndarray
    truth: dict[str, Any]
    voxel_size_um: tuple[float, float, float]
    seed: int
    #: the imaging condition and acquisition voxel size the RI was made with
    imaging: dict[str, Any] = field(default_factory=dict)

    @property
    def is_area_um2(self) -> float:
        return float(self.truth["is_area_um2"])

    @property
    def time_s(self) -> float:
        return float(self.truth["time_s"])

    @property
    def contact(self) -> bool:
        return bool(self.truth["contact"])


def _check(n_frames: int, shape: Sequence[int], voxel_size_um: Sequence[float]) -> tuple:
    if int(n_frames) < 1:
        raise ConfigError(f"synth: n_frames must be >= 1, got {n_frames}")
    shape = tuple(int(s) for s in shape)
    vs = tuple(float(v) for v in voxel_size_um)
    if len(shape) != 3 or min(shape) < 8:
        raise ConfigError(f"synth: shape must be three sizes >= 8 (Z, Y, X), got {shape}")
    if len(vs) != 3 or not all(np.isfinite(v) and v > 0 for v in vs):
        raise ConfigError(f"synth: voxel size must be three positive numbers (Z, Y, X) um, got {vs}")
    extent = [s * v for s, v in zip(shape, vs, strict=False)]
    if min(extent) < 24.0:
        log.warning("synth: field of view %s um is smaller than a conjugate (~25 um); cells will be cut", extent)
    return shape, vs


def iter_timelapse(
    n_frames: int,
    seed: int,
    shape: Sequence[int] = DEFAULT_SHAPE,
    voxel_size_um: Sequence[float] = DEFAULT_VOXEL_SIZE_UM,
    frames: Sequence[int] | None = None,
    with_truth_area: bool = True,
    kinetics: dict | None = None,
    imaging: str | Any = DEFAULT_IMAGING,
    randomize: bool = False,
    acquisition_voxel_um: Sequence[float] | None = None,
) -> Iterator[SynthFrame]:
    """Yield the frames of a synthetic video one by one (see :func:`generate_timelapse`)."""
    shape, vs = _check(n_frames, shape, voxel_size_um)
    params = make_video(seed, shape, vs, n_frames, kinetics, randomize=randomize, imaging=imaging)
    acq = None if acquisition_voxel_um is None else tuple(float(v) for v in acquisition_voxel_um)
    for k in (range(n_frames) if frames is None else frames):
        r = render_frame(params, int(k), with_truth_area=with_truth_area, acquisition_voxel_um=acq)  # type: ignore[arg-type]
        yield SynthFrame(ri=r.ri, labels=r.labels, distance_um=r.distance_um, truth=r.truth,
                         voxel_size_um=vs, seed=int(seed), imaging=r.imaging)  # type: ignore[arg-type]


def generate_timelapse(
    n_frames: int,
    seed: int,
    shape: Sequence[int] = DEFAULT_SHAPE,
    voxel_size_um: Sequence[float] = DEFAULT_VOXEL_SIZE_UM,
    frames: Sequence[int] | None = None,
    with_truth_area: bool = True,
    kinetics: dict | None = None,
    imaging: str | Any = DEFAULT_IMAGING,
    randomize: bool = False,
    acquisition_voxel_um: Sequence[float] | None = None,
) -> list[SynthFrame]:
    """A synthetic time-lapse of a CAR-T cell meeting a target cell.

    Deterministic in ``seed``: the same seed, shape and voxel size give the same video,
    and frame ``k`` does not depend on which other frames are rendered.
    The physics is described in :mod:`deepis_rt.synth.scene`.

    Parameters
    ----------
    n_frames : int
        Length of the video (sets the time axis of its kinetics).
    seed : int
        Video seed.
    shape : (Z, Y, X)
        Frame size in voxels (default: the bundled checkpoint's tile, 64 x 128 x 128).
    voxel_size_um : (Z, Y, X)
        Voxel size in um (default: the bundled checkpoint's, 0.5 x 0.25 x 0.25).
    frames : sequence of int, optional
        Render only these frame indices.
    with_truth_area : bool
        Measure the geometric IS area (a few ms per frame); training turns it off.
    kinetics : dict, optional
        Prescribed ``a_max_um2``, ``tau_half_s``, ``onset_s``, ``frame_interval_s``
        instead of drawn ones (see :func:`deepis_rt.synth.scene.make_video`).
    imaging : str or imaging model
        ``"tomocube"`` (default), ``"legacy"``, ``"raw"``, ``"random"``, or an
        :class:`deepis_rt.synth.optics.Imaging` (see :func:`deepis_rt.synth.scene.make_video`).
    randomize : bool
        Domain randomisation of the shapes and cell interiors (training).
    acquisition_voxel_um : (Z, Y, X), optional
        Make the RI at this voxel size and resample it to ``voxel_size_um`` as the runtime
        does (labels and distance maps are always exact on ``voxel_size_um``).

    Returns
    -------
    list of SynthFrame
    """
    return list(iter_timelapse(n_frames, seed, shape, voxel_size_um, frames, with_truth_area, kinetics, imaging,
                               randomize, acquisition_voxel_um))


def write_timelapse(
    out_dir: str | Path,
    n_frames: int,
    seed: int,
    shape: Sequence[int] = DEFAULT_SHAPE,
    voxel_size_um: Sequence[float] = DEFAULT_VOXEL_SIZE_UM,
    fmt: str = "tiff",
    progress: bool | None = None,
    kinetics: dict | None = None,
    imaging: str = DEFAULT_IMAGING,
) -> Path:
    """Write a synthetic time-lapse and its ground truth to a folder.

    Layout::

        out_dir/frame_000000.tif ...       RI tomograms (fmt: tiff, npy (+ .json) or tcf), voxel size in metadata
        out_dir/labels/frame_000000.tif    uint8 OME-TIFF labels (0 bg, 1 CAR-T, 2 target, 3 IS)
        out_dir/distance/frame_000000.tif  float32 OME-TIFF signed distance map (um)
        out_dir/truth.csv                  one row per frame (TRUTH_COLUMNS)
        out_dir/synth.json                 seed, shape, voxel size, frame interval, medium RI

    Returns
    -------
    Path
        ``out_dir``.
    """
    from tqdm.auto import tqdm

    from deepis_rt.io import suffix_for, write_labels, write_tomogram

    out = Path(out_dir)
    suffix = suffix_for(fmt)
    shape, vs = _check(n_frames, shape, voxel_size_um)
    out.mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(exist_ok=True)
    (out / "distance").mkdir(exist_ok=True)
    params = make_video(seed, shape, vs, n_frames, kinetics, imaging=imaging)
    rows = []
    disable = (not _isatty()) if progress is None else not progress
    for frame in tqdm(iter_timelapse(n_frames, seed, shape, vs, kinetics=kinetics, imaging=imaging), total=n_frames, desc="synth", unit="frame",
                      disable=disable):
        k = frame.truth["frame"]
        name = f"frame_{k:06d}"
        write_labels(out / "labels" / f"{name}.tif", frame.labels, vs)
        write_tomogram(out / "distance" / f"{name}.tif", frame.distance_um, vs, "tiff")
        # the tomogram last: a folder watcher sees its truth already in place
        write_tomogram(out / f"{name}{suffix}", frame.ri, vs, fmt, time_s=frame.time_s, medium_ri=MEDIUM_RI)
        rows.append({**frame.truth, "file": f"{name}{suffix}"})
    with open(out / "truth.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(TRUTH_COLUMNS), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (int(v) if isinstance(v, bool) else v) for k, v in r.items()})
    (out / "synth.json").write_text(json.dumps({
        "generator": "deepis_rt.synth", "seed": int(seed), "n_frames": int(n_frames), "shape_zyx": list(shape),
        "voxel_size_um": list(vs), "frame_interval_s": params.frame_interval_s, "medium_ri": MEDIUM_RI,
        "onset_s": params.onset_s, "a_max_um2": params.a_max_um2, "tau_half_s": params.tau_half_s,
        "format": fmt, "imaging": params.imaging.as_dict(),
    }, indent=2))
    log.info("synth: wrote %d frames to %s", n_frames, out)
    return out


def _isatty() -> bool:
    import sys

    return sys.stderr.isatty()
