"""Peak throughput probe: a large matrix product in a given precision, measured in the same run.

Model throughput is reported as a fraction of this figure so that results compare
across machines (a CPU's FP32 GEMM peak, a GPU's FP16 tensor-core peak). On a GPU the measured
figure stands next to the card's specification (:func:`gpu_spec_tflops`).

FP32 on a GPU means FP32: :func:`matmul_peak` switches TF32 off for float32 products unless
``allow_tf32=True`` (PyTorch's cuDNN default is TF32 *on*, its matmul default off; a peak measured
in TF32 is ~7x an FP32 one on an H100 and would make every FP32 row look idle).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["PeakResult", "matmul_peak", "cpu_bf16_unsupported_reason", "CPU_BF16_FLAGS", "GPU_SPEC_TFLOPS",
           "GPU_SPEC_SOURCE", "gpu_spec_tflops"]

#: CPU flags (``/proc/cpuinfo``) of native BF16 matrix arithmetic (AVX-512 BF16 dot products, AMX tiles)
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_bf16_unsupported_reason() -> str | None:
    """None when this CPU multiplies BF16 matrices natively, else why not.

    Without AVX512_BF16 or AMX a BF16 product is emulated (converted to FP32): timing it would
    give a figure no BF16 backend can use, so the probe reports "unsupported" instead. Linux reads
    the CPU flags; elsewhere OpenVINO's CPU capabilities decide (when installed).
    """
    from deepis_rt.bench.machine import cpu_flags

    listed = cpu_flags()
    flags = None if listed is None else set(listed)
    if flags is not None:
        if flags & set(CPU_BF16_FLAGS):
            return None
        return f"this CPU has no native BF16 matrix instructions (none of {', '.join(CPU_BF16_FLAGS)} in its flags)"
    try:
        from deepis_rt.backends.openvino.runner import bf16_unavailable_reason

        return bf16_unavailable_reason()
    except Exception as exc:
        return f"cannot tell whether this CPU has BF16 ({type(exc).__name__}: {exc})"


#: Dense (no structured sparsity) peak TFLOP/s by precision, from NVIDIA's data sheets: the "H100
#: Tensor Core GPU" datasheet (SXM5, PCIe and NVL columns) and the "H200 Tensor Core GPU" product
#: page (SXM and NVL). The sheets print tensor-core figures "with sparsity"; dense is half of those. ``fp32`` is
#: the CUDA-core FP32 figure (TF32 off), ``tf32`` the tensor-core one. Keys are matched, in this
#: order, as substrings of ``torch.cuda.get_device_name()`` (e.g. "NVIDIA H100 80GB HBM3" is an SXM5 card).
GPU_SPEC_TFLOPS: tuple[tuple[str, str, dict[str, float]], ...] = (
    ("H200 NVL", "H200 NVL", {"fp32": 60.0, "tf32": 417.5, "fp16": 835.5, "bf16": 835.5}),
    ("H200", "H200 SXM", {"fp32": 67.0, "tf32": 494.5, "fp16": 989.5, "bf16": 989.5}),
    ("H100 NVL", "H100 NVL", {"fp32": 60.0, "tf32": 417.5, "fp16": 835.5, "bf16": 835.5}),
    ("H100 PCIe", "H100 PCIe", {"fp32": 51.0, "tf32": 378.0, "fp16": 756.5, "bf16": 756.5}),
    ("H100", "H100 SXM5", {"fp32": 67.0, "tf32": 494.5, "fp16": 989.5, "bf16": 989.5}),
)
GPU_SPEC_SOURCE = ("NVIDIA H100 Tensor Core GPU datasheet (SXM5, PCIe) and H200 Tensor Core GPU product page; "
                   "dense = half the 'with sparsity' tensor-core figures")


def gpu_spec_tflops(device_name: str, precision: str) -> dict[str, Any] | None:
    """The data-sheet peak of ``device_name`` in ``precision`` (fp32, tf32, fp16, bf16), or None if unknown."""
    for key, card, figures in GPU_SPEC_TFLOPS:
        if key.lower() in str(device_name).lower() and precision in figures:
            return {"card": card, "precision": precision, "tflops": figures[precision], "source": GPU_SPEC_SOURCE}
    return None


@dataclass(frozen=True)
class PeakResult:
    device: str
    dtype: str
    size: int
    tflops: float
    seconds: float
    math: str = ""


@contextlib.contextmanager
def _tf32(allowed: bool) -> Iterator[None]:
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    size: int | None = None,
    min_seconds: float = 0.5,
    repeats: int = 3,
    allow_tf32: bool = False,
) -> PeakResult:
    """Best-of-``repeats`` TFLOP/s of ``size x size`` matrix products (2 n^3 FLOP each).

    Parameters
    ----------
    device : str or torch.device
        ``"cpu"`` or a CUDA device.
    dtype : torch.dtype
        Precision of the product (float32, float16, bfloat16).
    size : int, optional
        Matrix size; default 2048 on a CPU, 8192 on a GPU.
    min_seconds : float
        Each timed repeat runs products for at least this long.
    repeats : int
        Timed repeats; the best is kept (peak, not average).
    allow_tf32 : bool
        float32 on a GPU: let the product use TF32 tensor cores (off: true FP32, restored after).
    """
    device = torch.device(device)
    if size is None:
        size = 8192 if device.type == "cuda" else 2048
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    tf32 = device.type == "cuda" and dtype == torch.float32 and allow_tf32
    math = "tf32" if tf32 else str(dtype).replace("torch.", "")
    with torch.inference_mode(), _tf32(tf32):
        torch.mm(a, b)  # warm-up (kernel selection, clocks)
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        one = max(time.perf_counter() - t0, 1e-6)
        iters = max(1, int(min_seconds / one))
        best = float("inf")
        for _ in range(repeats):
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(iters):
                torch.mm(a, b)
            _sync(device)
            best = min(best, (time.perf_counter() - t0) / iters)
    flop = 2.0 * size**3
    return PeakResult(device=str(device), dtype=str(dtype).replace("torch.", ""), size=size,
                      tflops=flop / best / 1e12, seconds=best, math=math)
