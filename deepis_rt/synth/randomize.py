"""Domain-randomised training frames: any imaging condition, shape family and acquisition voxel size.

A training frame is one frame of a video drawn with ``randomize=True`` and
``imaging="random"`` (:func:`deepis_rt.synth.scene.make_video`), its RI made at an
acquisition voxel size drawn log-uniformly from 0.1-0.5 um (lateral; axial between the
lateral size and 0.5 um, as ODT exports are never finer in z than in x/y) and resampled
to the model's voxel size exactly as the runtime resamples a tomogram. Labels and the
distance map are exact on the model's grid.

Fine acquisition grids are costly (a 32 um field at 0.1 um is 33 M voxels); when the
field would exceed ``max_acquisition_voxels`` a smaller field around the conjugate is
made instead, never smaller than ``min_shape`` model voxels (a training crop).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from deepis_rt.synth.geometry import Grid
from deepis_rt.synth.scene import make_video, render_frame
from deepis_rt.synth.timelapse import SynthFrame

__all__ = ["ACQUISITION_VOXEL_RANGE_UM", "draw_acquisition_voxel", "randomized_frame"]

#: Range of acquisition voxel sizes (um) drawn for training.
ACQUISITION_VOXEL_RANGE_UM: tuple[float, float] = (0.1, 0.5)


def draw_acquisition_voxel(rng: np.random.Generator,
                           voxel_range_um: tuple[float, float] = ACQUISITION_VOXEL_RANGE_UM) -> tuple[float, float, float]:
    """(Z, Y, X) voxel size: lateral log-uniform in the range, axial log-uniform between it and the top."""
    lo, hi = (np.log(v) for v in voxel_range_um)
    lateral = float(np.exp(rng.uniform(lo, hi)))
    axial = float(np.exp(rng.uniform(np.log(lateral), hi)))
    return axial, lateral, lateral


def randomized_frame(seed: int, index: int, n_frames: int, shape: Sequence[int], voxel_size_um: Sequence[float],
                     max_acquisition_voxels: int = 1_500_000, min_shape: Sequence[int] = (32, 64, 64),
                     voxel_range_um: tuple[float, float] = ACQUISITION_VOXEL_RANGE_UM,
                     with_truth_area: bool = False) -> SynthFrame:
    """Frame ``index`` of the randomised video ``seed`` on the model grid ``shape`` x ``voxel_size_um``.

    Deterministic in (seed, index). The result's ``imaging`` records the condition and the
    acquisition voxel size; its arrays may be smaller than ``shape`` (see the module docstring).
    ``with_truth_area`` measures the geometric IS area (validation; training skips it).
    """
    shape = tuple(int(s) for s in shape)
    vs = tuple(float(v) for v in voxel_size_um)
    params = make_video(seed, shape, vs, n_frames, randomize=True, imaging="random")  # type: ignore[arg-type]
    rng = np.random.default_rng([int(seed), 7919, 5, int(index)])
    acq = draw_acquisition_voxel(rng, voxel_range_um)
    extent = np.array(shape) * np.array(vs)
    n_acq = float(np.prod(extent / np.array(acq)))
    if n_acq > max_acquisition_voxels:
        f = (max_acquisition_voxels / n_acq) ** (1 / 3)
        sub = tuple(min(s, max(int(m), int(round(s * f / 16)) * 16)) for s, m in zip(shape, min_shape, strict=True))
        # around the conjugate (the pair's centre moves with the contact and the drift: a margin)
        center = params.pair_offset_um + rng.normal(scale=1.5, size=3)
        half_room = (extent - np.array(sub) * np.array(vs)) / 2
        center = np.clip(center, -half_room, half_room)
        params = replace(params, grid=Grid(sub, vs, tuple(float(c) for c in center)))  # type: ignore[arg-type]
    r = render_frame(params, int(index), with_truth_area=with_truth_area, acquisition_voxel_um=acq)
    return SynthFrame(ri=r.ri, labels=r.labels, distance_um=r.distance_um, truth=r.truth, voxel_size_um=vs,  # type: ignore[arg-type]
                      seed=int(seed), imaging=r.imaging)
