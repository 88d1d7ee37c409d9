import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from stream_support import SHAPE, VOXEL, conjugate_tomogram, make_segmenter

from deepis_rt.io import write_tomogram
from deepis_rt.stream import Stream


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_npy(path: Path, volume, voxel=VOXEL, time_s=None):
    write_tomogram(path, volume, voxel, fmt="npy", time_s=time_s)


def test_end_to_end_frames_written_while_streaming(tmp_path, contact_series):
    radii, volumes = contact_series
    cam, out = tmp_path / "cam", tmp_path / "out"
    cam.mkdir()

    def microscope():
        for i, vol in enumerate(volumes):
            path = cam / f"frame_{i:04d}.tif"
            if i == 2:
                # a slow writer: the file grows in three steps, 0.2 s apart (less than settle_s)
                data = path.with_suffix(".part")
                write_tomogram(data, vol, VOXEL, fmt="tiff")
                raw = data.read_bytes()
                data.unlink()
                third = len(raw) // 3
                with open(path, "wb") as f:
                    for k in range(3):
                        f.write(raw[k * third : (k + 1) * third if k < 2 else None])
                        f.flush()
                        time.sleep(0.2)
            else:
                write_tomogram(path, vol, VOXEL, fmt="tiff")
            time.sleep(0.15)

    events = []
    writer = threading.Thread(target=microscope)
    stream = Stream(cam, out, make_segmenter(), settle_s=0.45, poll_s=0.05, idle_timeout_s=2.0,
                    frame_interval_s=5.0, on_synapse_event=events.append, area_threshold_um2=15.0)
    writer.start()
    results = list(stream.start())
    writer.join()
    stream.close()

    assert [r.frame for r in results] == list(range(len(volumes)))
    assert all(r.status == "ok" for r in results), [r.error for r in results]
    frames = _rows(out / "frames.csv")
    assert [r["source"] for r in frames] == [f"frame_{i:04d}.tif" for i in range(len(volumes))]
    assert all(float(r["latency_ms"]) > 0 and r["infer_ms"] for r in frames)
    # synapses exactly in the frames with contact, with areas near pi * a^2
    syn = _rows(out / "synapses.csv")
    assert sorted({int(r["frame"]) for r in syn}) == [i for i, r in enumerate(radii) if r > 0]
    for r in syn:
        a = radii[int(r["frame"])]
        assert float(r["is_area_um2"]) == pytest.approx(np.pi * a * a, rel=0.35)
    # one synapse identity throughout: same CAR-T and target tracks
    assert len({(r["tcell_track"], r["target_track"]) for r in syn}) == 1
    kinds = [e.kind for e in events]
    assert kinds[0] == "formed" and "lost" in kinds and "re-formed" in kinds
    assert "area_threshold_crossed" in kinds
    cells = _rows(out / "cells.csv")
    assert {r["kind"] for r in cells} == {"tcell", "target"}
    assert len(list((out / "masks").glob("frame_*.ome.tif"))) == len(volumes)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_ok"] == len(volumes) and summary["frames_failed"] == 0
    assert {"p50", "p95", "p99"} <= set(summary["run"]["latency_ms"])
    assert len(summary["synapses"]) == 1
    assert list((out / "plots").glob("*.png"))
    # mask volumes carry the voxel size
    import tifffile

    with tifffile.TiffFile(next((out / "masks").glob("*.ome.tif"))) as tif:
        assert "PhysicalSizeZ=\"0.5\"" in tif.ome_metadata
        labels = tif.asarray()
    assert labels.shape == SHAPE and set(np.unique(labels)) <= {0, 1, 2, 3}
    # deepis-rt info describes the results folder
    from deepis_rt.info import describe

    desc = describe(out)
    assert desc["kind"] == "results" and desc["frames_ok"] == len(volumes)
    assert desc["synapse_rows"] == len(syn) and len(desc["synapses"]) == 1


