"""Inference backends behind one contract (see :class:`Runner`), listed in one table (:mod:`.registry`)."""

from deepis_rt.backends.base import Runner
from deepis_rt.backends.fake import FakeRunner
from deepis_rt.backends.onnxrt.runner import OnnxRuntimeRunner
from deepis_rt.backends.openvino.runner import OpenVINORunner
from deepis_rt.backends.pytorch.runner import TorchRunner
from deepis_rt.backends.spec import BackendSpec, RunnerRequest
from deepis_rt.backends.trt.runner import TensorRTRunner

__all__ = ["Runner", "FakeRunner", "TorchRunner", "OnnxRuntimeRunner", "OpenVINORunner", "TensorRTRunner",
           "BackendSpec", "RunnerRequest"]
