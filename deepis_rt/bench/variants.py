"""What a benchmark compares: backend x precision combinations, whether each can run here, and their runners.

Backends (``--backends``):

==========================  =====================================================================
``torch-cpu``               PyTorch eager on the CPU, FP32 (the baseline on a machine without a GPU)
``onnxruntime-cpu``         ONNX Runtime, CPU execution provider
``openvino-cpu``            OpenVINO, CPU plugin: FP32 (what ``deepis_rt.load`` runs on a CPU) and BF16
                            (measured only where the CPU has it; otherwise a skipped row with the reason)
``torch-cuda``              PyTorch eager on the GPU, FP32 (the GPU baseline) and FP16
``torch-cuda-graphs``       the same, replayed as CUDA graphs
``onnxruntime-cuda``        ONNX Runtime, CUDA execution provider (onnxruntime-gpu)
``onnxruntime-tensorrt``    ONNX Runtime, TensorRT execution provider
``tensorrt``                a native TensorRT engine
==========================  =====================================================================
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepis_rt.errors import ConfigError

__all__ = ["BACKENDS", "Variant", "expand_backends", "plan_variants", "unavailable_reason", "make_runner"]

BACKENDS: tuple[str, ...] = (
    "torch-cpu", "onnxruntime-cpu", "openvino-cpu", "torch-cuda", "torch-cuda-graphs", "onnxruntime-cuda",
    "onnxruntime-tensorrt", "tensorrt",
)
_GPU = frozenset(BACKENDS[3:])
#: precisions measured when --precision is not given
_DEFAULT_PRECISIONS = {name: ("fp32",) if name not in _GPU else ("fp32", "fp16") for name in BACKENDS}
_DEFAULT_PRECISIONS["openvino-cpu"] = ("fp32", "bf16")
_GROUPS = {"all": BACKENDS, "cpu": BACKENDS[:3], "gpu": BACKENDS[3:]}


@dataclass(frozen=True)
class Variant:
    """One backend in one precision."""

    backend: str
    precision: str

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision}"

    @property
    def is_gpu(self) -> bool:
        return self.backend in _GPU

    @property
    def device(self) -> str:
        return cuda_device() if self.is_gpu else "cpu"

    @property
    def is_baseline(self) -> bool:
        """PyTorch eager FP32 (on the GPU when the run has GPU rows)."""
        return self.backend in ("torch-cpu", "torch-cuda") and self.precision == "fp32"


def expand_backends(names: Iterable[str]) -> list[str]:
    """Backend names from a user's list (``all``, ``cpu`` and ``gpu`` are groups); order kept, no duplicates."""
    out: list[str] = []
    for raw in names:
        name = raw.strip().lower()
        if not name:
            continue
        if name in _GROUPS:
            out.extend(b for b in _GROUPS[name] if b not in out)
        elif name in BACKENDS:
            if name not in out:
                out.append(name)
        else:
            raise ConfigError(f"bench: unknown backend {raw!r}; choose from {', '.join(BACKENDS)} or all, cpu, gpu")
    return out


def plan_variants(backends: Sequence[str], precisions: Sequence[str] | None = None) -> list[Variant]:
    """The variants to measure; a baseline (PyTorch eager FP32) is added first when missing."""
    for p in precisions or ():
        if p not in ("fp32", "fp16", "bf16"):
            raise ConfigError(f"bench: unknown precision {p!r}; use fp32, fp16 (GPUs) and/or bf16 (openvino-cpu)")
    variants: list[Variant] = []
    for backend in backends:
        for precision in (precisions or _DEFAULT_PRECISIONS[backend]):
            if backend == "torch-cpu" and precision == "fp16":
                continue  # refused by TorchRunner: half convolutions on a CPU are slow, not a product path
            if precision == "bf16" and backend != "openvino-cpu":
                continue  # BF16 is OpenVINO's CPU precision
            if backend == "openvino-cpu" and precision == "fp16":
                continue  # FP16 is a GPU precision
            variants.append(Variant(backend, precision))
    gpu_run = any(v.is_gpu for v in variants) and unavailable_reason("torch-cuda") is None
    baseline = Variant("torch-cuda" if gpu_run else "torch-cpu", "fp32")
    if baseline not in variants:
        variants.insert(0, baseline)
    else:
        variants.remove(baseline)
        variants.insert(0, baseline)
    return variants


