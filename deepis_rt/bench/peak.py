"""Peak throughput probe: a large matrix product in a given precision, measured in the same run.

Model throughput is reported as a fraction of this figure so that results compare
across machines (a CPU's FP32 GEMM peak, a GPU's FP16 tensor-core peak).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

__all__ = ["PeakResult", "matmul_peak", "cpu_bf16_unsupported_reason", "CPU_BF16_FLAGS"]

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


@dataclass(frozen=True)
class PeakResult:
    device: str
    dtype: str
    size: int
    tflops: float
    seconds: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    size: int | None = None,
    min_seconds: float = 0.5,
    repeats: int = 3,
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
    """
    device = torch.device(device)
    if size is None:
        size = 8192 if device.type == "cuda" else 2048
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    with torch.inference_mode():
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
                      tflops=flop / best / 1e12, seconds=best)
