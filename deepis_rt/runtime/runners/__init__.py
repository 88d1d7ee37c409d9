"""Inference backends behind one contract (see :class:`Runner`)."""

from deepis_rt.runtime.runners.base import Runner
from deepis_rt.runtime.runners.fake import FakeRunner
from deepis_rt.runtime.runners.onnxruntime_runner import OnnxRuntimeRunner
from deepis_rt.runtime.runners.openvino_runner import OpenVINORunner
from deepis_rt.runtime.runners.tensorrt_runner import TensorRTRunner
from deepis_rt.runtime.runners.torch_runner import TorchRunner

__all__ = ["Runner", "FakeRunner", "TorchRunner", "OnnxRuntimeRunner", "OpenVINORunner", "TensorRTRunner"]
