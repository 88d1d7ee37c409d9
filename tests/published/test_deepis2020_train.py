"""The deepis-2020 preset is a normal deepis-rt network: it trains, saves and reloads."""

from __future__ import annotations

import torch

from deepis_rt.checkpoint import load_checkpoint
from deepis_rt.train import train


def test_deepis_2020_trains_and_reloads(tmp_path):
    kw = dict(model_overrides={"feature_scale": 16, "trans_feature": 4}, tile_zyx=(16, 32, 32),
              crop_zyx=(16, 32, 32), batch=2, val_frames=0, pool_size=1, refresh_every=10**6, save_every=0,
              threads=1, seed=3, focus_fraction=0.0)
    res = train(tmp_path / "m.pt", preset="deepis-2020", steps=6, lr=1e-2, **kw)
    assert torch.isfinite(torch.tensor(res["final_loss"]))
    ckpt = load_checkpoint(res["checkpoint"])
    assert ckpt.config.architecture == "deepis-2020"
    assert (ckpt.config.feature_scale, ckpt.config.trans_feature) == (16, 4)
    model = ckpt.build()
    assert type(model).__name__ == "DeepIS2020"
    assert "gcn2.conv_l1.weight" in ckpt.state_dict and "final.0.bias" in ckpt.state_dict
    with torch.no_grad():
        y = model(torch.randn(1, 1, 16, 32, 32))
    assert y.shape == (1, 1, 16, 32, 32) and torch.isfinite(y).all()
