"""Tiled TCF time-lapses, RI decoding and --ri-scale through Stream, `stream` and `batch`."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from stream_support import SHAPE, VOXEL, conjugate_tomogram, make_segmenter

from deepis_rt.stream import Stream

sys.path.insert(0, str(Path(__file__).parents[1] / "io"))
from tcf_helpers import write_classic_tcf, write_tiled_tcf  # noqa: E402

RADII = [0.0, 2.0, 2.6, 0.0, 2.8]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _run(cam: Path, out: Path, **settings) -> None:
    Stream(cam, out, make_segmenter(), once=True, settle_s=0.0, use_events=False, **settings).run()


@pytest.mark.slow
def test_tiled_time_lapse_expands_exactly_like_a_classic_one_with_restart(tmp_path):
    vols = [conjugate_tomogram(r, shift_um=0.1 * i) for i, r in enumerate(RADII)]
    results = {}
    for layout in ("classic", "tiled"):
        cam, out = tmp_path / layout / "cam", tmp_path / layout / "out"
        cam.mkdir(parents=True)
        if layout == "classic":
            write_classic_tcf(cam / "movie.tcf", vols, as_uint16=True, time_interval_s=4.0)
        else:  # ragged tile grid with padded edge tiles and a preview
            write_tiled_tcf(cam / "movie.tcf", vols, uint8=False, tile=(12, 24, 40), pad_to=(12, 24, 40),
                            time_interval_s=4.0)
        _run(cam, out, max_frames=2)  # stopped after two frames, then continued
        assert len(_rows(out / "frames.csv")) == 2
        _run(cam, out)
        results[layout] = (_rows(out / "frames.csv"), _rows(out / "synapses.csv"), _rows(out / "cells.csv"))
    frames, syn, cells = results["tiled"]
    assert [r["source"] for r in frames] == [f"movie.tcf:t{i:04d}" for i in range(len(RADII))]
    assert [int(r["frame"]) for r in frames] == list(range(len(RADII)))
    assert [float(r["time_s"]) for r in frames] == [4.0 * i for i in range(len(RADII))]
    assert all(r["status"] == "ok" for r in frames)
    assert sorted({int(r["frame"]) for r in syn}) == [i for i, r in enumerate(RADII) if r > 0]
    drop = ("latency_ms", "read_ms", "preprocess_ms", "infer_ms", "analyze_ms", "track_ms", "write_ms",
            "postprocess_ms", "done_at")
    strip = [{k: v for k, v in r.items() if k not in drop} for r in frames]
    assert strip == [{k: v for k, v in r.items() if k not in drop} for r in results["classic"][0]]
    assert syn == results["classic"][1] and cells == results["classic"][2]  # identical measurements


def test_broken_tiled_time_point_is_a_failed_frame_and_the_later_ones_are_read(tmp_path):
    cam, out = tmp_path / "cam", tmp_path / "out"
    cam.mkdir()
    write_tiled_tcf(cam / "movie.tcf", [conjugate_tomogram(r) for r in RADII[:3]], uint8=True,
                    tile=(16, 32, 32), pad_to=None, time_interval_s=4.0)
    with h5py.File(cam / "movie.tcf", "r+") as f:
        del f["Data/3D/000001/TILE_01"]
    _run(cam, out)
    frames = _rows(out / "frames.csv")
    assert [r["status"] for r in frames] == ["ok", "failed", "ok"]  # the time point after it is not lost
    assert [r["source"] for r in frames] == [f"movie.tcf:t{i:04d}" for i in range(3)]
    assert [float(r["time_s"]) for r in frames] == [0.0, 4.0, 8.0]
    assert "time point 1" in frames[1]["error"] and "TILE_01 is missing" in frames[1]["error"]
    assert len(list((out / "masks").iterdir())) == 2  # no mask for the broken frame
    assert "TILE_01" in (out / "errors.log").read_text()
    _run(cam, out)  # a second run: every time point is recorded, nothing is read or added again
    assert _rows(out / "frames.csv") == frames


def test_submit_decodes_integers_and_takes_an_explicit_scale():
    tomo = conjugate_tomogram(2.5)
    counts = np.round((tomo - 1.4) * 1000).astype(np.uint8)  # 0.0 .. 0.15 above 1.4, in 1/1000
    with Stream(None, None, make_segmenter()) as s:
        s.submit(np.round(tomo * 10000).astype(np.uint16), time_s=0.0, voxel_size_um=VOXEL)
        s.submit(counts, time_s=1.0, voxel_size_um=VOXEL)
        s.submit(counts, time_s=2.0, voxel_size_um=VOXEL, ri_scale=1e-3, ri_offset=1.4)
        s.end_input()
        res = list(s)
    assert [r.status for r in res] == ["ok", "failed", "ok"]
    assert "--ri-scale" in res[1].error
    assert len(res[0].synapses) == len(res[2].synapses) == 1
    assert res[2].synapses[0].is_area_um2 == pytest.approx(res[0].synapses[0].is_area_um2, rel=0.1)
    # the stream's own setting applies to submitted volumes too, and is recorded in the summary
    with Stream(None, None, make_segmenter(), ri_scale=1e-3, ri_offset=1.4) as s:
        s.submit(counts, time_s=0.0, voxel_size_um=VOXEL)
        s.end_input()
        assert [r.status for r in s] == ["ok"]
        assert s.summary()["ri_scale"] == 1e-3 and s.summary()["ri_offset"] == 1.4


@pytest.fixture
def tiny_ckpt(tmp_path, tiny_overrides):
    from deepis_rt.checkpoint import save_checkpoint
    from deepis_rt.model import build_model

    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "tiny.pt", build_model("deepis-lite", **tiny_overrides),
                           meta={"voxel_size_um": list(VOXEL), "tile_zyx": list(SHAPE)})


def _counts(n: int) -> list[np.ndarray]:
    """Volumes stored as (RI - 1.3) x 2000 in uint8: a convention only --ri-scale can state."""
    base = 1.337 + 0.02 * (conjugate_tomogram(2.5) > 1.5)
    return [np.round((base - 1.3) * 2000).astype(np.uint8) for _ in range(n)]


@pytest.mark.slow
def test_ri_scale_end_to_end_through_the_stream_cli(tmp_path, tiny_ckpt):
    from deepis_rt.cli import main
    from deepis_rt.io import write_tomogram

    cam = tmp_path / "cam"
    cam.mkdir()
    for i, c in enumerate(_counts(2)):
        np.save(cam / f"frame_{i}.npy", c)
        (cam / f"frame_{i}.json").write_text(json.dumps({"voxel_size_um": list(VOXEL)}))
    base = ["stream", "--source", str(cam), "--model", str(tiny_ckpt), "--backend", "torch", "--once",
            "--settle", "0", "--jsonl"]
    res = CliRunner().invoke(main, [*base, "--out", str(tmp_path / "refused")])
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert [x["status"] for x in lines] == ["failed", "failed"]
    assert "do not follow the RI x 10 000" in lines[0]["error"] and "--ri-scale" in lines[0]["error"]
    out = tmp_path / "scaled"
    res = CliRunner().invoke(main, [*base, "--out", str(out), "--ri-scale", "0.0005", "--ri-offset", "1.3"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    assert [x["status"] for x in lines] == ["ok", "ok"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ri_scale"] == 0.0005 and summary["ri_offset"] == 1.3
    # the same frames stored as float RI give the same masks: the scaling was applied exactly once
    ref_cam = tmp_path / "ref_cam"
    for i, c in enumerate(_counts(2)):
        write_tomogram(ref_cam / f"frame_{i}.npy", c.astype(np.float32) * np.float32(0.0005) + np.float32(1.3),
                       VOXEL, fmt="npy")
    ref = tmp_path / "ref"
    CliRunner().invoke(main, [*base[:2], str(ref_cam), *base[3:], "--out", str(ref)])
    ref_cells, got_cells = _rows(ref / "cells.csv"), _rows(out / "cells.csv")
    assert ref_cells and [{k: v for k, v in r.items() if k != "time_s"} for r in ref_cells] == \
        [{k: v for k, v in r.items() if k != "time_s"} for r in got_cells]


@pytest.mark.slow
def test_batch_with_a_tiled_tcf_and_ri_scale(tmp_path, tiny_ckpt):
    from deepis_rt.cli import main

    archive = tmp_path / "archive"
    (archive / "cellC").mkdir(parents=True)
    for i, c in enumerate(_counts(2)):
        np.save(archive / "cellC" / f"frame_{i}.npy", c)
        (archive / "cellC" / f"frame_{i}.json").write_text(json.dumps({"voxel_size_um": list(VOXEL)}))
    write_tiled_tcf(archive / "movie.tcf", [conjugate_tomogram(r) for r in RADII[:3]], uint8=False,
                    tile=(16, 32, 32), pad_to=(16, 32, 48))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["batch", str(archive), "--out", str(out), "--model", str(tiny_ckpt),
                                    "--backend", "torch", "--ri-scale", "0.0005", "--ri-offset", "1.3",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    assert [r["source"] for r in _rows(out / "movie" / "frames.csv")] == [f"movie.tcf:t{i:04d}" for i in range(3)]
    assert all(r["status"] == "ok" for item in ("movie", "cellC") for r in _rows(out / item / "frames.csv"))
    assert json.loads((out / "cellC" / "summary.json").read_text())["ri_scale"] == 0.0005
    assert json.loads((out / "batch_report.json").read_text())["settings"]["ri_scale"] == 0.0005


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys, tracemalloc
    sys.path.insert(0, {tests!r})
    from stream.stream_support import IdentityRunner
    from deepis_rt.runtime import Segmenter
    from deepis_rt.stream import Stream

    def status_mib(key):  # VmRSS now, VmHWM peak of this process image (ru_maxrss would include the
        # parent's RSS: Linux carries it over the fork/exec that started this interpreter)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024

    meta = {{"voxel_size_um": [0.5, 0.25, 0.25], "ri_normalization": {{"offset": 1.337, "scale": 0.02}},
            "medium_ri": 1.337, "tile_zyx": {shape!r}}}
    # without the analysis (a per-frame cost that does not depend on the file) frames fail at the
    # tracker, after reading, preprocessing, inference and labels: the path that holds frames
    seg = Segmenter(IdentityRunner(), meta, analyze=False)
    import laptrack, scipy.ndimage  # imported by every stream anyway; not counted as frame memory
    import zarr, matplotlib.pyplot, deepis_rt.report.html  # the time-lapse store and the end-of-run report: the same
    before = status_mib("VmRSS")
    tracemalloc.start()
    Stream({cam!r}, {out!r}, seg, once=True, settle_s=0.0, use_events=False, write_masks=False,
           queue_size=1, max_batch=1).run()
    traced_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    peak = status_mib("VmHWM")
    print(json.dumps({{"rss_growth_mib": peak - before, "traced_peak_mib": traced_peak, "rss_before_mib": before}}))
    """
)


