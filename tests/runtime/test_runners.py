"""One conformance suite for every runner (PyTorch CPU, ONNX Runtime CPU, OpenVINO CPU, fake; GPU ones marked)."""

from __future__ import annotations

import numpy as np
import pytest

from deepis_rt.backends import FakeRunner, OnnxRuntimeRunner, Runner, TensorRTRunner, TorchRunner
from deepis_rt.errors import BackendError, ShapeError


def _tile():
    return (16, 32, 32)  # the tiny checkpoint's tile (tests/runtime/conftest.py)


def _make(kind, ckpt, onnx, tmp_dir=None):
    """The runner ``kind``; ``tmp_dir`` (a pytest temporary folder) holds OpenVINO's compiled-model cache."""
    from deepis_rt.checkpoint import load_checkpoint

    if kind == "fake":
        return FakeRunner()
    if kind == "torch-cpu":
        return TorchRunner(load_checkpoint(ckpt), device="cpu")
    if kind == "onnxruntime-cpu":
        return OnnxRuntimeRunner(onnx, provider="cpu")
    if kind.startswith("openvino-cpu"):
        from deepis_rt.backends import OpenVINORunner

        hint = "throughput" if kind.endswith("throughput") else "latency"
        return OpenVINORunner(onnx, hint=hint, cache_dir=tmp_dir)
    if kind == "torch-cuda-fp32":
        return TorchRunner(load_checkpoint(ckpt), device="cuda")
    if kind == "torch-cuda-fp16-graphs":
        return TorchRunner(load_checkpoint(ckpt), device="cuda", precision="fp16", cuda_graphs=True)
    if kind == "onnxruntime-cuda":
        return OnnxRuntimeRunner(onnx, provider="cuda")
    if kind == "tensorrt":
        import os
        import tempfile
        from pathlib import Path

        from deepis_rt.backends.trt.loader import engine_for_model
        from deepis_rt.runtime.backends import SourceFiles
        from deepis_rt.runtime.source import resolve_source

        # one engine folder for the run (engines are keyed and verified): built once, reused by every test
        engines = Path(os.environ.get("DEEPIS_RT_TEST_ENGINES") or Path(tempfile.gettempdir()) / "deepis-rt-test-engines")
        return TensorRTRunner(engine_for_model(SourceFiles(resolve_source(onnx)), engines, (1, 2, 4), precision="fp32"))
    raise AssertionError(kind)


RUNNERS = [
    "fake",
    "torch-cpu",
    "onnxruntime-cpu",
    "openvino-cpu",
    "openvino-cpu-throughput",
    pytest.param("torch-cuda-fp32", marks=pytest.mark.gpu),
    pytest.param("torch-cuda-fp16-graphs", marks=pytest.mark.gpu),
    pytest.param("onnxruntime-cuda", marks=pytest.mark.gpu),
    pytest.param("tensorrt", marks=pytest.mark.tensorrt),
]


@pytest.fixture(params=RUNNERS)
def runner(request, tiny_checkpoint, tiny_onnx, tmp_path):
    if request.param == "onnxruntime-cuda":
        from deepis_rt.backends.onnxrt.runner import ort_providers

        if "CUDAExecutionProvider" not in ort_providers():
            pytest.skip("onnxruntime-gpu is not installed")
    if request.param.startswith("openvino"):
        pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install openvino)")
    r = _make(request.param, tiny_checkpoint, tiny_onnx, tmp_path / "ov-cache")
    yield r
    r.deactivate()


def _batch(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 1, *_tile())).astype(np.float32)


def test_is_a_runner(runner):
    assert isinstance(runner, Runner)
    assert not runner.is_active
    assert isinstance(runner.name, str) and runner.name


def test_infer_before_activate_refused(runner):
    with pytest.raises(BackendError, match="activate"):
        runner.infer(_batch(1))


