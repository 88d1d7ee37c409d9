"""The reproducibility record in summary.json, ``--config`` re-runs from it, and ``--device N``."""

from __future__ import annotations

import json

import click
import pytest
import torch
import zarr
from click.testing import CliRunner
from stream_support import VOXEL, conjugate_distance

from deepis_rt.checkpoint import save_checkpoint
from deepis_rt.cli import main
from deepis_rt.cli.run_options import gpu_device
from deepis_rt.io import write_tomogram
from deepis_rt.model import build_model


@pytest.fixture
def camera(tmp_path, tiny_overrides):
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "tiny.pt", build_model("deepis-lite", **tiny_overrides),
                           meta={"voxel_size_um": list(VOXEL), "tile_zyx": [32, 64, 64]})
    cam = tmp_path / "cam"
    for i in range(2):
        write_tomogram(cam / f"frame_{i}.npy", 1.337 + 0.01 * (conjugate_distance(2.5) > 0), VOXEL, fmt="npy")
    return ckpt, cam


def test_summary_records_the_run_and_config_repeats_it(tmp_path, camera):
    ckpt, cam = camera
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["stream", "--source", str(cam), "--out", str(out), "--model", str(ckpt),
                                    "--backend", "torch", "--once", "--settle", "0", "--frame-interval", "2.5",
                                    "--zarr", "labels", "--no-masks", "--no-report"])
    assert res.exit_code == 0, res.output
    record = json.loads((out / "summary.json").read_text())["reproducibility"]
    assert set(record["versions"]) >= {"torch", "onnxruntime", "openvino", "tensorrt"}
    assert record["versions"]["torch"] == torch.__version__
    assert record["used"] == {**record["used"], "backend": "torch-cpu", "device": "cpu", "precision": "fp32"}
    options = record["command"]["options"]
    assert record["command"]["name"] == "stream" and options["frame_interval"] == 2.5
    assert options["zarr"] == "labels" and options["no_masks"] is True and options["model"] == str(ckpt.resolve())
    assert record["settings"]["frame_interval_s"] == 2.5 and record["settings"]["write_masks"] is False
    assert record["host"]["cpu"] and "gpus" in record["host"]
    sizes = {f["file"]: f["size_bytes"] for f in record["inputs"]}
    assert sizes == {p.name: p.stat().st_size for p in cam.glob("*.npy")}
    assert all(f["modified"] for f in record["inputs"])

    # the same run again, in another folder: every recorded setting comes back
    res = CliRunner().invoke(main, ["stream", "--config", str(out / "summary.json"), "--out", str(tmp_path / "again")])
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "again" / "summary.json").read_text())["reproducibility"]
    assert again["settings"] == record["settings"]
    assert {k: v for k, v in again["command"]["options"].items() if k != "out"} == \
        {k: v for k, v in options.items() if k != "out"}
    assert zarr.open_group(tmp_path / "again" / "timelapse.ome.zarr").attrs["deepis_rt"]["root_image"] == "labels"
    assert not any((tmp_path / "again" / "masks").iterdir()) and not (tmp_path / "again" / "report.html").exists()

    # an option given on the command line wins over the file
    res = CliRunner().invoke(main, ["stream", "--config", str(out / "summary.json"), "--out", str(tmp_path / "third"),
                                    "--zarr", "off"])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "third" / "timelapse.ome.zarr").exists()

    # a stream's record is not a batch's
    res = CliRunner().invoke(main, ["batch", str(cam), "--out", str(tmp_path / "b"), "--config",
                                    str(out / "summary.json")])
    assert res.exit_code == 2 and "records a `deepis-rt stream` run, not `deepis-rt batch`" in res.output


def test_config_without_a_record_is_refused(tmp_path):
    plain = tmp_path / "summary.json"
    plain.write_text(json.dumps({"frames_ok": 3}))
    res = CliRunner().invoke(main, ["stream", "--config", str(plain)])
    assert res.exit_code == 2 and "holds no recorded command" in res.output
    plain.write_text("{not json")
    res = CliRunner().invoke(main, ["stream", "--config", str(plain)])
    assert res.exit_code == 2 and "not readable as JSON" in res.output


@pytest.mark.parametrize("command", [["stream", "--source", "{cam}"], ["batch", "{cam}", "--out", "{tmp}/b"],
                                     ["bench", "--quick"], ["demo", "--out", "{tmp}/d"]])
def test_a_gpu_that_does_not_exist_is_refused_with_the_list(tmp_path, command):
    cam = tmp_path / "cam"
    cam.mkdir()
    args = [a.format(cam=cam, tmp=tmp_path) for a in command]
    n = torch.cuda.device_count()
    res = CliRunner().invoke(main, [*args, "--device", str(n)])
    assert res.exit_code == 2, res.output
    assert f"GPU {n} does not exist; GPUs here: " in res.output
    if n == 0:
        assert "none (no CUDA GPU visible to PyTorch" in res.output
    assert not (tmp_path / "d").exists()  # refused before anything was made


def test_gpu_device_lists_the_gpus_there_are():
    gpus = [{"index": 0, "name": "NVIDIA H100", "memory_gib": 79.2}, {"index": 1, "name": "NVIDIA H100",
                                                                       "memory_gib": 79.2}]
    assert gpu_device(1, gpus) == "cuda:1" and gpu_device(None, gpus) is None
    with pytest.raises(click.BadParameter, match=r"GPU 2 does not exist; GPUs here: 0: NVIDIA H100 \(79.2 GiB\); "
                                                 r"1: NVIDIA H100"):
        gpu_device(2, gpus)


def test_batch_records_its_command_and_config_repeats_it(tmp_path, camera):
    ckpt, cam = camera
    archive = tmp_path / "archive"
    archive.mkdir()
    cam.rename(archive / "dish1")
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["batch", str(archive), "--out", str(out), "--model", str(ckpt), "--backend", "torch",
                                    "--frame-interval", "4", "--zarr", "off", "--no-report", "--no-progress"])
    assert res.exit_code == 0, res.output
    command = json.loads((out / "batch_report.json").read_text())["settings"]["command"]
    assert command["name"] == "batch" and command["options"]["frame_interval"] == 4.0
    assert json.loads((out / "dish1" / "summary.json").read_text())["reproducibility"]["settings"]["zarr"] == "off"

    res = CliRunner().invoke(main, ["batch", "--config", str(out / "batch_report.json"), "--out", str(tmp_path / "b2")])
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "b2" / "batch_report.json").read_text())["settings"]["command"]["options"]
    assert {k: v for k, v in again.items() if k != "out"} == {k: v for k, v in command["options"].items() if k != "out"}
    assert not (tmp_path / "b2" / "dish1" / "timelapse.ome.zarr").exists()
