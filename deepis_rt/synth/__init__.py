"""Physically-motivated synthetic RI time-lapses of a CAR-T cell meeting a target cell, with ground truth.

Scene and shapes: :mod:`deepis_rt.synth.scene`; holotomography imaging model:
:mod:`deepis_rt.synth.optics`; domain-randomised training frames: :mod:`deepis_rt.synth.randomize`.
"""

from deepis_rt.synth.optics import IMAGING_CONDITIONS, TOMOCUBE, Imaging
from deepis_rt.synth.randomize import randomized_frame
from deepis_rt.synth.scene import MEDIUM_RI
from deepis_rt.synth.timelapse import (
    DEFAULT_SHAPE,
    DEFAULT_VOXEL_SIZE_UM,
    TRUTH_COLUMNS,
    SynthFrame,
    generate_timelapse,
    iter_timelapse,
    write_timelapse,
)

__all__ = [
    "SynthFrame",
    "generate_timelapse",
    "iter_timelapse",
    "write_timelapse",
    "TRUTH_COLUMNS",
    "DEFAULT_SHAPE",
    "DEFAULT_VOXEL_SIZE_UM",
    "MEDIUM_RI",
    "Imaging",
    "TOMOCUBE",
    "IMAGING_CONDITIONS",
    "randomized_frame",
]
