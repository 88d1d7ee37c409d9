"""Sliding-window tiling: plans, exact stitching, agreement with whole-volume inference."""

from __future__ import annotations

import numpy as np
import pytest

from deepis_rt.backends import FakeRunner, TorchRunner
from deepis_rt.errors import ConfigError
from deepis_rt.runtime.tiling import (
    BlendMerger,
    make_output,
    plan_tiles,
    sliding_window_inference,
    window_1d,
)


def test_plan_covers_volume_with_overlap():
    plan = plan_tiles((70, 300, 200), (64, 128, 128), overlap=0.25)
    assert plan.tile_zyx == (64, 128, 128)
    for size, starts, t in zip(plan.shape, plan.starts, plan.tile_zyx, strict=True):
        assert starts[0] == 0 and starts[-1] + t == size  # first and last tile flush with the borders
        gaps = np.diff(starts)
        assert (gaps <= t * 0.75 + 1).all()  # at least the requested overlap
    assert plan.n_tiles == len(list(plan.locations())) == 2 * 3 * 2


def test_small_axes_get_small_tiles_unless_fixed():
    plan = plan_tiles((20, 40, 300), (64, 128, 128))
    assert plan.tile_zyx == (32, 48, 128)
    assert plan.starts[0] == (0,) and plan.starts[1] == (0,)
    fixed = plan_tiles((20, 40, 300), (64, 128, 128), fixed_tile=True)
    assert fixed.tile_zyx == (64, 128, 128)


def test_weight_sums_are_the_sum_of_windows():
    plan = plan_tiles((40, 100, 90), (16, 32, 32), overlap=0.5, blend="gaussian")
    dense = np.zeros(plan.shape)
    wz, wy, wx = plan.windows
    w = wz[:, None, None] * wy[None, :, None] * wx[None, None, :]
    t = plan.tile_zyx
    for z, y, x in plan.locations():
        dense[z : z + t[0], y : y + t[1], x : x + t[2]] += w[: plan.shape[0] - z, : plan.shape[1] - y, : plan.shape[2] - x]
    sz, sy, sx = plan.weight_sums
    np.testing.assert_allclose(dense, sz[:, None, None] * sy[None, :, None] * sx[None, None, :], rtol=1e-5)


@pytest.mark.parametrize("mode", ["cosine", "gaussian", "constant"])
def test_windows_positive_and_symmetric(mode):
    w = window_1d(64, 16, mode)
    assert w.shape == (64,) and (w > 0).all() and w.max() <= 1
    np.testing.assert_allclose(w, w[::-1])
    if mode == "cosine":
        assert w[32] == 1 and w[0] < 0.05


def test_bad_settings_refused():
    with pytest.raises(ConfigError):
        plan_tiles((64, 64, 64), (64, 64, 64), overlap=0.95)
    with pytest.raises(ConfigError):
        plan_tiles((64, 64, 64), (60, 64, 64))
    with pytest.raises(ConfigError):
        window_1d(8, 2, "triangle")


@pytest.mark.parametrize("fixed", [False, True])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_pointwise_runner_is_stitched_exactly(fixed, batch_size):
    """A point-wise runner must give the same answer tiled as whole: every tile lands in place."""
    rng = np.random.default_rng(1)
    volume = rng.standard_normal((37, 90, 70)).astype(np.float32)
    tile = (16, 32, 32)
    runner = FakeRunner(fixed_spatial_zyx=tile if fixed else None)
    with runner:
        out = sliding_window_inference(volume, runner, tile, overlap=0.3, batch_size=batch_size, fixed_tile=fixed)
    np.testing.assert_allclose(out, 2.0 * np.tanh(volume), atol=2e-6)
    assert all(shape[0] <= batch_size and shape[2:] == tile for shape in runner.calls)


