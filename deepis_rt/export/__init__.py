"""Export: ONNX (FP32, FP16) and TensorRT engines."""

from deepis_rt.export.onnx_export import INPUT_NAME, META_KEY, OUTPUT_NAME, export_onnx, read_onnx_meta

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "META_KEY", "export_onnx", "read_onnx_meta"]
