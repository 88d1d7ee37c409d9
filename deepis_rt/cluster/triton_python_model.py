"""Triton Python-backend model: the exported DeepIS network run by ONNX Runtime inside tritonserver.

``deepis-rt export CKPT --triton REPO --triton-backend python`` copies this file to
``REPO/<model>/1/model.py`` next to ``model.onnx``. It serves the same tensors as the
``onnxruntime_onnx`` flavour (``tomogram`` -> ``distance``, float32, ``[N, 1, Z, Y, X]``) over
Triton's HTTP/gRPC protocols with dynamic batching, but needs neither Triton's container nor its
ONNX Runtime backend: the ``tritonserver`` of the ``nvidia-pytriton`` wheel runs it on any Linux
machine whose Python (the one the server's Python-backend stub embeds) has numpy and onnxruntime.

The requests Triton's dynamic batcher hands to :meth:`TritonPythonModel.execute` at once are
concatenated into one ONNX Runtime call and split again. A failing call answers every request
of the batch with the error (out-of-memory text included, so clients retry it as transient).

Tensors cross the stub's shared memory through DLPack: the stub's own NumPy bridge is compiled
against NumPy 1 and reads NumPy 2 arrays wrongly, so it is used only where a self-test passes.

This file runs inside the server, not in deepis-rt; it imports nothing from deepis-rt.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

INPUT_NAME, OUTPUT_NAME = "tomogram", "distance"


def _pb() -> Any:
    import triton_python_backend_utils as pb_utils  # provided by the server's Python backend

    return pb_utils


def _from_tensor(tensor: Any) -> np.ndarray:
    """A request tensor as NumPy (DLPack; the stub's as_numpy() only where NumPy 1 is installed)."""
    try:
        return np.from_dlpack(tensor)
    except (AttributeError, TypeError, BufferError, RuntimeError):
        return tensor.as_numpy()


class _TensorMaker:
    """Makes response tensors the way that round-trips correctly in this interpreter."""

    def __init__(self) -> None:
        pb = _pb()
        probe = np.arange(6, dtype=np.float32).reshape(2, 3)
        self.how = "dlpack-numpy"
        try:  # the stub's NumPy bridge: right with NumPy 1, zeros or empty tensors with NumPy 2
            if int(np.__version__.split(".")[0]) < 2 and np.array_equal(pb.Tensor("probe", probe).as_numpy(), probe):
                self.how = "native"
        except Exception:  # noqa: BLE001 - any failure of the native bridge means: do not use it
            pass
        if self.how != "native":
            try:
                import torch  # noqa: F401 - DLPack capsules the stub consumes cleanly

                self.how = "dlpack-torch"
            except ImportError:
                pass

    def __call__(self, name: str, array: np.ndarray) -> Any:
        pb = _pb()
        array = np.ascontiguousarray(array, dtype=np.float32)
        if self.how == "native":
            return pb.Tensor(name, array)
        if self.how == "dlpack-torch":
            import torch

            return pb.Tensor.from_dlpack(name, torch.from_numpy(array))
        return pb.Tensor.from_dlpack(name, array)


class TritonPythonModel:
    """The model object Triton's Python backend instantiates (one per model instance)."""

    def initialize(self, args: dict[str, str]) -> None:
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        here = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(here, "model.onnx")
        options = ort.SessionOptions()
        params = {k: v.get("string_value") for k, v in (config.get("parameters") or {}).items()}
        threads = int(params.get("intra_op_threads") or 0)
        if threads > 0:
            options.intra_op_num_threads = threads
        providers: list[Any] = ["CPUExecutionProvider"]
        if args.get("model_instance_kind") == "GPU" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": int(args.get("model_instance_device_id", 0))}))
        self.session = ort.InferenceSession(path, options, providers=providers)
        self.tensor = _TensorMaker()
        self.logger = _pb().Logger
        self.logger.log_info(f"deepis: {path} on {self.session.get_providers()[0]}, tensors via {self.tensor.how}")

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = _pb()
        arrays = [_from_tensor(pb.get_input_tensor_by_name(r, INPUT_NAME)) for r in requests]
        sizes = [a.shape[0] for a in arrays]
        try:
            batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
            distance = self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)})[0]
        except Exception as exc:  # noqa: BLE001 - answered to every request of the batch
            error = pb.TritonError(f"deepis model: {type(exc).__name__}: {exc}")
            return [pb.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses = []
        start = 0
        for n in sizes:
            responses.append(pb.InferenceResponse(output_tensors=[self.tensor(OUTPUT_NAME, distance[start:start + n])]))
            start += n
        return responses

    def finalize(self) -> None:
        self.session = None
