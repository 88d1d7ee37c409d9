"""The napari reader's layer data, without napari or Qt: calibrated, lazy, complete."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil

import numpy as np
import pytest
from napari_support import VOXEL

import deepis_rt.napari.results as results_mod
from deepis_rt.napari.layers import LABEL_COLORS, LABEL_NAMES, contact_points, tomogram_layers
from deepis_rt.napari.reader import get_results_reader, get_tomogram_reader, read_results
from deepis_rt.napari.results import RunResults

pytestmark = pytest.mark.skipif(importlib.util.find_spec("dask") is None,
                                reason="the napari readers need dask (pip install 'deepis-rt[napari]')")
needs_napari = pytest.mark.skipif(importlib.util.find_spec("napari") is None,
                                  reason="needs napari (pip install 'deepis-rt[napari]')")


def _by_type(layers):
    out = {}
    for data, kwargs, kind in layers:
        out.setdefault(kind, []).append((data, kwargs))
    return out


@pytest.fixture
def counted_reads(monkeypatch):
    """Counts of label volumes and tomograms actually read."""
    counts = {"mask": 0, "ri": 0}
    real_mask, real_ri = results_mod._read_mask, results_mod._read_ri

    def mask(*a, **k):
        counts["mask"] += 1
        return real_mask(*a, **k)

    def ri(*a, **k):
        counts["ri"] += 1
        return real_ri(*a, **k)

    monkeypatch.setattr(results_mod, "_read_mask", mask)
    monkeypatch.setattr(results_mod, "_read_ri", ri)
    return counts


def test_results_folder_layers_are_calibrated(finished_run):
    camera, out, frames = finished_run
    assert get_results_reader(str(out)) is read_results
    layers = _by_type(read_results(str(out)))
    dt = frames[1].truth["time_s"] - frames[0].truth["time_s"]
    (ri, ri_kw), = layers["image"]
    (labels, lab_kw), = layers["labels"]
    for data, kw in ((ri, ri_kw), (labels, lab_kw)):
        assert data.shape == (4, 32, 64, 64)
        assert kw["scale"] == pytest.approx((dt, *VOXEL), rel=1e-4)
        assert kw["units"] == ("second", "micrometer", "micrometer", "micrometer")
        assert kw["axis_labels"] == ("t", "z", "y", "x")
    # labels: the stream's masks, values named and coloured the same in every view
    np.testing.assert_array_equal(np.asarray(labels[2]), __import__("tifffile").imread(out / "masks/frame_000002.ome.tif"))
    assert lab_kw["features"] == {"index": [0, 1, 2, 3], "name": ["background", "CAR-T", "target", "IS"]}
    assert lab_kw["colormap"] == LABEL_COLORS and LABEL_NAMES[3] == "IS"
    # RI: the camera's tomograms, frame by frame
    np.testing.assert_allclose(np.asarray(ri[3]), __import__("tifffile").imread(camera / "frame_0003.tif"))


def test_tracks_and_points_in_world_units(finished_run):
    _, out, _ = finished_run
    run = RunResults.open(out)
    layers = {kw["name"].split(" (")[0]: (data, kw) for data, kw, _ in read_results(out)}
    cells, cell_kw = layers["cell tracks"]
    # [track_id, frame, z, y, x]: positions as cells.csv has them (um), the frame interval as time scale
    rows = run.cells
    assert len(cells) == len(rows)
    assert cell_kw["scale"] == pytest.approx((run.frame_interval_s, 1, 1, 1))
    row = next(r for r in rows if r["frame"] == "2" and r["kind"] == "tcell")
    hit = cells[(cells[:, 0] == float(row["track_id"])) & (cells[:, 1] == 2)]
    np.testing.assert_allclose(hit[0, 2:], [float(row["z_um"]), float(row["y_um"]), float(row["x_um"])], rtol=1e-5)
    syn_rows = {r["frame"]: float(r["is_area_um2"]) for r in run.synapses}
    props = cell_kw["properties"]
    i = int(np.flatnonzero((cells[:, 0] == float(row["track_id"])) & (cells[:, 1] == 2))[0])
    assert props["is_area_um2"][i] == pytest.approx(syn_rows["2"])
    assert props["mean_ri"][i] == pytest.approx(float(row["mean_ri"]))
    # one synapse track, one point per synapse row, its measurements as features
    syn, syn_kw = layers["synapse tracks"]
    assert set(syn[:, 0]) == {1.0} and len(syn) == len(run.synapses)
    np.testing.assert_allclose(sorted(syn_kw["properties"]["is_area_um2"]), sorted(syn_rows.values()), rtol=1e-5)
    pts, pts_kw = layers["synapses"]
    assert pts.shape == (len(run.synapses), 4) and pts_kw["scale"] == syn_kw["scale"] == cell_kw["scale"]
    assert sorted(pts[:, 0]) == sorted(int(r["frame"]) for r in run.synapses)
    assert list(pts_kw["features"]["is_area_um2"]) == pytest.approx([syn_rows[k] for k in sorted(syn_rows)])
    assert "is_area_err_um2" in pts_kw["features"]


def test_synapse_points_lie_on_the_synapse(finished_run):
    """The contact point estimated from the tables is within 2 um of the IS voxels' centroid."""
    import tifffile

    _, out, _ = finished_run
    run = RunResults.open(out)
    pos, feats = contact_points(run)
    assert len(pos)
    for (frame, *p) in pos:
        labels = tifffile.imread(out / f"masks/frame_{int(frame):06d}.ome.tif")
        centroid = np.argwhere(labels == 3).mean(axis=0) * np.array(VOXEL)
        assert np.linalg.norm(np.array(p) - centroid) < 2.0


