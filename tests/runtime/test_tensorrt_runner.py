"""The TensorRT runner on a real GPU: one context, its own stream, profile-aware tiles, device choice.

Marked ``tensorrt`` (skipped without TensorRT and a CUDA GPU). Engines are built once into
``$DEEPIS_RT_TEST_ENGINES`` (``benchmarks/gpu_check.sh`` shares its folder) or a session folder.
The same code paths run on every CPU machine against the real TensorRT bindings in
``tests/trt_api`` (checked fakes); these tests prove what only a GPU can.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.tensorrt


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    shared = os.environ.get("DEEPIS_RT_TEST_ENGINES")
    return Path(shared) if shared else tmp_path_factory.mktemp("engines")


def _engine(tiny_onnx, engines, dynamic=False, device="cuda:0"):
    from deepis_rt.backends.trt import get_engine, profile_from_batch

    profile = profile_from_batch((1, 2, 4), (16, 32, 32), dynamic_shape=dynamic)
    return get_engine(tiny_onnx, engines, "fp32", profile, device=device, progress=False)


def _reference(tiny_checkpoint, x):
    import torch

    from deepis_rt.checkpoint import load_checkpoint

    with torch.inference_mode():
        return load_checkpoint(tiny_checkpoint).build()(torch.from_numpy(x)).numpy()


def test_one_context_own_stream_and_chunked_batches(tiny_checkpoint, tiny_onnx, engines):
    import torch

    from deepis_rt.backends import TensorRTRunner

    build = _engine(tiny_onnx, engines)
    x = np.random.default_rng(0).standard_normal((6, 1, 16, 32, 32)).astype(np.float32)
    with TensorRTRunner(build.data, device="cuda:0") as runner:
        context, stream = runner._context, runner._stream
        assert stream.cuda_stream not in (0, torch.cuda.default_stream(0).cuda_stream)
        assert runner.fixed_spatial_zyx == (16, 32, 32) and runner.max_batch_size == 4
        y = runner.infer(x)  # 6 > 4: two chunks through the one context
        streamed = list(runner.infer_stream(iter([x[:2], x[2:4], x[4:]])))
        assert runner._context is context and runner._stream is stream
    np.testing.assert_allclose(y, _reference(tiny_checkpoint, x), atol=1e-3, rtol=1e-3)  # TF32 off
    np.testing.assert_allclose(np.concatenate(streamed), y, atol=1e-5)


def test_abandoned_stream_then_reuse(tiny_onnx, engines):
    from deepis_rt.backends import TensorRTRunner

    build = _engine(tiny_onnx, engines)
    batches = [np.random.default_rng(i).standard_normal((2, 1, 16, 32, 32)).astype(np.float32) for i in range(8)]
    with TensorRTRunner(build.data) as runner:
        gen = runner.infer_stream(iter(batches))
        next(gen)
        gen.close()  # frames still in flight are waited for; nothing is freed under them
        again = list(runner.infer_stream(iter(batches[:3])))
        np.testing.assert_allclose(again[1], runner.infer(batches[1]), atol=1e-5)


def test_forward_device_output_is_ready_on_the_callers_stream(tiny_onnx, engines):
    """The benchmark's breakdown reads forward_device's output on its own stream, without synchronising."""
    import torch

    from deepis_rt.backends import TensorRTRunner

    build = _engine(tiny_onnx, engines)
    x = np.random.default_rng(4).standard_normal((2, 1, 16, 32, 32)).astype(np.float32)
    with TensorRTRunner(build.data) as runner:
        runner.infer(x)  # warm-up
        with torch.cuda.stream(runner._stream):
            torch.cuda._sleep(100_000_000)  # the runner's stream is busy: the engine's output comes late
        y = runner.forward_device(torch.from_numpy(2 * x).cuda()).cpu().numpy()  # read on the caller's stream
        np.testing.assert_allclose(y, runner.infer(2 * x), atol=1e-5)


def test_dynamic_profile_small_volume_segments(tiny_checkpoint, tiny_onnx, engines, make_ri):
    """A volume smaller than a tile, through an engine with a profile range: no profile error."""
    import deepis_rt
    from deepis_rt.backends import TensorRTRunner
    from deepis_rt.runtime.segmenter import Segmenter

    build = _engine(tiny_onnx, engines, dynamic=True)
    volume = make_ri((10, 20, 24))
    with deepis_rt.load(tiny_checkpoint, backend="torch-cpu", analyze=False) as ref_seg:
        ref = ref_seg.segment(volume).distance
        meta = ref_seg.meta
    seg = Segmenter(TensorRTRunner(build.data), meta, analyze=False)
    try:
        assert seg.runner.spatial_range_zyx is not None
        out = seg.segment(volume).distance
    finally:
        seg.close()
    assert out.shape == volume.shape
    np.testing.assert_allclose(out, ref, atol=1e-3)


@pytest.mark.skipif("not __import__('torch').cuda.device_count() > 1", reason="needs two CUDA GPUs")
def test_second_gpu_gets_its_own_engine_and_context(tiny_checkpoint, tiny_onnx, engines):
    import torch

    from deepis_rt.backends import TensorRTRunner

    build = _engine(tiny_onnx, engines, device="cuda:1")
    assert build.manifest["gpu_name"] == torch.cuda.get_device_name(1)
    x = np.random.default_rng(3).standard_normal((2, 1, 16, 32, 32)).astype(np.float32)
    with TensorRTRunner(build.data, device="cuda:1") as runner:
        y = runner.infer(x)
        assert runner.device == torch.device("cuda", 1)
    np.testing.assert_allclose(y, _reference(tiny_checkpoint, x), atol=1e-3, rtol=1e-3)
