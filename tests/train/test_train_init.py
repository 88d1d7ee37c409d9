"""Fine-tuning: ``train(init=...)`` / ``deepis-rt train --init`` starts from a checkpoint's weights."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from deepis_rt.checkpoint import load_checkpoint, save_checkpoint
from deepis_rt.model import build_model
from deepis_rt.train import evaluate_frames, train
from deepis_rt.train.data import FolderSource
from deepis_rt.train.loop import _FolderFrame

VS = (0.5, 0.25, 0.25)


def _tiny(tiny_overrides, **kw):
    base = dict(tile_zyx=(16, 32, 32), crop_zyx=(16, 32, 32), batch=1, val_frames=0, pool_size=1,
                refresh_every=10**6, save_every=0, threads=1, seed=3)
    base.update(kw)
    return base


@pytest.fixture(scope="module")
def lab_frames(tmp_path_factory):
    """Three annotated frames in the training layout (tomograms + labels/)."""
    from deepis_rt.synth import write_timelapse

    root = tmp_path_factory.mktemp("lab")
    write_timelapse(root, 3, 11, shape=(16, 32, 32), voxel_size_um=VS, fmt="npy", progress=False)
    return root


@pytest.fixture(scope="module")
def start_ckpt(tmp_path_factory, tiny_overrides):
    """A tiny checkpoint with its own input normalisation (not the training default)."""
    torch.manual_seed(7)
    model = build_model("deepis-lite", **tiny_overrides)
    path = tmp_path_factory.mktemp("init") / "start.pt"
    save_checkpoint(path, model, meta={"voxel_size_um": list(VS), "tile_zyx": [16, 32, 32],
                                       "ri_normalization": {"offset": 1.34, "scale": 0.03},
                                       "description": "test start"})
    return path


def _conv_weights(state_dict):
    return {k: v for k, v in state_dict.items() if v.dim() == 5}


def test_init_starts_from_the_checkpoint_and_keeps_its_normalisation(tmp_path, start_ckpt, lab_frames):
    start = load_checkpoint(start_ckpt)
    res = train(tmp_path / "tuned.pt", synthetic=False, data_dir=str(lab_frames), init=str(start_ckpt),
                voxel_size_um=None, steps=1, lr=1e-12, **_tiny({}, val_frames=1))
    tuned = load_checkpoint(tmp_path / "tuned.pt")
    # a learning rate of 1e-12: the weights are the starting checkpoint's, not a fresh initialisation
    for k, v in _conv_weights(start.state_dict).items():
        assert torch.allclose(tuned.state_dict[k], v, atol=1e-8), k
    assert tuned.config == start.config
    assert tuned.meta["ri_normalization"] == {"offset": 1.34, "scale": 0.03}
    init = tuned.meta["training"]["init"]
    assert init["sha256"] == start.sha256 and "start.pt" in tuned.meta["description"]
    # the validation before training is that of the starting checkpoint on the held-out frame
    held_out = FolderSource(lab_frames, VS).items[-1:]
    expected, _ = evaluate_frames(start.build(), [_FolderFrame(s, VS) for s in held_out], (1.34, 0.03))
    assert res["metrics_before"]["dice_cart_mean"] == pytest.approx(expected["dice_cart_mean"])
    assert init["validation_before"]["dice_cart_mean"] == pytest.approx(expected["dice_cart_mean"])
    assert [v["step"] for v in tuned.meta["metrics"]["validation_history"]] == [0, 1]


def test_init_at_the_data_voxel_size_records_it(tmp_path, start_ckpt, caplog):
    """A lab's frames at their own voxel size: the network is fine-tuned at it, with a warning."""
    from deepis_rt.synth import write_timelapse

    other = (0.4, 0.2, 0.2)
    write_timelapse(tmp_path / "lab", 2, 12, shape=(16, 32, 32), voxel_size_um=other, fmt="npy", progress=False)
    with caplog.at_level("WARNING", logger="deepis_rt"):
        train(tmp_path / "x.pt", synthetic=False, data_dir=str(tmp_path / "lab"), init=str(start_ckpt),
              voxel_size_um=other, steps=1, **_tiny({}))
    assert load_checkpoint(tmp_path / "x.pt").voxel_size_um == other
    assert "trained at [0.5, 0.25, 0.25] um voxels and is fine-tuned at [0.4, 0.2, 0.2] um" in caplog.text


def test_init_bundled_checkpoint_resolves():
    """``--init bundled`` names the shipped checkpoint; its voxel size and architecture are taken."""
    from deepis_rt.checkpoint import bundled_checkpoint_path
    from deepis_rt.train import init as init_mod

    loaded = init_mod.load_init("bundled")
    bundled = load_checkpoint(bundled_checkpoint_path())
    assert loaded.record["sha256"] == bundled.sha256
    assert loaded.voxel_size_um == bundled.voxel_size_um and loaded.tile_zyx == bundled.tile_zyx


def test_cli_train_init_shows_validation_before_and_after(tmp_path, start_ckpt, lab_frames):
    from deepis_rt.cli.main import main

    out = tmp_path / "cli.pt"
    res = CliRunner().invoke(main, ["train", "--data", str(lab_frames), "--init", str(start_ckpt), "--out", str(out),
                                    "--steps", "2", "--batch", "1", "--crop", "16", "32", "32", "--threads", "1",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "validation before (--init" in res.output and "validation after: dice_cart_mean" in res.output
    assert load_checkpoint(out).meta["training"]["config"]["init"] == str(start_ckpt)


def test_cli_train_init_missing_checkpoint_is_one_clear_line(tmp_path, lab_frames):
    from deepis_rt.cli.main import main

    res = CliRunner().invoke(main, ["train", "--data", str(lab_frames), "--init", str(tmp_path / "nope.pt"),
                                    "--out", str(tmp_path / "x.pt"), "--steps", "1", "--no-progress"])
    assert res.exit_code == 2 and "nope.pt: no such file" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "x.pt").exists()
