"""Shared runtime fixtures: one tiny checkpoint and its ONNX export per test session."""

from __future__ import annotations

import numpy as np
import pytest

#: small tile so that tiny-model inference takes milliseconds
TILE = (16, 32, 32)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_overrides):
    import torch

    import deepis_rt

    torch.manual_seed(0)
    model = deepis_rt.build_model("deepis-lite", **tiny_overrides).eval()
    # BN statistics that are not the identity, so that ONNX folding of BN is exercised
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    deepis_rt.save_checkpoint(path, model, meta={"tile_zyx": list(TILE)})
    return path


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint, onnx_cache):
    """The checkpoint's FP32 ONNX, exported once (through the runtime's sha256-keyed cache)."""
    from deepis_rt.runtime.backends import onnx_for_checkpoint
    from deepis_rt.runtime.source import resolve_source

    return onnx_for_checkpoint(resolve_source(tiny_checkpoint), onnx_cache)


@pytest.fixture(scope="session")
def make_ri():
    """``make_ri(shape, seed=0)``: a smooth RI volume (medium 1.337, two blurred 'cells', a little noise)."""
    return _ri_volume


def _ri_volume(shape, seed=0):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    cells = np.exp(-((x - 0.3) ** 2 + y**2 + z**2) / 0.15) - 0.7 * np.exp(-((x + 0.35) ** 2 + y**2 + z**2) / 0.1)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 1.0)
    return (1.337 + 0.03 * cells + 0.003 * noise).astype(np.float32)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread for PyTorch in these tests (restored afterwards).

    The tiny models gain nothing from threads, and on a shared 2-core machine two OpenMP threads
    waiting on each other make each call ~10x slower.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