def test_opening_reads_no_volume_but_one(finished_run, counted_reads):
    _, out, _ = finished_run
    layers = read_results(out)
    assert counted_reads == {"mask": 0, "ri": 1}  # one tomogram for the shape and voxel size
    labels = next(d for d, _, k in layers if k == "labels")
    np.asarray(labels[1])
    assert counted_reads["mask"] == 1


def test_a_300_frame_run_opens_without_reading_its_frames(finished_run, tmp_path, counted_reads):
    """300 committed frames (the masks and tomograms of a real run, linked 75 times over)."""
    camera, out, _ = finished_run
    big = tmp_path / "big"
    (big / "masks").mkdir(parents=True)
    shutil.copy(out / "summary.json", big / "summary.json")
    head, *rows = (out / "frames.csv").read_text().splitlines()
    lines = [head]
    for f in range(300):
        src = rows[f % 4].split(",")
        src[0] = str(f)
        src[2] = str(3.0 * f)
        lines.append(",".join(src))
        os.link(out / f"masks/frame_{f % 4:06d}.ome.tif", big / f"masks/frame_{f:06d}.ome.tif")
    (big / "frames.csv").write_text("\n".join(lines) + "\n")
    layers = read_results(big)
    labels = next(d for d, _, k in layers if k == "labels")
    assert labels.shape[0] == 300 and counted_reads == {"mask": 0, "ri": 1}
    assert next(kw for _, kw, k in layers if k == "labels")["scale"][0] == pytest.approx(3.0)


def test_live_folder_counts_committed_frames_only(finished_run, tmp_path):
    """A frame whose row is being written (partial line) or not yet committed is not shown."""
    _, out, _ = finished_run
    live = tmp_path / "live"
    shutil.copytree(out, live)
    text = (live / "frames.csv").read_text().splitlines(keepends=True)
    (live / "frames.csv").write_text("".join(text[:3]) + text[3][:10])  # frame 2 torn, frame 3 absent
    run = RunResults.open(live)
    assert run.n_frames == 2
    assert {r["frame"] for r in run.cells} == {"0", "1"} and {r["frame"] for r in run.synapses} == {"1"}


def test_without_the_camera_folder_the_labels_still_open(finished_run, tmp_path, caplog):
    _, out, _ = finished_run
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    summary = json.loads((moved / "summary.json").read_text())
    summary["source_path"] = str(tmp_path / "gone")
    (moved / "summary.json").write_text(json.dumps(summary))
    with caplog.at_level(logging.WARNING, logger="deepis_rt"):
        kinds = [k for _, _, k in read_results(moved)]
    assert "image" not in kinds and "labels" in kinds
    assert f"the camera folder {tmp_path / 'gone'} no longer holds frame_0000.tif" in caplog.text


def test_a_store_written_by_stream_opens_from_the_store(tmp_path, counted_reads):
    """The store ``stream`` writes itself (not one built by hand) gives the RI and the labels, with no
    mask or camera file read, and the same voxels as the masks."""
    import tifffile
    from napari_support import make_run

    _, out, _ = make_run(tmp_path, 3, zarr="ri+labels")
    shutil.rmtree(out / "masks")
    layers = _by_type(read_results(out))
    (ri, ri_kw), = layers["image"]
    (labels, lab_kw), = layers["labels"]
    assert counted_reads == {"mask": 0, "ri": 0}
    assert ri.shape[0] == labels.shape[0] == 3 and ri_kw["scale"] == lab_kw["scale"]
    assert np.isfinite(np.asarray(ri[2])).all()
    tzyx = tifffile.imread(out / "labels_tzyx.ome.tif")
    np.testing.assert_array_equal(np.asarray(labels[1]), tzyx[1])


def test_not_a_results_folder(tmp_path):
    assert get_results_reader(str(tmp_path)) is None
    assert get_tomogram_reader(str(tmp_path / "x.csv")) is None


