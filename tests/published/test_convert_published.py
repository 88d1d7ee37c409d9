"""``deepis-rt convert`` and the commands that take a published-DeepIS file directly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from log_capture import captured_warnings
from unet3d_glob_reference import make_reference, reference_output_zyx, save_like_cnntrainer

from deepis_rt.checkpoint import load_checkpoint
from deepis_rt.cli.main import main
from deepis_rt.errors import ConfigError
from deepis_rt.io import write_tomogram

FS, TF = 16, 4





@pytest.fixture(scope="module")
def published(tmp_path_factory):
    folder = tmp_path_factory.mktemp("published")
    net = make_reference(FS, TF, seed=7)
    return net, save_like_cnntrainer(net, folder / "epoch[0099]_losssum[0.100000].pth.tar", epoch=99)


def test_convert_round_trip(published, tmp_path, caplog):
    net, path = published
    out = tmp_path / "deepis2020.pt"
    args = ["convert", str(path), str(out), "--input-offset", "1.33", "--input-scale", "100",
            "--output-unit", "voxel", "--output-scale", "0.5", "--voxel-size", "0.2", "0.1", "0.1",
            "--tile", "16", "32", "32"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "still assumed" not in res.output
    payload = torch.load(out, weights_only=True)
    assert payload["format"] == "deepis-rt-checkpoint" and "optimizer" not in payload
    assert not any(k.startswith(("ConBR0", "classifier")) for k in payload["state_dict"])
    with captured_warnings(caplog):
        ckpt = load_checkpoint(out)
    assert not [r for r in caplog.records if "ASSUMED" in r.getMessage()]
    meta = ckpt.meta
    assert meta["ri_normalization"] == {"offset": 1.33, "scale": pytest.approx(0.01)}
    assert meta["voxel_size_um"] == [0.2, 0.1, 0.1] and list(ckpt.tile_zyx) == [16, 32, 32]
    assert meta["distance_output"]["unit"] == "voxel" and meta["assumed"] == []
    factor = 0.5 * 0.1  # output in voxels x 0.5, one voxel = 0.1 um
    assert meta["distance_output"]["folded_factor_um"] == pytest.approx(factor)
    assert meta["training"]["epoch"] == 99 and meta["source"]["file"] == path.name
    # the network now returns um: the original's output times the factor, on the same voxels
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.no_grad():
        got = ckpt.build()(x).numpy()
    ref = reference_output_zyx(net, x).numpy() * factor
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    # converting again does not compound the folded factor
    again = tmp_path / "again.pt"
    assert CliRunner().invoke(main, ["convert", str(out), str(again), "--output-unit", "um",
                                     "--output-scale", "2"]).exit_code == 0
    with torch.no_grad():
        got2 = load_checkpoint(again).build()(x).numpy()
    ref2 = reference_output_zyx(net, x).numpy() * 2
    assert np.abs(got2 - ref2).max() <= 1e-5 * np.abs(ref2).max()
    info = CliRunner().invoke(main, ["info", "--json", str(out)])
    desc = json.loads(info.output[info.output.index("{"):])
    assert desc["kind"] == "checkpoint" and desc["distance_output"]["unit"] == "voxel" and "assumed" not in desc


def test_convert_partial_keeps_the_rest_assumed(published, tmp_path, caplog):
    _, path = published
    out = tmp_path / "partial.pt"
    res = CliRunner().invoke(main, ["convert", str(path), str(out), "--ri-normalization", "1.337", "0.02"])
    assert res.exit_code == 0, res.output
    assert "still assumed (not stated): distance_output, voxel_size_um" in res.output
    with captured_warnings(caplog):
        ckpt = load_checkpoint(out)
    notes = [r.getMessage() for r in caplog.records if "ASSUMED" in r.getMessage()]
    assert len(notes) == 1 and "--output-unit" in notes[0] and "--ri-normalization" not in notes[0]
    assert ckpt.meta["ri_normalization"] == {"offset": 1.337, "scale": 0.02}
    assert CliRunner().invoke(main, ["convert", str(path), str(out)]).exit_code != 0  # exists, no --force


def test_convert_refuses_contradictions(published, tmp_path):
    from deepis_rt.convert import convert_checkpoint

    _, path = published
    with pytest.raises(ConfigError, match="not both"):
        convert_checkpoint(path, tmp_path / "a.pt", ri_normalization=(1.3, 0.1), input_offset=1.3, input_scale=10)
    with pytest.raises(ConfigError, match="needs --voxel-size"):
        convert_checkpoint(path, tmp_path / "b.pt", output_unit="voxel")
    with pytest.raises(ConfigError, match="multiples of 16"):
        convert_checkpoint(path, tmp_path / "c.pt", tile_zyx=(10, 32, 32))
    with pytest.raises(ConfigError, match=r"look like nanometres: in micrometres that is \[0\.2, 0\.1, 0\.1\]"):
        convert_checkpoint(path, tmp_path / "e.pt", voxel_size_um=(200, 100, 100))
    res = CliRunner().invoke(main, ["convert", str(path), str(tmp_path / "d.pt"), "--input-offset", "1.3"])
    assert res.exit_code == 2 and "go together" in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_commands_take_the_published_file_directly(published, tmp_path):
    """export, batch, stream and bench --model run a .pth.tar as it is, and say what they assume."""
    _, path = published
    res = CliRunner().invoke(main, ["export", str(path), "--out", str(tmp_path / "exp"), "--name", "p",
                                    "--no-trt", "--no-fp16"])
    assert res.exit_code == 0, res.output
    assert "ASSUMED" in res.output or "ASSUMED" in (res.stderr if res.stderr_bytes is not None else "")
    assert (tmp_path / "exp" / "p" / "p.fp32.onnx").is_file()

    cam = tmp_path / "cam"
    vol = np.full((32, 64, 64), 1.337, np.float32)
    vol[8:24, 16:48, 8:30] = 1.37
    vol[8:24, 16:48, 34:56] = 1.36
    write_tomogram(cam / "frame_0.npy", vol, (0.5, 0.25, 0.25), fmt="npy")
    for cmd in (["batch", str(cam), "--out", str(tmp_path / "b")],
                ["stream", "--source", str(cam), "--out", str(tmp_path / "s"), "--once", "--settle", "0"]):
        res = CliRunner().invoke(main, [*cmd, "--model", str(path), "--backend", "torch"])
        assert res.exit_code == 0, res.output
        (csv,) = (tmp_path / cmd[cmd.index("--out") + 1]).rglob("frames.csv")  # batch: one folder per item
        frames = csv.read_text().splitlines()
        assert len(frames) == 2 and ",ok," in frames[1]
    res = CliRunner().invoke(main, ["bench", "--model", str(path), "--backends", "cpu", "--batch", "1",
                                    "--frames", "1", "--warmup", "0", "--quick", "--threads", "1",
                                    "--tile", "16", "32", "32", "--cache-dir", str(tmp_path / "c"),
                                    "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert "epoch[0099]" in json.dumps(report)
