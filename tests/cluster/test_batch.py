"""`run_batch` / `deepis-rt batch`: an archive of tiny synthetic time-lapses, a broken item, resume, Ray."""

from __future__ import annotations

import csv
import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cluster_helpers import META, TILE

from deepis_rt.backends.fake import FakeRunner
from deepis_rt.cluster.ray_batch import find_items, make_segmenter, run_batch

#: picklable (Ray ships it to the workers): a Segmenter around the point-wise FakeRunner
FACTORY = functools.partial(make_segmenter, functools.partial(FakeRunner, fixed_spatial_zyx=TILE), META)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """cellA/ (folder of 2 frames + labels/, distance/), cellB.ome.tif (2 time points), broken/ (corrupt)."""
    import tifffile

    from deepis_rt.synth import generate_timelapse, write_timelapse

    root = tmp_path_factory.mktemp("archive")
    write_timelapse(root / "cellA", 2, seed=1, shape=TILE, progress=False)
    frames = generate_timelapse(2, seed=2, shape=TILE)
    vz, vy, vx = frames[0].voxel_size_um
    tifffile.imwrite(root / "cellB.ome.tif", np.stack([f.ri for f in frames]).astype(np.float32), ome=True,
                     metadata={"axes": "TZYX", "PhysicalSizeZ": vz, "PhysicalSizeY": vy, "PhysicalSizeX": vx})
    (root / "broken").mkdir()
    (root / "broken" / "frame_000000.npy").write_bytes(b"not a numpy file")
    return root


def _copy(archive: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(archive, tmp_path / "archive"))


def test_find_items(archive, tmp_path):
    items = find_items(archive, out=archive / "results")
    assert [(it.name, it.kind) for it in items] == [("broken", "folder"), ("cellA", "folder"), ("cellB", "file")]
    (archive / "results" / "x").mkdir(parents=True)  # an --out inside the archive is not an item
    (archive / "results" / "x" / "frame_0.npy").write_bytes(b"")
    assert [it.name for it in find_items(archive, out=archive / "results")] == ["broken", "cellA", "cellB"]
    shutil.rmtree(archive / "results")
    from deepis_rt.errors import InputError

    with pytest.raises(InputError, match="no time-lapse"):
        find_items(tmp_path)


def _check_outputs(out: Path, report) -> None:
    by_item = {it["item"]: it for it in report.items}
    assert by_item["cellA"]["status"] == "ok" and by_item["cellB"]["status"] == "ok"
    assert by_item["cellA"]["frames_ok"] == 2 and by_item["cellB"]["frames_ok"] == 2
    broken = by_item["broken"]
    assert broken["status"] == "failed" and broken["attempts"] == 2  # 1 + retries
    assert "frame_000000.npy" in broken["error"]
    for name in ("cellA", "cellB"):  # exactly what `stream` writes
        for f in ("frames.csv", "cells.csv", "synapses.csv", "summary.json"):
            assert (out / name / f).is_file(), (name, f)
        assert len(list((out / name / "masks").glob("*.tif"))) == 2
        assert [r["status"] for r in _rows(out / name / "frames.csv")] == ["ok", "ok"]
    assert {r["source"] for r in _rows(out / "cellB" / "frames.csv")} == {"cellB.ome.tif:t0000", "cellB.ome.tif:t0001"}
    combined = _rows(out / "synapses_all.csv")
    expected = [(name, r["frame"], r["is_area_um2"]) for name in ("cellA", "cellB")
                for r in _rows(out / name / "synapses.csv")]
    assert [(r["item"], r["frame"], r["is_area_um2"]) for r in combined] == expected
    saved = json.loads((out / "batch_report.json").read_text())
    assert saved["counts"] == report.counts
    assert {it["item"]: it["status"] for it in saved["items"]} == {"broken": "failed", "cellA": "ok", "cellB": "ok"}


def test_batch_in_process_resume_and_repair(archive, tmp_path):
    src, out = _copy(archive, tmp_path), tmp_path / "out"
    seen: list[str] = []
    report = run_batch(src, out, segmenter_factory=FACTORY, retries=1, progress=False,
                       on_item=lambda r: seen.append(r["item"]))
    assert report.counts == {"ok": 2, "partial": 0, "failed": 1, "skipped": 0}
    assert sorted(seen) == ["broken", "cellA", "cellB"]
    _check_outputs(out, report)
    mtime = (out / "cellA" / "frames.csv").stat().st_mtime_ns

    # resume: finished items are skipped, the failed one is tried again, an interrupted one is continued
    frames = (out / "cellB" / "frames.csv").read_text().splitlines(keepends=True)
    (out / "cellB" / "frames.csv").write_text("".join(frames[:-1]))  # lost its last committed frame ...
    (out / ".batch" / "items" / "cellB.json").unlink()  # ... and its 'done' marker
    report = run_batch(src, out, segmenter_factory=FACTORY, retries=0, progress=False)
    assert report.counts == {"ok": 1, "partial": 0, "failed": 1, "skipped": 1}
    assert (out / "cellA" / "frames.csv").stat().st_mtime_ns == mtime
    rows = _rows(out / "cellB" / "frames.csv")  # continued: one frame redone, none duplicated
    assert [(r["frame"], r["source"]) for r in rows] == [("0", "cellB.ome.tif:t0000"), ("1", "cellB.ome.tif:t0001")]

    # the broken item repaired: it is processed afresh (no stale failed row), the others stay skipped
    from deepis_rt.io import write_tomogram
    from deepis_rt.synth import generate_timelapse

    (src / "broken" / "frame_000000.npy").unlink()
    frame = generate_timelapse(1, seed=3, shape=TILE)[0]
    write_tomogram(src / "broken" / "frame_000000.npy", frame.ri, frame.voxel_size_um)
    report = run_batch(src, out, segmenter_factory=FACTORY, progress=False)
    assert report.counts == {"ok": 1, "partial": 0, "failed": 0, "skipped": 2}
    assert [r["status"] for r in _rows(out / "broken" / "frames.csv")] == ["ok"]
    assert {r["item"] for r in _rows(out / "synapses_all.csv")} <= {"broken", "cellA", "cellB"}


