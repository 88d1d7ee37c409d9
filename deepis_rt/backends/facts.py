"""What this machine offers the backends: a CUDA GPU, TensorRT, ONNX Runtime's providers, OpenVINO, the exporter.

Every probe of :mod:`deepis_rt.backends.registry` asks here, so tests make a backend unavailable
(or pretend one is there) by replacing one function of this module.
"""

from __future__ import annotations

from deepis_rt._optional import is_available
from deepis_rt.backends.onnxrt.runner import ort_providers
from deepis_rt.backends.openvino.runner import bf16_unavailable_reason, openvino_available

__all__ = ["cuda_available", "tensorrt_available", "ort_providers", "openvino_available",
           "bf16_unavailable_reason", "onnx_export_unavailable_reason"]


def cuda_available() -> bool:
    """A CUDA GPU usable by PyTorch."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def tensorrt_available() -> bool:
    """The TensorRT Python package imports."""
    return is_available("tensorrt")


def onnx_export_unavailable_reason() -> str | None:
    """None when a checkpoint can be exported to ONNX here, else the missing package."""
    for mod in ("onnx", "onnxscript"):
        if not is_available(mod):
            return f"exporting the checkpoint to ONNX needs {mod} (not installed)"
    return None
