"""examples/pymmcore_plus_loop.py on pymmcore-plus's pure-Python device layer (no hardware, no
Micro-Manager device adapters): planes become z-stacks, z-stacks go to the stream, and the synapse
it finds changes the acquisition's interval."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymmcore_plus.experimental.unicore", reason="pymmcore-plus is not installed (pip install pymmcore-plus)")

sys.path.insert(0, str(Path(__file__).parents[1] / "stream"))  # stream_support: the identity segmenter
sys.path.insert(0, str(Path(__file__).parents[2] / "examples"))

import zarr  # noqa: E402
from pymmcore_plus_loop import SynapseTriggeredAcquisition, simulated_core  # noqa: E402
from stream_support import VOXEL, conjugate_tomogram, make_segmenter  # noqa: E402

from deepis_rt.stream import Stream  # noqa: E402


def test_mda_planes_reach_the_stream_and_a_synapse_speeds_up_the_acquisition(tmp_path):
    radii = [0.0, 0.0, 2.0, 2.4, 2.7, 2.9]  # the contact forms at time point 2
    volumes = [conjugate_tomogram(r, shift_um=0.1 * i) for i, r in enumerate(radii)]
    core, _ = simulated_core(volumes, VOXEL)
    z_positions = [i * VOXEL[0] for i in range(volumes[0].shape[0])]
    acquisition = SynapseTriggeredAcquisition(core, z_positions, VOXEL, len(volumes), interval_s=0.2,
                                              fast_interval_s=0.05)
    with Stream(None, tmp_path, make_segmenter(), on_frame=acquisition.on_frame,
                on_synapse_event=acquisition.on_synapse_event) as stream:
        acquisition.run(stream)
        stream.end_input()
        results = sorted(stream, key=lambda r: r.frame)

    assert [r.status for r in results] == ["ok"] * len(volumes)
    assert [len(r.synapses) > 0 for r in results] == [r > 0 for r in radii]
    assert acquisition.synapse_formed_at == 2
    # slow until the time point that showed the synapse was analysed, fast after it
    steps = np.diff(acquisition.start_times_s)
    np.testing.assert_allclose(steps, [0.2, 0.2, 0.05, 0.05, 0.05])
    # every stack holds the camera's planes in z order: the stored RI is the specimen (RI x 10 000 in uint16)
    ri = zarr.open_group(tmp_path / "timelapse.ome.zarr", mode="r")["0"]
    for t, volume in enumerate(volumes):
        np.testing.assert_allclose(ri[t], volume, atol=0.6e-4)
