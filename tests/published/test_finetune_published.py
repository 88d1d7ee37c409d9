"""Fine-tuning a checkpoint of the published DeepIS code (``train --init model.pth.tar``)."""

from __future__ import annotations

import torch
from unet3d_glob_reference import make_reference, save_like_cnntrainer

from deepis_rt.checkpoint import load_checkpoint
from deepis_rt.train import train

VS = (0.4, 0.2, 0.2)


def test_published_checkpoint_fine_tuned_on_lab_frames(tmp_path):
    from deepis_rt.synth import write_timelapse

    net = make_reference(16, 16, seed=2)
    src = save_like_cnntrainer(net, tmp_path / "paper.pth.tar", train_step=False)
    write_timelapse(tmp_path / "lab", 2, 5, shape=(16, 32, 32), voxel_size_um=VS, fmt="npy", progress=False)
    start = load_checkpoint(src)
    train(tmp_path / "tuned.pt", synthetic=False, data_dir=str(tmp_path / "lab"), init=str(src), voxel_size_um=VS,
          steps=1, lr=1e-12, batch=1, crop_zyx=(16, 32, 32), val_frames=0, save_every=0, threads=1)
    tuned = load_checkpoint(tmp_path / "tuned.pt")
    # the published architecture and weights, now a normal checkpoint at the lab's voxel size, with the
    # input scaling it was trained with recorded (no longer assumed)
    assert tuned.config == start.config and tuned.preset == start.preset
    for k, v in start.state_dict.items():
        if v.dim() == 5:
            assert torch.allclose(tuned.state_dict[k], v, atol=1e-8), k
    assert tuned.voxel_size_um == VS
    assert tuned.meta["ri_normalization"] == start.meta["ri_normalization"]
    assert "assumed" not in tuned.meta
    assert tuned.meta["training"]["init"]["path"] == str(src)
