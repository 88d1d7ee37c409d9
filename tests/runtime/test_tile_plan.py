"""One tile plan for every backend: the model's tile, whatever runner runs it."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import deepis_rt
from deepis_rt.backends import FakeRunner
from deepis_rt.errors import ConfigError, ShapeError
from deepis_rt.runtime.segmenter import Segmenter
from deepis_rt.runtime.tiling import choose_tile

META = {"voxel_size_um": [0.5, 0.25, 0.25], "ri_normalization": {"offset": 1.337, "scale": 0.02},
        "medium_ri": 1.337, "tile_zyx": [16, 32, 32]}


def test_model_tile_kept_when_the_runner_takes_any_size():
    assert choose_tile((64, 128, 128), 16) == (64, 128, 128)


def test_model_tile_kept_inside_a_declared_range():
    assert choose_tile((64, 128, 128), 16, spatial_range_zyx=((16, 16, 16), (128, 256, 256))) == (64, 128, 128)
    # the range's bounds are inclusive
    assert choose_tile((64, 128, 128), 16, spatial_range_zyx=((64, 128, 128), (64, 128, 128))) == (64, 128, 128)


def test_range_without_the_model_tile_is_clamped_loudly(caplog):
    with caplog.at_level(logging.WARNING):
        tile = choose_tile((64, 128, 128), 16, spatial_range_zyx=((16, 16, 16), (40, 256, 100)))
    assert tile == (32, 128, 96)  # largest multiples of 16 inside the range
    assert "outside the runner's range" in caplog.text


def test_range_that_holds_no_valid_tile_is_refused():
    with pytest.raises(ConfigError, match="multiple of 16"):
        choose_tile((64, 128, 128), 16, spatial_range_zyx=((17, 16, 16), (31, 256, 256)))


def test_fixed_runner_size_wins(caplog):
    assert choose_tile((64, 128, 128), 16, fixed_zyx=(64, 128, 128)) == (64, 128, 128)
    with caplog.at_level(logging.WARNING):
        assert choose_tile((64, 128, 128), 16, fixed_zyx=(32, 64, 64)) == (32, 64, 64)
    assert "accepts tiles of" in caplog.text


def test_bad_model_tile_refused():
    with pytest.raises(ConfigError, match="multiple of 16"):
        choose_tile((60, 128, 128), 16)


@pytest.mark.parametrize("runner_kwargs", [
    {},  # PyTorch-like: any multiple of 16
    {"fixed_spatial_zyx": (16, 32, 32)},  # a static ONNX graph
])
@pytest.mark.parametrize("shape", [(12, 40, 14), (10, 12, 14), (40, 70, 20)])
def test_segmenter_plans_the_same_tiles_for_every_runner(runner_kwargs, shape):
    plan = Segmenter(FakeRunner(**runner_kwargs), META, analyze=False)._plan(shape)
    reference = Segmenter(FakeRunner(fixed_spatial_zyx=(16, 32, 32)), META, analyze=False)._plan(shape)
    assert plan.tile_zyx == reference.tile_zyx == (16, 32, 32)
    assert plan.starts == reference.starts
    for w, ref in zip(plan.windows + plan.weight_sums, reference.windows + reference.weight_sums, strict=True):
        np.testing.assert_array_equal(w, ref)


def test_runner_range_is_enforced_on_batches():
    runner = FakeRunner()
    runner.spatial_range_zyx = ((16, 16, 16), (32, 64, 64))
    with runner:
        runner.infer(np.zeros((1, 1, 16, 32, 32), np.float32))
        with pytest.raises(ShapeError, match="outside the sizes"):
            runner.infer(np.zeros((1, 1, 48, 32, 32), np.float32))


@pytest.fixture(scope="module")
def seg_pair(tiny_checkpoint, tiny_onnx, onnx_cache):
    torch_seg = deepis_rt.load(tiny_checkpoint, backend="torch", analyze=False)
    ort_seg = deepis_rt.load(tiny_checkpoint, backend="onnxruntime", cache_dir=onnx_cache, analyze=False)
    yield torch_seg, ort_seg
    torch_seg.close()
    ort_seg.close()


@pytest.mark.parametrize("shape", [(12, 40, 14), (10, 12, 14), (14, 70, 12)])
def test_torch_and_onnxruntime_segment_alike_on_volumes_smaller_than_a_tile(seg_pair, make_ri, shape):
    """Volumes that are not a multiple of the tile, smaller than it on some axes.

    PyTorch accepts any size, the exported graph only the tile: before both ran the same plan,
    PyTorch saw a smaller padded volume and the distance differed by ~0.1 um with this model.
    """
    torch_seg, ort_seg = seg_pair
    assert torch_seg.runner.fixed_spatial_zyx is None and ort_seg.runner.fixed_spatial_zyx == (16, 32, 32)
    ri = make_ri(shape, seed=3)
    a, b = torch_seg.segment(ri), ort_seg.segment(ri)
    assert a.backend == "torch-cpu" and b.backend == "onnxruntime-cpu"
    assert np.abs(a.distance).max() > 1e-2  # not a trivial output
    np.testing.assert_allclose(a.distance, b.distance, atol=1e-4, rtol=0)
