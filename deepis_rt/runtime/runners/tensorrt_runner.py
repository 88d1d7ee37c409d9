"""Native TensorRT runner (TensorRT 10/11 Python API): named-tensor I/O, ``execute_async_v3``.

Written against the documented API (``ICudaEngine.num_io_tensors / get_tensor_name /
get_tensor_mode / get_tensor_dtype``, ``IExecutionContext.set_input_shape / set_tensor_address /
execute_async_v3``). CUDA memory and streams come from PyTorch (``torch.cuda``), not pycuda.
One ``IExecutionContext`` is made per CUDA stream that calls the runner, so several streams
(threads) may run the same engine concurrently.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt._optional import import_optional
from deepis_rt.errors import BackendError
from deepis_rt.runtime.runners.base import Runner

__all__ = ["TensorRTRunner"]

log = logging.getLogger(__name__)


def _torch_dtype(trt: Any, dtype: Any) -> Any:
    import torch

    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16}
    if dtype not in table:
        raise BackendError(f"tensorrt: unsupported I/O dtype {dtype}; expected FLOAT or HALF")
    return table[dtype]


class TensorRTRunner(Runner):
    """Run a serialised TensorRT engine.

    Parameters
    ----------
    engine : path, bytes or callable
        An engine file (``.plan`` / ``.engine``), its bytes, or a callable returning bytes or an
        ``ICudaEngine`` (lazy loader, e.g. the export cache building or loading an engine).
    device : str
        CUDA device, e.g. ``"cuda:0"``.
    """

    name = "tensorrt"

    def __init__(self, engine: str | os.PathLike | bytes | Callable[[], Any], device: str = "cuda:0") -> None:
        super().__init__()
        self._engine_source = engine
        self.device_str = device if str(device).startswith("cuda") else "cuda:0"
        self.engine: Any = None
        self._trt: Any = None
        self._runtime: Any = None
        self._contexts: dict[int, Any] = {}
        self._ctx_lock = threading.Lock()

    def activate_impl(self) -> None:
        import torch

        trt = import_optional("tensorrt", "the native TensorRT backend")
        if not torch.cuda.is_available():
            raise BackendError("tensorrt: no CUDA GPU is available (torch.cuda.is_available() is False)")
        self._trt = trt
        self.device = torch.device(self.device_str)
        source = self._engine_source
        if callable(source):
            source = source()
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise BackendError(f"tensorrt: no such engine file: {path}")
            source = path.read_bytes()
        if isinstance(source, (bytes, bytearray, memoryview)):
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            engine = self._runtime.deserialize_cuda_engine(bytes(source))
        else:
            engine = source
        if engine is None:
            raise BackendError("tensorrt: deserialising the engine failed (built by another TensorRT version or GPU?)")
        self.engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendError(f"tensorrt: expected one input and one output tensor, got {inputs} and {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = _torch_dtype(trt, engine.get_tensor_dtype(self.input_name))
        self.output_dtype = _torch_dtype(trt, engine.get_tensor_dtype(self.output_name))
        spatial = tuple(engine.get_tensor_shape(self.input_name))[2:]
        if len(spatial) == 3 and all(int(s) > 0 for s in spatial):
            self.fixed_spatial_zyx = tuple(int(s) for s in spatial)
        self._contexts = {}

    def deactivate_impl(self) -> None:
        self._contexts = {}
        self.engine = None
        self._runtime = None

    def _context_for(self, stream: Any) -> Any:
        """One execution context per CUDA stream (contexts are not safe to share between streams)."""
        key = int(stream.cuda_stream)
        with self._ctx_lock:
            ctx = self._contexts.get(key)
            if ctx is None:
                ctx = self.engine.create_execution_context()
                if ctx is None:
                    raise BackendError("tensorrt: could not create an execution context (out of GPU memory?)")
                self._contexts[key] = ctx
            return ctx

    def forward_device(self, x: Any) -> Any:
        """Enqueue inference of a CUDA tensor on the current stream; returns the float32 output tensor."""
        import torch

        stream = torch.cuda.current_stream(self.device)
        ctx = self._context_for(stream)
        x = x.to(self.device, dtype=self.input_dtype).contiguous()
        if not ctx.set_input_shape(self.input_name, tuple(x.shape)):
            raise BackendError(
                f"tensorrt: input shape {tuple(x.shape)} is outside the engine's optimisation profile"
            )
        out_shape = tuple(ctx.get_tensor_shape(self.output_name))
        y = torch.empty(out_shape, dtype=self.output_dtype, device=self.device)
        ctx.set_tensor_address(self.input_name, x.data_ptr())
        ctx.set_tensor_address(self.output_name, y.data_ptr())
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise BackendError("tensorrt: execute_async_v3 failed (see the TensorRT log above)")
        # keep the input alive until the stream has consumed it
        x.record_stream(stream)
        return y.float()

    def infer_impl(self, batch: Any) -> np.ndarray:
        import torch

        x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch, np.float32))
        y = self.forward_device(x.to(self.device, non_blocking=True))
        torch.cuda.current_stream(self.device).synchronize()
        return y.cpu().numpy()

    def infer_stream(self, batches: Iterable[Any]) -> Iterator[np.ndarray]:
        from deepis_rt.runtime.gpu import CudaDataPath

        if not self.is_active:
            raise BackendError("tensorrt: infer_stream() called before activate()")
        with self._lock:
            yield from CudaDataPath(self.forward_device, device=self.device_str).run(self._checked(batches))

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"backend": self.name, "device": self.device_str}
        if self._trt is not None:
            info["tensorrt"] = getattr(self._trt, "__version__", "?")
        return info
