"""ONNX Runtime as registered backends: the ONNX graph is the lazy loader, :class:`OnnxRuntimeRunner` the runner.

``onnxruntime-cpu`` (CPU execution provider), ``onnxruntime-cuda`` (CUDA execution provider of
``onnxruntime-gpu``; ``onnxruntime-gpu`` is accepted as its old name) and ``onnxruntime-tensorrt``
(TensorRT execution provider, measured by the bench). The graph is exported only when the runner
activates.
"""

from __future__ import annotations

from collections.abc import Callable

from deepis_rt.backends import facts
from deepis_rt.backends.onnxrt.runner import OnnxRuntimeRunner
from deepis_rt.backends.spec import BackendSpec, RunnerRequest
from deepis_rt.backends.trt.profile import profile_from_batch

__all__ = ["CPU_SPEC", "CUDA_SPEC", "TENSORRT_EP_SPEC", "onnx_loader"]

_EP = {"onnxruntime-cuda": "CUDAExecutionProvider", "onnxruntime-tensorrt": "TensorrtExecutionProvider"}


def onnx_loader(request: RunnerRequest, precision: str | None = None) -> Callable[[], str]:
    """A lazy loader of the graph to run: the FP16 graph for ``precision`` "fp16" (FP32 when the
    model has none), else the FP32 graph."""
    model = request.model
    assert model is not None

    def load() -> str:
        if precision == "fp16":
            fp16 = model.onnx_fp16()
            if fp16 is not None:
                return str(fp16)
        return str(model.onnx_fp32())

    return load


def _probe(name: str) -> Callable[[RunnerRequest], str | None]:
    def probe(request: RunnerRequest) -> str | None:
        providers = facts.ort_providers()
        if not providers:
            return "onnxruntime is not installed"
        wanted = _EP.get(name)
        if wanted and wanted not in providers:
            return (f"onnxruntime has no {wanted} (has {', '.join(providers)}); install onnxruntime-gpu")
        if request.model is None or not getattr(request.model, "has_onnx", False):
            return facts.onnx_export_unavailable_reason()
        return None

    probe.__name__ = f"probe_{name.replace('-', '_')}"
    return probe


def make_cpu_runner(request: RunnerRequest) -> OnnxRuntimeRunner:
    options = request.options
    return OnnxRuntimeRunner(onnx_loader(request, request.precision), provider="cpu",
                             intra_op_threads=options.get("num_threads"),
                             execution_mode=options.get("execution_mode", "sequential"))


def _device_id(request: RunnerRequest) -> int:
    return int(request.cuda_device.partition(":")[2] or 0)


def make_cuda_runner(request: RunnerRequest) -> OnnxRuntimeRunner:
    """The CUDA EP (FP16 graph unless "fp32"); the TensorRT EP instead with ``ort_tensorrt=True`` where it exists."""
    options = request.options
    precision = request.precision or "fp16"
    provider = "tensorrt" if options.get("ort_tensorrt") and "TensorrtExecutionProvider" in facts.ort_providers() else "cuda"
    profile = None
    if provider == "tensorrt":
        # the profile the native TensorRT backend builds, so the EP never rebuilds for a new batch size
        profile = profile_from_batch(request.batch_profile, request.model.tile_zyx)  # type: ignore[union-attr]
    return OnnxRuntimeRunner(onnx_loader(request, precision), provider=provider, engines_dir=request.engines_dir,
                             device_id=_device_id(request), fp16=precision != "fp32",
                             allow_tf32=bool(options.get("allow_tf32", False)), trt_profile=profile)


def make_tensorrt_ep_runner(request: RunnerRequest) -> OnnxRuntimeRunner:
    """The TensorRT EP on the FP32 graph; its own FP16 flag decides the engine's precision. The profile
    is the native TensorRT backend's, so the EP builds one engine (cached under engines/ort-trt)."""
    precision = request.precision or "fp16"
    profile = profile_from_batch(request.batch_profile, request.model.tile_zyx)  # type: ignore[union-attr]
    return OnnxRuntimeRunner(onnx_loader(request, "fp32"), provider="tensorrt", fp16=precision == "fp16",
                             engines_dir=request.engines_dir, trt_profile=profile, device_id=_device_id(request))


CPU_SPEC = BackendSpec(
    name="onnxruntime-cpu", device="cpu", precisions=("fp32",), probe=_probe("onnxruntime-cpu"),
    factory=make_cpu_runner, family="onnxruntime", auto_rank=50, fallback_precision="fp32",
    summary="ONNX Runtime, CPU execution provider, FP32")
CUDA_SPEC = BackendSpec(
    name="onnxruntime-cuda", device="cuda", precisions=("fp16", "fp32"), probe=_probe("onnxruntime-cuda"),
    factory=make_cuda_runner, family="onnxruntime", auto_rank=20, aliases=("onnxruntime-gpu",),
    summary="ONNX Runtime, CUDA execution provider (onnxruntime-gpu); FP16 graph unless fp32")
TENSORRT_EP_SPEC = BackendSpec(
    name="onnxruntime-tensorrt", device="cuda", precisions=("fp16", "fp32"), probe=_probe("onnxruntime-tensorrt"),
    factory=make_tensorrt_ep_runner,
    summary="ONNX Runtime, TensorRT execution provider (engine cached under engines/ort-trt)")
