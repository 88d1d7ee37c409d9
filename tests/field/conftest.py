"""A Segmenter with a point-wise fake runner, and a tiny checkpoint with the same tile."""

from __future__ import annotations

import pytest
from field_scenes import META

from deepis_rt.backends import FakeRunner
from deepis_rt.runtime.segmenter import Segmenter


@pytest.fixture(scope="session")
def fake_segmenter():
    seg = Segmenter(FakeRunner(), META)
    yield seg
    seg.close()


@pytest.fixture(scope="session")
def tiny_field_checkpoint(tmp_path_factory, tiny_overrides):
    """A tiny deepis-lite checkpoint (random weights) with the fake runner's tile and normalisation."""
    import torch

    import deepis_rt

    torch.manual_seed(0)
    model = deepis_rt.build_model("deepis-lite", **tiny_overrides).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    deepis_rt.save_checkpoint(path, model, meta={"tile_zyx": META["tile_zyx"]})
    return path