def _bad_inputs(cam: Path) -> dict[str, str]:
    """Write one file of each bad kind; returns name -> expected words in the error."""
    good = conjugate_tomogram(2.5)
    _write_npy(cam / "frame_0000.npy", good)
    # truncated: a valid npy cut in half
    _write_npy(cam / "frame_0001.npy", good)
    raw = (cam / "frame_0001.npy").read_bytes()
    (cam / "frame_0001.npy").write_bytes(raw[: len(raw) // 2])
    # wrong dimensions: a 2-D image
    np.save(cam / "frame_0002.npy", good[0])
    (cam / "frame_0002.json").write_text(json.dumps({"voxel_size_um": list(VOXEL)}))
    # NaN / Inf
    bad = good.copy()
    bad[3, 3, 3] = np.nan
    np.save(cam / "frame_0003.npy", bad)
    (cam / "frame_0003.json").write_text(json.dumps({"voxel_size_um": list(VOXEL)}))
    # absurd declared size: a header claiming a 4096^3 volume, with 1 kB of data
    header = {"descr": "<f4", "fortran_order": False, "shape": (4096, 4096, 4096)}
    with open(cam / "frame_0004.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.write(b"\0" * 1024)
    (cam / "frame_0004.json").write_text(json.dumps({"voxel_size_um": list(VOXEL)}))
    # not a tomogram: text with a .tif name
    (cam / "frame_0005.tif").write_text("this is not an image")
    # unreadable: see the monkeypatch in the test
    _write_npy(cam / "frame_0006.npy", good)
    _write_npy(cam / "frame_0007.npy", good)
    return {
        "frame_0001.npy": "",
        "frame_0002.npy": "3-D",
        "frame_0003.npy": "NaN",
        "frame_0004.npy": "",
        "frame_0005.tif": "",
        "frame_0006.npy": "Permission",
    }


def test_bad_input_never_stops_the_stream(tmp_path, monkeypatch):
    import deepis_rt.io as dio

    cam, out = tmp_path / "cam", tmp_path / "out"
    cam.mkdir()
    expected = _bad_inputs(cam)
    real = dio.time_points

    def flaky(path, *a, **k):
        if Path(path).name == "frame_0006.npy":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(dio, "time_points", flaky)
    summary = Stream(cam, out, make_segmenter(), once=True, settle_s=0.0, use_events=False).run()
    rows = _rows(out / "frames.csv")
    assert [int(r["frame"]) for r in rows] == list(range(len(rows)))  # no gaps, no duplicates
    frames = {r["source"]: r for r in rows}
    assert frames["frame_0000.npy"]["status"] == "ok"
    assert frames["frame_0007.npy"]["status"] == "ok"
    for name, words in expected.items():
        assert frames[name]["status"] == "failed", name
        assert frames[name]["error"], name
        assert words.lower() in frames[name]["error"].lower(), (name, frames[name]["error"])
    log_lines = (out / "errors.log").read_text().splitlines()
    assert sorted(line.split(":")[0] for line in log_lines) == sorted(expected)
    assert summary["frames_failed"] == len(expected) and summary["frames_ok"] == 2
    # the absurd size was refused from its header, before reading (the file is only ~1 kB)
    assert "4096" in frames["frame_0004.npy"]["error"]


def test_order_by_number_and_once(tmp_path):
    cam, out = tmp_path / "cam", tmp_path / "out"
    cam.mkdir()
    for i in (3, 1, 10, 2):  # created out of order
        _write_npy(cam / f"frame_{i}.npy", conjugate_tomogram(0.0), time_s=float(i))
        time.sleep(0.01)
    Stream(cam, out, make_segmenter(), once=True, settle_s=0.0, use_events=False).run()
    rows = _rows(out / "frames.csv")
    assert [r["source"] for r in rows] == ["frame_1.npy", "frame_2.npy", "frame_3.npy", "frame_10.npy"]
    assert [float(r["time_s"]) for r in rows] == [1.0, 2.0, 3.0, 10.0]  # from the sidecars


def test_multi_time_point_tcf(tmp_path):
    import h5py

    cam, out = tmp_path / "cam", tmp_path / "out"
    cam.mkdir()
    radii = [0.0, 2.0, 3.0]
    with h5py.File(cam / "movie.tcf", "w") as f:
        f.attrs["FormatVersion"] = "1.4"
        grp = f.create_group("Data").create_group("3D")
        for ax, v in zip("ZYX", VOXEL, strict=True):
            grp.attrs[f"Resolution{ax}"] = v
        grp.attrs["TimeInterval"] = 4.0
        for i, r in enumerate(radii):
            # format 1.4 stores RI x 10 000 as integers
            grp.create_dataset(f"{i:06d}", data=np.round(conjugate_tomogram(r) * 10000).astype(np.uint16))
    Stream(cam, out, make_segmenter(), once=True, settle_s=0.0, use_events=False).run()
    rows = _rows(out / "frames.csv")
    assert [r["source"] for r in rows] == ["movie.tcf:t0000", "movie.tcf:t0001", "movie.tcf:t0002"]
    assert [float(r["time_s"]) for r in rows] == [0.0, 4.0, 8.0]
    assert all(r["status"] == "ok" for r in rows)
    assert sorted({int(r["frame"]) for r in _rows(out / "synapses.csv")}) == [1, 2]


def test_submit_callbacks_and_iteration(contact_series):
    radii, volumes = contact_series
    seen, events = [], []
    stream = Stream(None, None, make_segmenter(), on_frame=seen.append, on_synapse_event=events.append)
    with stream:
        for i, vol in enumerate(volumes):
            assert stream.submit(vol, time_s=5.0 * i, voxel_size_um=VOXEL) == i
        stream.end_input()
        results = list(stream)
    assert [r.frame for r in results] == list(range(len(volumes)))
    assert seen == results
    assert [len(r.synapses) for r in results] == [1 if r > 0 else 0 for r in radii]
    assert [e.kind for e in events if e.kind != "area_threshold_crossed"] == ["formed", "lost", "re-formed"]
    assert all(r.source.startswith("memory:") for r in results)
    # bad in-memory input: one failed result, the stream goes on
    with Stream(None, None, make_segmenter()) as s2:
        s2.submit(np.zeros((4, 4), np.float32), time_s=0.0, voxel_size_um=VOXEL)
        s2.submit(volumes[1], time_s=1.0, voxel_size_um=VOXEL)
        s2.end_input()
        res = list(s2)
    assert [r.status for r in res] == ["failed", "ok"]
    assert "3-D" in res[0].error


def test_events_carry_the_streams_frame_numbers_after_a_failed_frame(contact_series):
    """A frame that fails takes a frame number but never reaches the tracker: the synapse events of
    later frames still name the frame in which they happened (as frames.csv and synapses.csv do)."""
    radii, volumes = contact_series  # apart, forming, growing, growing, broken, re-formed
    events = []
    with Stream(None, None, make_segmenter(), on_synapse_event=events.append) as stream:
        stream.submit(np.zeros((4, 4), np.float32), time_s=0.0, voxel_size_um=VOXEL)  # frame 0 fails
        for i, vol in enumerate(volumes):
            stream.submit(vol, time_s=5.0 * (i + 1), voxel_size_um=VOXEL)  # frames 1..6
        stream.end_input()
        results = list(stream)
    assert [r.status for r in results] == ["failed"] + ["ok"] * len(volumes)
    by_kind = {e.kind: e for e in events if e.kind != "area_threshold_crossed"}
    assert [e.kind for e in events if e.kind != "area_threshold_crossed"] == ["formed", "lost", "re-formed"]
    assert (by_kind["formed"].frame, by_kind["lost"].frame, by_kind["re-formed"].frame) == (2, 5, 6)
    formed = next(r for r in results if r.frame == 2)
    assert formed.tracked.frame == 2 and [e.kind for e in formed.tracked.events][:1] == ["formed"]


_KILL_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {tests!r})
    from stream.stream_support import make_segmenter
    from deepis_rt.stream import Stream
    import deepis_rt.stream.results as results

    # slow down writing so that a kill lands inside a frame's commit sequence
    orig = results.CsvTable.append
    def slow_append(self, rows):
        orig(self, rows)
        time.sleep(0.3)
    results.CsvTable.append = slow_append
    Stream({cam!r}, {out!r}, make_segmenter(delay_s=0.2), once=True, settle_s=0.0, use_events=False,
           frame_interval_s=5.0).run()
    """
)


def test_restart_after_kill_mid_frame(tmp_path, contact_series):
    radii, volumes = contact_series
    cam, out = tmp_path / "cam", tmp_path / "out"
    cam.mkdir()
    for i, vol in enumerate(volumes):
        _write_npy(cam / f"frame_{i:04d}.npy", vol)
    script = tmp_path / "run.py"
    script.write_text(_KILL_SCRIPT.format(tests=str(Path(__file__).parents[1]), cam=str(cam), out=str(out)))
    proc = subprocess.Popen([sys.executable, str(script)])
    # kill once a couple of frames are committed and the next one is in flight
    deadline = time.time() + 120
    while time.time() < deadline:
        if (out / "frames.csv").exists() and len((out / "frames.csv").read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    time.sleep(0.35)  # inside the next frame's writes
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _rows(out / "frames.csv")
    assert 2 <= len(before) < len(volumes), "the kill should land mid-run"

    # second run on the same --out: continues, no duplicates, nothing lost
    Stream(cam, out, make_segmenter(), once=True, settle_s=0.0, use_events=False, frame_interval_s=5.0).run()
    frames = _rows(out / "frames.csv")
    assert [r["source"] for r in frames] == [f"frame_{i:04d}.npy" for i in range(len(volumes))]
    assert [int(r["frame"]) for r in frames] == list(range(len(volumes)))
    cells = _rows(out / "cells.csv")
    keys = [(r["frame"], r["cell_id"]) for r in cells]
    assert len(keys) == len(set(keys))
    assert sorted({int(r["frame"]) for r in cells}) == list(range(len(volumes)))
    syn = _rows(out / "synapses.csv")
    assert sorted(int(r["frame"]) for r in syn) == [i for i, r in enumerate(radii) if r > 0]
    # track ids continue across the restart (the tracker is rebuilt from the tables)
    assert len({r["track_id"] for r in cells if r["kind"] == "tcell"}) == 1
    assert len({(r["tcell_track"], r["target_track"]) for r in syn}) == 1