def test_transform_and_padding_value_are_applied():
    volume = np.full((10, 20, 20), 1.4, np.float32)
    seen = []

    def runner(batch):
        seen.append(batch.copy())
        return batch

    out = sliding_window_inference(volume, runner, (16, 32, 32), transform=lambda s, d: np.subtract(s, 1.0, out=d),
                                   pad_value=-7.0, fixed_tile=True)
    np.testing.assert_allclose(out, 0.4, atol=1e-6)
    batch = seen[0][0, 0]
    assert batch.shape == (16, 32, 32)
    assert np.allclose(batch[:10, :20, :20], 0.4) and (batch[10:] == -7).all() and (batch[:, 20:] == -7).all()


def test_disk_backed_output(tmp_path):
    volume = np.random.default_rng(2).standard_normal((20, 70, 50)).astype(np.float32)
    out = make_output(volume.shape, on_disk=tmp_path)
    assert isinstance(out, np.memmap)
    with FakeRunner() as runner:
        res = sliding_window_inference(volume, runner, (16, 32, 32), out=out)
    assert res is out
    np.testing.assert_allclose(np.asarray(res), 2.0 * np.tanh(volume), atol=2e-6)


def test_merger_rejects_wrong_output_shape():
    plan = plan_tiles((16, 32, 32), (16, 32, 32))
    with pytest.raises(ConfigError):
        BlendMerger(plan, np.zeros((16, 32, 31), np.float32))


def _local_net():
    """Three 3x3x3 convolutions: receptive field 7 voxels, so tiles agree away from their borders."""
    import torch

    torch.manual_seed(3)
    return torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.Tanh(),
        torch.nn.Conv3d(4, 4, 3, padding=1), torch.nn.Tanh(),
        torch.nn.Conv3d(4, 1, 3, padding=1),
    ).eval()


def _interior_mask(plan, margin):
    masks = []
    for size, starts, t in zip(plan.shape, plan.starts, plan.tile_zyx, strict=True):
        ok = np.ones(size, bool)
        for s in starts:
            covered = np.arange(s, min(s + t, size))
            near_start = (covered - s < margin) & (s != 0)
            near_end = (s + t - 1 - covered < margin) & (s + t < size)
            ok[covered[near_start | near_end]] = False
        masks.append(ok)
    return masks[0][:, None, None] & masks[1][None, :, None] & masks[2][None, None, :]


def test_tiled_matches_whole_away_from_tile_borders():
    rng = np.random.default_rng(4)
    volume = rng.standard_normal((32, 96, 96)).astype(np.float32)
    tile = (32, 48, 48)
    with TorchRunner(_local_net()) as runner:
        whole = runner.infer(volume[None, None])[0, 0]
        tiled = sliding_window_inference(volume, runner, tile, overlap=0.5, batch_size=2)
    plan = plan_tiles(volume.shape, tile, overlap=0.5)
    mask = _interior_mask(plan, margin=4)
    assert 0.05 < mask.mean() < 0.95  # the test compares something, and excludes something
    np.testing.assert_allclose(tiled[mask], whole[mask], atol=1e-5)
    assert np.abs(tiled - whole).max() > 1e-4  # near tile borders zero padding does differ


def test_tiled_deepis_close_to_whole(tiny_checkpoint):
    """The DeepIS U-Net sees the whole tile (GCN + 4 down-samplings), so tiles differ a little everywhere."""
    from scipy import ndimage

    from deepis_rt.checkpoint import load_checkpoint

    rng = np.random.default_rng(0)
    volume = (3 * ndimage.gaussian_filter(rng.standard_normal((32, 128, 128)), 2)).astype(np.float32)
    with TorchRunner(load_checkpoint(tiny_checkpoint)) as runner:
        whole = runner.infer(volume[None, None])[0, 0]
        tiled = sliding_window_inference(volume, runner, (32, 64, 64), overlap=0.5, batch_size=4)
    r = np.corrcoef(tiled.ravel(), whole.ravel())[0, 1]
    assert r > 0.95, r
