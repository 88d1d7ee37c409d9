"""Native TensorRT runner (TensorRT 10/11 Python API): named-tensor I/O, ``execute_async_v3``.

Written against the documented API (``ICudaEngine.num_io_tensors / get_tensor_name /
get_tensor_mode / get_tensor_dtype / get_tensor_profile_shape``, ``IExecutionContext.set_input_shape
/ set_tensor_address / execute_async_v3``). CUDA memory and streams come from PyTorch
(``torch.cuda``), not pycuda.

One runner = one device, one persistent non-default CUDA stream and one execution context:

* the engine is deserialised, and its context created, inside ``torch.cuda.device(index)`` for the
  runner's device (an ``ICudaEngine`` belongs to the device current when it was made);
* every enqueue — :meth:`~deepis_rt.backends.base.Runner.infer`, :meth:`infer_stream`,
  :meth:`forward_device` — goes to the runner's own stream, never the legacy default stream (on
  which TensorRT adds device synchronisations); the one context is therefore only ever used on one
  stream, in order, and the runner's lock serialises host threads;
* :meth:`~deepis_rt.backends.base.Runner.deactivate` synchronises that stream before the
  context, the engine and the runtime are released, in that order.

The engine's optimisation profile is read back (``get_tensor_profile_shape(name, 0)``) and exposed
as :attr:`TensorRTRunner.input_profile`; :attr:`fixed_spatial_zyx` (min == max) or
:attr:`TensorRTRunner.spatial_range_zyx` (a range) tell the tile planner what the engine accepts,
and batches larger than the profile's maximum are run in chunks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt._optional import import_optional
from deepis_rt.backends.base import Runner
from deepis_rt.backends.trt.env import make_logger
from deepis_rt.backends.trt.profile import EngineProfile
from deepis_rt.errors import BackendError, BackendOutOfMemoryError

__all__ = ["TensorRTRunner", "torch_dtype", "run_engine"]

log = logging.getLogger(__name__)


def torch_dtype(trt: Any, dtype: Any) -> Any:
    """The torch dtype of a TensorRT I/O ``DataType`` (FLOAT or HALF; others are refused)."""
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
        ``ICudaEngine`` (lazy loader, e.g. the export cache building or loading an engine). The
        callable is called inside the runner's device scope.
    device : str
        CUDA device, e.g. ``"cuda:0"`` or ``"cuda:1"``.
    ops : object, optional
        The CUDA operations (default :class:`deepis_rt.backends.cuda.TorchCudaOps` for ``device``);
        tests pass a CPU stand-in.

    Attributes
    ----------
    input_profile : deepis_rt.backends.trt.profile.EngineProfile or None
        The input's optimisation profile as the engine reports it (min / opt / max, N1ZYX).
    spatial_range_zyx : ((z, y, x), (z, y, x)) or None
        Smallest and largest spatial tile the engine accepts when its profile is a range (None for a
        fixed tile, then :attr:`fixed_spatial_zyx` is set). Tiles must be planned inside it.
    max_batch_size : int or None
        The profile's largest batch; larger batches are split into chunks of at most this size.
    """

    name = "tensorrt"

    def __init__(self, engine: str | os.PathLike | bytes | Callable[[], Any], device: str = "cuda:0",
                 ops: Any = None) -> None:
        super().__init__()
        self._engine_source = engine
        self.device_str = str(device) if str(device).startswith("cuda") else "cuda:0"
        self._ops_given = ops
        self._ops: Any = None
        self.engine: Any = None
        self._trt: Any = None
        self._runtime: Any = None
        self._context: Any = None
        self._stream: Any = None
        self._path: Any = None
        self.input_profile: Any = None
        self.spatial_range_zyx: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None
        self.max_batch_size: int | None = None
        self._min_batch = 1

    # -- lifecycle ---------------------------------------------------------------------------
    def activate_impl(self) -> None:
        trt = import_optional("tensorrt", "the native TensorRT backend")
        ops = self._ops_given
        if ops is None:
            import torch

            if not torch.cuda.is_available():
                raise BackendError("tensorrt: no CUDA GPU is available (torch.cuda.is_available() is False)")
            from deepis_rt.backends.cuda import TorchCudaOps

            ops = TorchCudaOps(self.device_str)
        self._trt, self._ops, self.device = trt, ops, ops.device
        try:
            with ops.device_scope():
                engine = self._load_engine(trt)
                self.engine = engine
                self._read_io(trt, engine)
                self._stream = ops.stream()
                context = engine.create_execution_context()
                if context is None:
                    # TensorRT returns None when the context's activation memory cannot be allocated
                    raise BackendOutOfMemoryError(
                        "tensorrt: could not create an execution context (out of GPU memory? the context "
                        "holds the profile's largest activations; free the GPU or build a smaller profile)")
                self._context = context
        except BaseException:
            self.deactivate_impl()  # nothing half-made stays referenced
            raise
        self._path = None
        log.info("tensorrt: engine on %s, input %s %s, profile %s", self.device, self.input_name,
                 self.input_dtype, self.input_profile.to_dict())

    def _load_engine(self, trt: Any) -> Any:
        source = self._engine_source
        if callable(source):
            source = source()
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.is_file():
                raise BackendError(f"tensorrt: no such engine file: {path}")
            source = path.read_bytes()
        if isinstance(source, (bytes, bytearray, memoryview)):
            self._logger = make_logger(trt)
            self._runtime = trt.Runtime(self._logger)
            engine = self._runtime.deserialize_cuda_engine(bytes(source))
        else:
            engine = source
        if engine is None:
            raise BackendError("tensorrt: deserialising the engine failed (built by another TensorRT version "
                               "or for another GPU? rebuild it here)")
        return engine

    def _read_io(self, trt: Any, engine: Any) -> None:
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendError(f"tensorrt: expected one input and one output tensor, got {inputs} and {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = torch_dtype(trt, engine.get_tensor_dtype(self.input_name))
        self.output_dtype = torch_dtype(trt, engine.get_tensor_dtype(self.output_name))
        if engine.num_optimization_profiles < 1:
            raise BackendError("tensorrt: the engine has no optimisation profile; rebuild it")
        lo, opt, hi = (tuple(int(d) for d in dims) for dims in engine.get_tensor_profile_shape(self.input_name, 0))
        if not len(lo) == len(opt) == len(hi) == 5:
            raise BackendError(f"tensorrt: input {self.input_name!r} has profile {lo} .. {hi}; expected rank 5 "
                               "(N, 1, Z, Y, X)")
        self.input_profile = EngineProfile(lo, opt, hi)
        self._min_batch, self.max_batch_size = lo[0], hi[0]
        if lo[2:] == hi[2:]:
            self.fixed_spatial_zyx = tuple(lo[2:])  # type: ignore[assignment]
            self.spatial_range_zyx = None
        else:
            self.fixed_spatial_zyx = None
            self.spatial_range_zyx = (tuple(lo[2:]), tuple(hi[2:]))  # type: ignore[assignment]

    def deactivate_impl(self) -> None:
        ops = self._ops
        try:
            if ops is not None and self._stream is not None:
                with ops.device_scope():
                    ops.synchronize_stream(self._stream)  # nothing queued may still use the context
        finally:
            self._path = None
            self._context = None  # context before engine before runtime
            self.engine = None
            self._runtime = None
            self._stream = None

    # -- inference ---------------------------------------------------------------------------
    @property
    def ops(self) -> Any:
        """The CUDA operations in use (:class:`~deepis_rt.backends.cuda.TorchCudaOps` on a GPU)."""
        return self._ops

    def synchronize(self) -> None:
        """Wait until everything queued on the runner's stream has finished."""
        with self._ops.device_scope():
            self._ops.synchronize_stream(self._stream)

    def forward_device(self, x: Any) -> Any:
        """Enqueue inference of a device tensor on the runner's stream; returns the float32 output.

        The runner's stream first waits for the caller's current stream (where ``x`` was made; a
        no-op inside the data path, whose compute stream is the runner's). Batches beyond the
        profile's maximum run as consecutive chunks through the one context; a batch below its
        minimum is padded (and the padding dropped from the output). The output is ready on the
        caller's current stream, as with the other runners: that stream then waits for the
        runner's (on the GPU, the host is not blocked) and the output is kept alive for it.
        """
        import torch

        if self._context is None:
            raise BackendError("tensorrt: forward_device() called before activate()")
        ops, ctx = self._ops, self._context
        n = int(x.shape[0])
        with ops.device_scope():
            caller = ops.current_stream()
            ops.wait_for_current(self._stream)
        with ops.device_scope(), ops.stream_scope(self._stream):
            given = x
            x = x.to(self.device, dtype=self.input_dtype).contiguous()
            if n < self._min_batch:
                x = torch.cat([x, x.new_zeros((self._min_batch - n, *x.shape[1:]))]).contiguous()
            total = int(x.shape[0])
            step = self.max_batch_size or total
            y = torch.empty(tuple(x.shape), dtype=self.output_dtype, device=self.device)
            for first in range(0, total, step):
                xs, ys = x[first : first + step], y[first : first + step]
                if not ctx.set_input_shape(self.input_name, tuple(xs.shape)):
                    raise BackendError(f"tensorrt: input shape {tuple(xs.shape)} is outside the engine's "
                                       f"optimisation profile {self.input_profile.to_dict()}")
                out_shape = tuple(int(d) for d in ctx.get_tensor_shape(self.output_name))
                if out_shape != tuple(ys.shape):
                    raise BackendError(f"tensorrt: the engine's output shape {out_shape} differs from the "
                                       f"input's {tuple(ys.shape)}")
                if not (ctx.set_tensor_address(self.input_name, xs.data_ptr())
                        and ctx.set_tensor_address(self.output_name, ys.data_ptr())):
                    raise BackendError("tensorrt: set_tensor_address refused a buffer (misaligned or wrong name)")
                if not ctx.execute_async_v3(self._stream.cuda_stream):
                    raise BackendError("tensorrt: execute_async_v3 failed (see the TensorRT log above)")
            # x may have been made on another stream: keep it until this stream has consumed it; the
            # caller's tensor too when x is a converted copy (the conversion read it on this stream)
            ops.keep_alive(x, self._stream)
            if given is not x:
                ops.keep_alive(given, self._stream)
            y = y[:n] if total != n else y
            y = y.float() if y.dtype != torch.float32 else y
            if caller != self._stream:
                # the caller reads y on its own stream (e.g. the benchmark's copy): order it after the
                # engine, or it reads y before the engine has written it
                ops.wait_for_current(caller)
                ops.keep_alive(y, caller)
            return y

    def infer_impl(self, batch: Any) -> np.ndarray:
        import torch

        ops = self._ops
        x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch, np.float32))
        with ops.device_scope():
            ops.wait_for_current(self._stream)  # a device batch may still be in the making on the caller's stream
            with ops.stream_scope(self._stream):
                y = self.forward_device(x.to(self.device))
                ops.synchronize_stream(self._stream)
                return y.cpu().numpy()

    def infer_stream(self, batches: Iterable[Any]) -> Iterator[np.ndarray]:
        """Outputs in order; copies overlap compute (pinned ring, see :mod:`deepis_rt.backends.cuda`).

        The ring and its copy streams persist between calls; compute runs on the runner's stream.
        """
        from deepis_rt.backends.cuda import CudaDataPath

        if not self.is_active:
            raise BackendError("tensorrt: infer_stream() called before activate()")
        with self._lock:
            if self._path is None:
                self._path = CudaDataPath(self.forward_device, device=str(self.device), ops=self._ops,
                                          compute_stream=self._stream)
            yield from self._path.run(self._checked(batches))

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"backend": self.name, "device": self.device_str}
        if self._trt is not None:
            info["tensorrt"] = getattr(self._trt, "__version__", "?")
        if self.input_profile is not None:
            info["profile"] = self.input_profile.to_dict()
            info["io_dtype"] = str(self.input_dtype).replace("torch.", "")
        return info


def run_engine(engine: Any, x: Any, ops: Any = None) -> Any:
    """Run ``engine`` once on a device float32 tensor (N, 1, Z, Y, X); returns the distance tensor.

    A minimal synchronous call used by export checks and tests, through
    :class:`~deepis_rt.backends.TensorRTRunner`: an execution context of its own on a stream of
    its own (never the legacy default stream), on the input's device, checked input shape, output
    dtype from the engine, and a synchronise before the context is released. ``ops``: the CUDA
    operations (default ``torch.cuda``; tests pass a CPU stand-in).
    """
    runner = TensorRTRunner(lambda: engine, device=str(x.device), ops=ops)
    runner.activate()
    try:
        y = runner.forward_device(x)
        runner.synchronize()
        # y's memory belongs to the runner's stream; the caller uses it on its own
        runner.ops.keep_alive(y, runner.ops.current_stream())
    finally:
        runner.deactivate()
    return y
