"""What an engine is specific to on this machine: TensorRT's version, the GPU and its device scope.

:func:`device_scope` makes one CUDA device current (``torch.cuda.device(index)``) while GPU objects
are created or used: a builder, a runtime, an ``ICudaEngine`` and its execution contexts belong to
the device that was current when they were made. :func:`make_logger` subclasses the real
``trt.ILogger``. ``tensorrt`` is imported only through :func:`deepis_rt._optional.import_optional`;
GPU facts come from ``torch.cuda``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from deepis_rt import _optional
from deepis_rt.errors import EngineCacheError, MissingDependencyError

__all__ = ["TRT_INSTALL_HINT", "EngineEnv", "tensorrt_unavailable_reason", "current_engine_env",
           "cuda_device_index", "device_scope", "make_logger"]

log = logging.getLogger(__name__)

TRT_INSTALL_HINT = "pip install 'deepis-rt[tensorrt]'"


@dataclass(frozen=True)
class EngineEnv:
    """What a TensorRT engine is specific to, besides its ONNX graph and build settings."""

    trt_version: str
    gpu_name: str
    compute_capability: str  # "major.minor", e.g. "9.0"

def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT engines can be built here, else what exactly is missing and how to fix it."""
    missing: list[str] = []
    try:
        _optional.import_optional("tensorrt")
    except MissingDependencyError:
        missing.append(f"the TensorRT Python package is not installed ({TRT_INSTALL_HINT} on a machine with an NVIDIA GPU)")
    except Exception as exc:  # installed but broken (missing libnvinfer, CUDA mismatch, ...)
        missing.append(f"TensorRT is installed but cannot be imported ({type(exc).__name__}: {exc}; "
                       f"reinstall it with {TRT_INSTALL_HINT})")
    try:
        import torch

        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
            missing.append(
                f"no CUDA GPU is visible to PyTorch (torch {torch.__version__}, {build}; "
                "torch.cuda.is_available() is False)"
            )
    except ImportError:  # pragma: no cover - torch is a hard dependency
        missing.append("PyTorch is not installed")
    if not missing:
        return None
    return "TensorRT engine build not possible here: " + "; ".join(missing)

def current_engine_env(device: Any = None) -> EngineEnv:
    """TensorRT version, GPU name and compute capability of ``device`` (needs both).

    Parameters
    ----------
    device : int or str, optional
        ``"cuda:N"``, ``N`` or ``"cuda"``; default: the current CUDA device. The facts are those of
        the device the engine will be built or run on, never simply of GPU 0.
    """
    trt = _optional.import_optional("tensorrt", "building and running TensorRT engines")
    import torch

    if not torch.cuda.is_available():
        raise MissingDependencyError(tensorrt_unavailable_reason() or "no CUDA GPU")
    index = cuda_device_index(device)
    major, minor = torch.cuda.get_device_capability(index)
    return EngineEnv(trt_version=str(trt.__version__), gpu_name=torch.cuda.get_device_name(index),
                     compute_capability=f"{major}.{minor}")

def cuda_device_index(device: Any = None) -> int:
    """The CUDA device index of ``device`` (``None``/``"cuda"``: the current device; ``"cuda:1"``: 1).

    Raises
    ------
    EngineCacheError
        ``device`` names no CUDA device (e.g. ``"cpu"``).
    """
    import torch

    if device is None:
        return int(torch.cuda.current_device())
    if isinstance(device, int):
        return device
    dev = device if isinstance(device, torch.device) else torch.device(str(device))
    if dev.type != "cuda":
        raise EngineCacheError(f"tensorrt | device {device!r} is not a CUDA device; use 'cuda' or 'cuda:N'")
    return int(torch.cuda.current_device()) if dev.index is None else int(dev.index)

@contextlib.contextmanager
def device_scope(index: int) -> Iterator[None]:
    """Make CUDA device ``index`` current for the block (``torch.cuda.device``)."""
    import torch

    with torch.cuda.device(int(index)):
        yield

def make_logger(trt: Any) -> Any:
    """A ``trt.ILogger`` that forwards TensorRT's messages to Python logging."""

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            sev = trt.ILogger.Severity
            level = {
                sev.INTERNAL_ERROR: logging.ERROR,
                sev.ERROR: logging.ERROR,
                sev.WARNING: logging.WARNING,
                sev.INFO: logging.DEBUG,
            }.get(severity, logging.DEBUG)
            log.log(level, "TensorRT: %s", msg)

    return _Logger()