def test_batch_model_that_cannot_load(archive, tmp_path):
    report = run_batch(_copy(archive, tmp_path), tmp_path / "out", model=tmp_path / "missing.pt", backend="torch",
                       retries=0, progress=False)
    assert report.counts["failed"] == 3
    assert all("could not load the model" in it["error"] for it in report.items)


@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray", reason="needs Ray (pip install 'deepis-rt[cluster]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_batch_on_ray(archive, tmp_path, ray_runtime):
    src, out = _copy(archive, tmp_path), tmp_path / "out"
    report = run_batch(src, out, segmenter_factory=FACTORY, ray_address="local", retries=1, progress=False,
                       num_workers=5)
    assert report.engine == "ray" and "2 worker(s)" in report.settings["workers"]  # capped at what fits (2 CPUs)
    _check_outputs(out, report)
    assert ray_runtime.is_initialized()  # a runtime the caller started is left running
    assert len({it["worker"] for it in report.items}) == 2  # both actors worked


def test_cli_batch(archive, tmp_path):
    from click.testing import CliRunner

    from deepis_rt.checkpoint import save_checkpoint
    from deepis_rt.cli.main import main
    from deepis_rt.model import build_model

    ckpt = save_checkpoint(tmp_path / "tiny.pt", build_model("deepis-lite", widths=(4, 8, 8, 8, 8), skip_width=4),
                           meta={"tile_zyx": list(TILE)})
    src, out = _copy(archive, tmp_path), tmp_path / "out"
    shutil.rmtree(src / "cellA")
    res = CliRunner().invoke(main, ["batch", str(src), "--out", str(out), "--model", str(ckpt), "--backend",
                                    "torch", "--retries", "0", "--no-masks", "--no-progress"])
    assert res.exit_code == 1, res.output  # the broken item failed
    assert "1 ok" in res.output and "broken: failed after 1 attempt(s)" in res.output
    assert [r["status"] for r in _rows(out / "cellB" / "frames.csv")] == ["ok", "ok"]
    assert not (out / "cellB" / "masks").exists() or not list((out / "cellB" / "masks").iterdir())
    summary = json.loads((out / "cellB" / "summary.json").read_text())
    assert summary["backend"] == "torch-cpu"


def test_cli_batch_takes_the_backends_and_precision_of_stream(archive, tmp_path):
    from click.testing import CliRunner

    from deepis_rt.checkpoint import save_checkpoint
    from deepis_rt.cli.main import main
    from deepis_rt.model import build_model

    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install openvino)")
    ckpt = save_checkpoint(tmp_path / "tiny.pt", build_model("deepis-lite", widths=(4, 8, 8, 8, 8), skip_width=4),
                           meta={"tile_zyx": list(TILE)})
    src, out = _copy(archive, tmp_path), tmp_path / "out"
    shutil.rmtree(src / "broken")
    shutil.rmtree(src / "cellA")
    res = CliRunner().invoke(main, ["batch", str(src), "--out", str(out), "--model", str(ckpt), "--backend",
                                    "openvino", "--precision", "fp32", "--retries", "0", "--no-masks", "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "cellB" / "summary.json").read_text())
    assert summary["backend"] == "openvino-cpu"


def test_combine_synapses(tmp_path):
    from deepis_rt.analysis.tables import SYNAPSE_COLUMNS
    from deepis_rt.cluster.ray_batch import combine_synapses

    for name, areas in (("b/cell2", [3.5]), ("a", [1.0, 2.0]), ("c", [])):
        (tmp_path / name).mkdir(parents=True)
        with open(tmp_path / name / "synapses.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=SYNAPSE_COLUMNS)
            w.writeheader()
            for i, area in enumerate(areas):
                w.writerow({**dict.fromkeys(SYNAPSE_COLUMNS, 0), "frame": i, "is_area_um2": area})
    path = combine_synapses(tmp_path, ["c", "b/cell2", "a", "missing"])
    rows = _rows(path)
    assert list(rows[0]) == ["item", *SYNAPSE_COLUMNS]
    assert [(r["item"], r["frame"], r["is_area_um2"]) for r in rows] == [
        ("a", "0", "1.0"), ("a", "1", "2.0"), ("b/cell2", "0", "3.5")]
