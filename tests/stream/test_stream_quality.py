"""``quality`` in frames.csv, synapses.csv, summary.json and FrameResult, through a real stream."""

from __future__ import annotations

import csv
import json

from stream_support import RI0, RI_PER_UM, SHAPE, VOXEL, IdentityRunner, conjugate_tomogram

from deepis_rt.runtime import Segmenter
from deepis_rt.stream import Stream


def _segmenter():
    # the identity network's "training" inputs: RI0 +- 0.1 (distances of +-6 um), medium RI0
    trained = {"ri": [RI0 - 0.1, RI0 + 0.1], "medium_ri": [RI0 - 0.001, RI0 + 0.001],
               "voxel_size_um_min": list(VOXEL), "voxel_size_um_max": list(VOXEL)}
    meta = {"voxel_size_um": list(VOXEL), "ri_normalization": {"offset": RI0, "scale": RI_PER_UM},
            "medium_ri": RI0, "tile_zyx": list(SHAPE), "training": {"input_range": trained}}
    return Segmenter(IdentityRunner(), meta)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_frame_with_a_cell_cut_by_the_edge_is_flagged_everywhere_and_left_out_of_the_fit(tmp_path):
    radii = [0.0, 2.0, 2.4, 2.6, 2.8, 3.0]
    cut = 3  # the pair moved right: the target cell reaches past the field's edge
    volumes = [conjugate_tomogram(r, shift_um=2.6 if i == cut else 0.05 * i) for i, r in enumerate(radii)]
    out = tmp_path / "out"
    with Stream(None, out, _segmenter(), write_masks=False) as stream:
        for i, vol in enumerate(volumes):
            stream.submit(vol, time_s=4.0 * i, voxel_size_um=VOXEL)
        stream.end_input()
        results = list(stream)
    # frame 0: the cells are 2 um apart, which puts the target past the edge too
    assert [r.quality for r in results] == ["cell_at_edge", "ok", "ok", "cell_at_edge", "ok", "ok"]
    assert [s.quality for s in results[cut].synapses] == ["cell_at_edge"]
    frames = _rows(out / "frames.csv")
    assert [r["quality"] for r in frames] == [r.quality for r in results]
    synapses = _rows(out / "synapses.csv")
    assert [(int(r["frame"]), r["quality"]) for r in synapses] == [
        (1, "ok"), (2, "ok"), (3, "cell_at_edge"), (4, "ok"), (5, "ok")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["quality"]["frames_with"] == {"cell_at_edge": 2} and summary["quality"]["frames_ok"] == 4
    assert summary["quality"]["tta"] is False
    (syn,) = summary["synapses"]
    assert syn["quality"] == "cell_at_edge" and syn["fit_excluded_frames"] == [cut]
    assert syn["fit_flagged"] == "1 flagged frame(s) excluded (cell_at_edge)"
    assert syn["area_fit"]["n_points"] == 4 and syn["onset_interval_s"] == [0.0, 4.0]