@pytest.mark.parametrize("fmt", ["tiff", "npy", "tcf", "mat"])
def test_tomogram_files_open_calibrated(tmp_path, fmt):
    from napari_support import synth_frames

    from deepis_rt.io import write_tomogram

    f = synth_frames(2)[1]
    if fmt == "mat":  # the original DeepIS layout: variable 'input', MATLAB (Y, X, Z)
        import scipy.io

        path = tmp_path / "cell.mat"
        scipy.io.savemat(path, {"input": np.transpose(f.ri, (1, 2, 0))})
    else:
        path = write_tomogram(tmp_path / f"cell.{ {'tiff': 'tif'}.get(fmt, fmt) }", f.ri, VOXEL, fmt=fmt)
    reader = get_tomogram_reader(str(path))
    assert reader is not None
    (data, kw, kind), = reader(str(path))
    assert kind == "image" and data.shape == f.ri.shape
    np.testing.assert_allclose(np.asarray(data), f.ri, atol=1e-4)
    if fmt == "mat":  # MAT files carry no voxel size: axes in voxels, said so
        assert kw["units"] == ("pixel",) * 3
    else:
        assert kw["scale"] == pytest.approx(VOXEL) and kw["units"] == ("micrometer",) * 3
    assert kw["axis_labels"] == ("z", "y", "x")


def test_time_lapse_file_opens_as_t_z_y_x_in_seconds(tmp_path):
    from napari_support import synth_frames

    from deepis_rt.io import write_tomogram

    frames = synth_frames(3)
    path = tmp_path / "movie.tcf"
    # a TCF time-lapse: one file, a dataset per time point, times recorded
    write_tomogram(path, frames[0].ri, VOXEL, fmt="tcf")
    import h5py

    with h5py.File(path, "a") as h5:
        group = h5["Data/3D"]
        src = group["000000"]
        src.attrs["Time"] = 0.0
        for t in (1, 2):
            ds = group.create_dataset(f"{t:06d}", data=np.round((frames[t].ri) * 10000).astype(src.dtype)
                                      if src.dtype.kind in "ui" else frames[t].ri)
            for k, v in src.attrs.items():
                ds.attrs[k] = v
            ds.attrs["Time"] = 4.0 * t
    (data, kw, kind), = tomogram_layers(path)
    assert data.shape == (3, *frames[0].ri.shape)
    assert kw["scale"] == pytest.approx((4.0, *VOXEL)) and kw["units"][0] == "second"
    assert kw["axis_labels"] == ("t", "z", "y", "x")
    np.testing.assert_allclose(np.asarray(data[2]), frames[2].ri, atol=1e-3)


@needs_napari
def test_napari_accepts_the_layer_data(finished_run):
    from napari.layers import Layer

    _, out, _ = finished_run
    made = [Layer.create(d, kw, k) for d, kw, k in read_results(out)]
    assert [type(m).__name__ for m in made] == ["Image", "Labels", "Tracks", "Tracks", "Points"]
    labels = made[1]
    assert labels.units[1].__str__() == "micrometer"
    assert tuple(labels.colormap.map(np.array([1]))[0]) == pytest.approx(LABEL_COLORS[1])


@pytest.mark.parametrize("with_ri", [True, False])
def test_the_ome_zarr_store_is_preferred(finished_run, tmp_path, counted_reads, with_ri):
    """A run with a time-lapse store: labels (and RI) come from it, lazily; without the RI in it, from the camera."""
    pytest.importorskip("zarr", reason="the store is read with zarr")
    import tifffile
    from napari_support import write_store

    camera, out, _ = finished_run
    run_dir = tmp_path / "with_store"
    shutil.copytree(out, run_dir)
    write_store(run_dir, with_ri=with_ri)
    shutil.rmtree(run_dir / "masks")  # only the store holds the labels now
    layers = _by_type(read_results(run_dir))
    (labels, lab_kw), = layers["labels"]
    (ri, ri_kw), = layers["image"]
    assert counted_reads == {"mask": 0, "ri": 0 if with_ri else 1}
    assert labels.shape == ri.shape == (4, 32, 64, 64)
    assert lab_kw["scale"][1:] == pytest.approx(VOXEL) and ri_kw["scale"] == pytest.approx(lab_kw["scale"])
    np.testing.assert_array_equal(np.asarray(labels[2]), tifffile.imread(out / "masks/frame_000002.ome.tif"))
    np.testing.assert_allclose(np.asarray(ri[1]), tifffile.imread(camera / "frame_0001.tif"))
    assert counted_reads["mask"] == 0


def test_without_dask_the_error_names_the_extra(finished_run, monkeypatch):
    from deepis_rt.errors import MissingDependencyError

    _, out, _ = finished_run
    monkeypatch.setitem(__import__("sys").modules, "dask", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'deepis-rt\[napari\]'"):
        read_results(out)
