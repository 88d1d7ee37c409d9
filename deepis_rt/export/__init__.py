"""Export: ONNX (FP32, FP16) with a parity report, and TensorRT engines with a verified cache."""

from deepis_rt.backends.trt.cache import cache_key, load_engine_bytes
from deepis_rt.backends.trt.env import tensorrt_unavailable_reason
from deepis_rt.export.onnx_export import (
    INPUT_NAME,
    META_KEY,
    OUTPUT_NAME,
    export_onnx,
    read_onnx_meta,
    set_onnx_meta,
)
from deepis_rt.export.parity import FP16_TOLERANCE, FP32_TOLERANCE, ParityResult, ParityTolerance
from deepis_rt.export.pipeline import ExportResult, export_model, read_manifest

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "META_KEY",
    "export_onnx",
    "read_onnx_meta",
    "set_onnx_meta",
    "export_model",
    "ExportResult",
    "read_manifest",
    "ParityResult",
    "ParityTolerance",
    "FP32_TOLERANCE",
    "FP16_TOLERANCE",
    "cache_key",
    "load_engine_bytes",
    "tensorrt_unavailable_reason",
]