def unavailable_reason(backend: str, precision: str | None = None) -> str | None:
    """None when ``backend`` (in ``precision``) can run on this machine, else why not (and what to install)."""
    from deepis_rt._optional import is_available
    from deepis_rt.runtime.backends import cuda_available
    from deepis_rt.backends.onnxrt.runner import ort_providers

    if backend in _GPU and not cuda_available():
        return "no CUDA GPU (torch.cuda.is_available() is False)"
    if backend.startswith("onnxruntime"):
        providers = ort_providers()
        if not providers:
            return "onnxruntime is not installed"
        wanted = {"onnxruntime-cuda": "CUDAExecutionProvider",
                  "onnxruntime-tensorrt": "TensorrtExecutionProvider"}.get(backend)
        if wanted and wanted not in providers:
            return f"this ONNX Runtime has no {wanted} (has {', '.join(providers)}); install onnxruntime-gpu"
        if not is_available("onnx"):
            return "exporting to ONNX needs the onnx package"
    if backend == "tensorrt":
        from deepis_rt.backends.trt.engine import tensorrt_unavailable_reason

        return tensorrt_unavailable_reason()
    if backend == "openvino-cpu":
        from deepis_rt.backends.openvino.runner import bf16_unavailable_reason, openvino_available

        if not openvino_available():
            return "OpenVINO is not installed (pip install openvino)"
        if precision == "bf16":
            return bf16_unavailable_reason()
        if not is_available("onnx"):
            return "exporting to ONNX needs the onnx package"
    return None


def cuda_device() -> str:
    """``"cuda:N"`` of the current CUDA device (``deepis-rt bench --device N`` makes GPU N current)."""
    import torch

    return f"cuda:{torch.cuda.current_device() if torch.cuda.is_available() else 0}"


def make_runner(variant: Variant, model: Any, max_batch: int, threads: int | None = None,
                engines_dir: str | Path = "engines") -> Any:
    """An inactive runner for ``variant`` (the runtime's own runner classes, so the numbers are what
    ``deepis_rt.load`` runs). ONNX files and engines are made lazily, in ``activate()``."""
    from deepis_rt.backends import OnnxRuntimeRunner, OpenVINORunner, TensorRTRunner, TorchRunner

    b, p = variant.backend, variant.precision
    if b == "torch-cpu":
        if p != "fp32":
            raise ConfigError("bench: torch-cpu runs in fp32 only")
        return TorchRunner(model.module, device="cpu", num_threads=threads)
    if b in ("torch-cuda", "torch-cuda-graphs"):
        # a copy: .to(cuda) / .half() work in place, and the CPU module is shared with the exporter
        return TorchRunner(lambda: copy.deepcopy(model.module()), device=cuda_device(), precision=p,
                           cuda_graphs=b == "torch-cuda-graphs")
    onnx = (lambda: str(model.onnx_fp16())) if p == "fp16" else (lambda: str(model.onnx_fp32()))
    if b == "onnxruntime-cpu":
        return OnnxRuntimeRunner(onnx, provider="cpu", intra_op_threads=threads)
    if b == "openvino-cpu":
        from deepis_rt.runtime.source import default_cache_dir

        # the FP32 graph in both precisions (OpenVINO converts to BF16 itself)
        return OpenVINORunner(lambda: str(model.onnx_fp32()), precision=p, num_threads=threads,
                              cache_dir=default_cache_dir() / "openvino")
    if b == "onnxruntime-cuda":
        # TF32 off: the fp32 row computes in FP32. activate() refuses a session that lost the CUDA
        # provider, so a row that says GPU ran on the GPU
        return OnnxRuntimeRunner(onnx, provider="cuda", allow_tf32=False,
                                 device_id=int(cuda_device().partition(":")[2]))
    if b == "onnxruntime-tensorrt":
        from deepis_rt.backends.trt import engine as trt_cache

        # the FP32 graph; the EP's own FP16 flag decides the engine precision. The profile is the
        # native TensorRT row's, so the EP builds one engine (cached under engines/ort-trt) for all batches
        profile = trt_cache.profile_from_batch((1, max_batch, max_batch), model.tile_zyx)
        return OnnxRuntimeRunner(lambda: str(model.onnx_fp32()), provider="tensorrt", fp16=p == "fp16",
                                 engines_dir=engines_dir, trt_profile=profile,
                                 device_id=int(cuda_device().partition(":")[2]))
    if b == "tensorrt":
        def load_engine() -> bytes:
            from deepis_rt.backends.trt import engine as trt_cache

            profile = trt_cache.profile_from_batch((1, max_batch, max_batch), model.tile_zyx)
            onnx_path = model.onnx_fp16() if p == "fp16" else model.onnx_fp32()
            build = trt_cache.get_engine(onnx_path, engines_dir, p, profile, onnx_fp32_path=model.onnx_fp32(),
                                         device=cuda_device())
            return trt_cache.load_engine_bytes(build.path, env=trt_cache.current_engine_env(cuda_device()))

        return TensorRTRunner(load_engine, device=cuda_device())
    raise ConfigError(f"bench: unknown backend {b!r}")