@pytest.mark.slow
def test_streaming_a_30_time_point_tiled_tcf_keeps_memory_to_a_few_frames(tmp_path):
    """30 time points of 32 x 512 x 512: 32 MiB each as float32, 960 MiB for the whole file.

    With one frame per queue the pipeline still holds several frames at its fullest: one in each
    queue, one in each stage, one more in a stage blocked on handing its output on, and the
    normalised copy beside its input; how many at once depends on thread timing (7 to 12 frames of
    traced allocations measured on a 2-core machine). Bounds: 16 frames traced, 24 of process RSS
    growth (RSS also counts what the allocator's per-thread arenas keep after frames are freed: 19 to
    21 frames measured once the stream gained its scheduler and time-lapse store, while the traced
    peak stayed at 12 to 13.5); reading the file whole would add 30 on top.
    """
    shape = (32, 512, 512)
    frame_mib = np.prod(shape) * 4 / 2**20
    n = 30
    cam, out = tmp_path / "cam", tmp_path / "out"
    cam.mkdir()
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    cell = ((zz - 16) ** 2 * 4 + (yy - 256) ** 2 + (xx - 256) ** 2 < 80**2)

    class Volumes(Sequence):  # one volume in memory at a time while writing
        def __len__(self):
            return n

        def __getitem__(self, t):
            if not 0 <= t < n:
                raise IndexError(t)
            return np.float32(1.337) + np.float32(0.03) * cell.astype(np.float32) + np.float32(0.0005) * t

    write_tiled_tcf(cam / "lapse.tcf", Volumes(), uint8=False, tile=(32, 256, 256), pad_to=None, preview=False,
                    keep_expected=False)
    bound, rss_bound = 16 * frame_mib, 24 * frame_mib
    assert n * frame_mib > 1.8 * bound  # reading the file whole would clearly break the traced bound
    script = _MEMORY_SCRIPT.format(tests=str(Path(__file__).parents[1]), cam=str(cam), out=str(out),
                                   shape=list(shape))
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"memory: {got}, bounds {bound:.0f} / {rss_bound:.0f} MiB, whole file {n * frame_mib:.0f} MiB")
    frames = _rows(out / "frames.csv")
    assert [r["source"] for r in frames] == [f"lapse.tcf:t{i:04d}" for i in range(n)]
    assert all(r["error"].startswith("tracker |") for r in frames)  # every frame went through inference
    assert got["traced_peak_mib"] < bound, got
    assert got["rss_growth_mib"] < rss_bound, got
