"""Bench variants of ONNX Runtime on GPUs: the runners they make (no GPU needed to build them)."""

from __future__ import annotations

from types import SimpleNamespace

from deepis_rt.backends.trt import profile_from_batch
from deepis_rt.bench.variants import Variant, make_runner


def _model():
    def fail():
        raise AssertionError("the ONNX graph is made only on activate()")

    return SimpleNamespace(tile_zyx=(16, 32, 32), onnx_fp32=fail, onnx_fp16=fail)


def test_ort_tensorrt_row_uses_the_native_profile_and_engines_dir(tmp_path):
    runner = make_runner(Variant("onnxruntime-tensorrt", "fp16"), _model(), max_batch=4, engines_dir=tmp_path)
    assert runner.provider == "tensorrt" and runner.fp16 is True
    assert runner.trt_profile == profile_from_batch((1, 4, 4), (16, 32, 32))
    assert runner.engines_dir == tmp_path and not runner.is_active


def test_ort_cuda_fp32_row_computes_in_fp32():
    runner = make_runner(Variant("onnxruntime-cuda", "fp32"), _model(), max_batch=2)
    assert runner.provider == "cuda" and runner.allow_tf32 is False
    assert runner.describe()["math"] == "fp32 (TF32 off)"
