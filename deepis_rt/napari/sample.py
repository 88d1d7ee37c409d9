"""napari sample data: a small synthetic CAR-T / target conjugate time-lapse (:mod:`deepis_rt.synth`)."""

from __future__ import annotations

import numpy as np

from deepis_rt.napari.layers import AXES_4D, UNITS_4D, labels_kwargs

__all__ = ["conjugate_timelapse", "SAMPLE_SHAPE", "SAMPLE_VOXEL_SIZE_UM", "SAMPLE_FRAMES"]

#: Small enough to appear in about a second: 12 frames of 32 x 64 x 64 voxels of 1 x 0.5 x 0.5 um.
SAMPLE_FRAMES = 12
SAMPLE_SHAPE = (32, 64, 64)
SAMPLE_VOXEL_SIZE_UM = (1.0, 0.5, 0.5)


def conjugate_timelapse(seed: int = 2026) -> list[tuple]:
    """RI (T, Z, Y, X) of a CAR-T cell meeting a target cell, and the true labels (CAR-T, target, IS)."""
    from deepis_rt.synth import generate_timelapse

    frames = generate_timelapse(SAMPLE_FRAMES, seed, SAMPLE_SHAPE, SAMPLE_VOXEL_SIZE_UM, with_truth_area=False)
    dt = float(frames[1].truth["time_s"] - frames[0].truth["time_s"])
    scale = (dt, *SAMPLE_VOXEL_SIZE_UM)
    ri = np.stack([f.ri for f in frames])
    labels = np.stack([f.labels for f in frames])
    meta = {"deepis_rt": {"sample": "deepis_rt.synth", "seed": seed, "frame_interval_s": dt}}
    return [
        (ri, {"name": "RI (synthetic conjugate)", "scale": scale, "units": UNITS_4D, "axis_labels": AXES_4D,
              "colormap": "gray", "contrast_limits": (1.335, 1.40), "metadata": meta}, "image"),
        (labels, {**labels_kwargs("true labels (synthetic conjugate)", scale), "metadata": meta}, "labels"),
    ]
