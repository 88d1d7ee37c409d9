"""``quality`` in frames.csv, synapses.csv, summary.json and FrameResult, through a real stream."""

from __future__ import annotations

import csv
import json

import numpy as np
from stream_support import RI0, RI_PER_UM, SHAPE, VOXEL, IdentityRunner, conjugate_distance

from deepis_rt.runtime import Segmenter
from deepis_rt.stream import Stream

#: both cells sit CELL_UM x RI_PER_UM (0.078) above the medium, as real cells sit above theirs (a
#: target written darker than the medium would be a faint cell: quality "faint_cell")
CELL_UM = 5.0


class CellContrastRunner(IdentityRunner):
    """The distance map back from :func:`contrast_tomogram`'s RI (normalised: CELL_UM + distance in a cell)."""

    def infer_impl(self, batch):
        x = super().infer_impl(batch)
        return np.where(x > 0.25 * CELL_UM, x - CELL_UM, 0).astype(np.float32)


def contrast_tomogram(contact_radius_um, shift_um=0.0):
    """stream_support.conjugate_distance as RI with both cells above the medium (for CellContrastRunner)."""
    d = conjugate_distance(contact_radius_um, shift_um)
    return (RI0 + RI_PER_UM * np.where(d != 0, d + CELL_UM, 0)).astype(np.float32)


def _segmenter():
    # the network's "training" inputs: the medium RI0 and the cells up to 0.2 above it
    trained = {"ri": [RI0 - 0.1, RI0 + 0.2], "medium_ri": [RI0 - 0.001, RI0 + 0.001],
               "voxel_size_um_min": list(VOXEL), "voxel_size_um_max": list(VOXEL)}
    meta = {"voxel_size_um": list(VOXEL), "ri_normalization": {"offset": RI0, "scale": RI_PER_UM},
            "medium_ri": RI0, "tile_zyx": list(SHAPE), "training": {"input_range": trained}}
    return Segmenter(CellContrastRunner(), meta)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_a_frame_with_a_cell_cut_by_the_edge_is_flagged_everywhere_and_left_out_of_the_fit(tmp_path):
    radii = [0.0, 2.0, 2.4, 2.6, 2.8, 3.0]
    cut = 3  # the pair moved right: the target cell reaches past the field's edge
    volumes = [contrast_tomogram(r, shift_um=2.6 if i == cut else 0.05 * i) for i, r in enumerate(radii)]
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


def test_stream_cli_tta_runs_the_flips_and_says_so(tmp_path, tiny_overrides):
    import torch
    from click.testing import CliRunner

    from deepis_rt.checkpoint import save_checkpoint
    from deepis_rt.cli import main
    from deepis_rt.io import write_tomogram
    from deepis_rt.model import build_model

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "tiny.pt", build_model("deepis-lite", **tiny_overrides),
                           meta={"voxel_size_um": list(VOXEL), "tile_zyx": [32, 64, 64]})
    cam, out = tmp_path / "cam", tmp_path / "out"
    for i in range(2):
        write_tomogram(cam / f"frame_{i}.npy", 1.337 + 0.01 * (conjugate_distance(2.5) > 0), VOXEL, fmt="npy")
    res = CliRunner().invoke(main, ["stream", "--source", str(cam), "--out", str(out), "--model", str(ckpt),
                                    "--backend", "torch", "--once", "--settle", "0", "--no-masks", "--tta"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["quality"]["tta"] is True and summary["quality"]["frames_assessed"] == 2
    assert all(r["quality"] for r in _rows(out / "frames.csv"))
