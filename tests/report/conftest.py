"""Report fixtures: a results folder made by a real Stream over a synthetic camera folder."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "stream"))  # stream_support: the identity segmenter

#: contact radius (um) per frame: apart, then a contact that forms and saturates
RADII = [0.0, 1.6, 2.2, 2.6, 2.8, 2.95, 3.0]
TRUTH = {"generator": "deepis_rt.synth", "seed": 1, "a_max_um2": 30.0, "tau_half_s": 4.0, "onset_s": 2.0,
         "frame_interval_s": 3.0}


@pytest.fixture(scope="session")
def results_folder(tmp_path_factory):
    from stream_support import VOXEL, conjugate_tomogram, make_segmenter

    from deepis_rt.io import write_tomogram
    from deepis_rt.stream import Stream

    root = tmp_path_factory.mktemp("report")
    cam, out = root / "cam", root / "out"
    for i, r in enumerate(RADII):
        write_tomogram(cam / f"frame_{i:03d}.npy", conjugate_tomogram(r, shift_um=0.15 * i), VOXEL, fmt="npy")
    (cam / "synth.json").write_text(json.dumps(TRUTH))
    with Stream(cam, out, make_segmenter(), once=True, settle_s=0.0, frame_interval_s=3.0, report=True) as stream:
        stream.run()
    return out