def test_contract_shape_dtype_and_determinism(runner):
    with runner:
        assert runner.is_active
        x = _batch(2)
        out = runner.infer(x)
        assert isinstance(out, np.ndarray)
        assert out.dtype == np.float32 and out.shape == x.shape
        assert np.isfinite(out).all()
        again = runner.infer(x.copy())
        np.testing.assert_array_equal(out, again)
        # a batch is the same as its items one by one
        single = np.concatenate([runner.infer(x[i : i + 1]) for i in range(2)])
        tol = 2e-2 if "fp16" in repr(runner.describe()) else 1e-5
        np.testing.assert_allclose(single, out, atol=tol, rtol=tol)
        # the input is not modified
        np.testing.assert_array_equal(x, _batch(2))
    assert not runner.is_active


def test_activate_is_idempotent_and_reusable(runner):
    runner.activate()
    runner.activate()
    first = runner.infer(_batch(1))
    runner.deactivate()
    runner.deactivate()
    with runner:
        np.testing.assert_allclose(runner.infer(_batch(1)), first, atol=1e-5)


def test_bad_batches_refused(runner):
    with runner:
        with pytest.raises(ShapeError):
            runner.infer(np.zeros((1, *_tile()), np.float32))  # 4-D
        with pytest.raises(ShapeError):
            runner.infer(np.zeros((1, 2, *_tile()), np.float32))  # 2 channels
        with pytest.raises(ShapeError):
            runner.infer(np.zeros((1, 1, 16, 32, 33), np.float32))  # not a multiple of 16 / not the tile


def test_stream_matches_infer(runner):
    with runner:
        batches = [_batch(1, s) for s in range(3)]
        streamed = list(runner.infer_stream(iter(batches)))
        assert len(streamed) == 3
        for b, s in zip(batches, streamed, strict=True):
            np.testing.assert_allclose(s, runner.infer(b), atol=1e-5)


def test_describe(runner):
    with runner:
        info = runner.describe()
    assert info["backend"] == runner.name


def test_torch_and_onnxruntime_agree(tiny_checkpoint, tiny_onnx):
    """The same checkpoint through PyTorch and through its ONNX export."""
    x = _batch(3, seed=7)
    with _make("torch-cpu", tiny_checkpoint, tiny_onnx) as t, _make("onnxruntime-cpu", tiny_checkpoint, tiny_onnx) as o:
        a, b = t.infer(x), o.infer(x)
    assert np.abs(a).max() > 1e-3  # not a trivial all-zero output
    np.testing.assert_allclose(b, a, atol=1e-4, rtol=1e-4)


def test_onnxruntime_fixed_tile_reported(tiny_onnx):
    with OnnxRuntimeRunner(tiny_onnx) as r:
        assert r.fixed_spatial_zyx == _tile()
        assert r.describe()["intra_op_threads"] >= 1


def test_onnxruntime_missing_provider_is_clear(tiny_onnx):
    from deepis_rt.backends.onnxrt.runner import ort_providers

    if "CUDAExecutionProvider" in ort_providers():
        pytest.skip("this ONNX Runtime has a CUDA provider")
    with pytest.raises(BackendError, match="onnxruntime-gpu"):
        OnnxRuntimeRunner(tiny_onnx, provider="cuda").activate()


def test_torch_runner_refuses_gpu_options_on_cpu(tiny_checkpoint):
    from deepis_rt.errors import ConfigError

    with pytest.raises(ConfigError, match="CUDA"):
        TorchRunner(tiny_checkpoint, device="cpu", precision="fp16")
    with pytest.raises(ConfigError, match="CUDA"):
        TorchRunner(tiny_checkpoint, device="cpu", cuda_graphs=True)


def test_lazy_loader_runs_only_on_activate(tiny_checkpoint):
    from deepis_rt.checkpoint import load_checkpoint

    calls = []

    def loader():
        calls.append(1)
        return load_checkpoint(tiny_checkpoint)

    r = TorchRunner(loader)
    assert calls == []
    with r:
        assert calls == [1]


def test_tensorrt_missing_is_clear(monkeypatch):
    import sys

    from deepis_rt.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    r = TensorRTRunner(b"not an engine")
    with pytest.raises((MissingDependencyError, BackendError)) as info:
        r.activate()
    assert "tensorrt" in str(info.value).lower() or "cuda" in str(info.value).lower()
