"""ONNX Runtime runner: a tuned CPU execution provider; CUDA and TensorRT EPs with onnxruntime-gpu.

On a GPU the runner owns one non-default CUDA stream, hands it to the CUDA execution provider
(``user_compute_stream``) and binds inputs and outputs in device memory (I/O binding of torch
CUDA tensors), with provider synchronisation after ``Run`` disabled: ONNX Runtime's kernels are
enqueued on that stream and ordered against the data path's copy streams by stream waits, never
by blocking the host, so the pinned-ring pipeline of :mod:`deepis_rt.backends.cuda` overlaps
copies with compute. A session that silently lost a requested GPU provider is refused (see
:mod:`~deepis_rt.backends.onnxrt.providers`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt._optional import import_optional
from deepis_rt.backends.base import Runner, as_numpy_batch
from deepis_rt.backends.onnxrt.providers import (
    PROVIDER_NAMES,
    NativeStderr,
    check_registered,
    cuda_provider_options,
    tensorrt_provider_options,
)
from deepis_rt.errors import BackendError, ConfigError

__all__ = ["OnnxRuntimeRunner", "physical_cores", "ort_providers"]

log = logging.getLogger(__name__)

_PROVIDERS = PROVIDER_NAMES
#: ONNX element types of the I/O the runner binds
_ELEMENT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def physical_cores() -> int:
    """Physical cores this process may run on (hyper-threads do not help convolutions)."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        allowed = set(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    try:
        with open("/proc/cpuinfo") as f:
            proc = phys = core = None
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    proc = int(value)
                elif key == "physical id":
                    phys = value
                elif key == "core id":
                    core = value
                elif not key and proc is not None:
                    if proc in allowed:
                        cores.add((phys or "0", core if core is not None else str(proc)))
                    proc = phys = core = None
            if proc is not None and proc in allowed:
                cores.add((phys or "0", core if core is not None else str(proc)))
    except OSError:
        pass
    return max(1, min(len(cores) or len(allowed), len(allowed)))


def ort_providers() -> list[str]:
    """Execution providers of the installed ONNX Runtime ([] when it is not installed)."""
    try:
        ort = import_optional("onnxruntime")
    except ImportError:
        return []
    return list(ort.get_available_providers())


class OnnxRuntimeRunner(Runner):
    """Run an exported DeepIS ONNX graph with ONNX Runtime.

    Parameters
    ----------
    model : path, bytes or callable
        An ``.onnx`` file, its bytes, or a callable returning either (lazy loader: e.g. export a
        checkpoint only when the runner is activated).
    provider : {"cpu", "cuda", "tensorrt"}
        Execution provider. ``"cuda"`` / ``"tensorrt"`` need ``onnxruntime-gpu`` and a GPU; when
        ONNX Runtime cannot register the provider, :meth:`activate` raises
        :class:`~deepis_rt.errors.BackendError` with its reason instead of running on the CPU.
    intra_op_threads : int, optional
        Threads inside an operator; default: the physical cores (see :func:`physical_cores`).
    execution_mode : {"sequential", "parallel"}
        ``ORT_SEQUENTIAL`` or ``ORT_PARALLEL``; the U-Net is mostly a chain, so sequential is the
        default (parallel only helps where branches, e.g. the two GCN branches, are independent).
    allow_spinning : bool
        Let idle worker threads spin (lower latency on a dedicated machine; wasteful on a shared one).
    engines_dir : path
        Where the TensorRT EP keeps its engine and timing caches (``<engines_dir>/ort-trt``).
    fp16 : bool
        Ask the TensorRT EP to build FP16 engines.
    device_id : int
        GPU index for the CUDA / TensorRT EPs.
    allow_tf32 : bool
        CUDA EP only: let FP32 convolutions run in TF32 (faster on Ampere and newer, ~1e-3
        relative error). Off by default, so that an FP32 graph computes in FP32.
    trt_profile : EngineProfile or (min, opt, max), optional
        TensorRT EP only: the input shapes ``(N, 1, Z, Y, X)`` its engine is built for (the same
        profile as the native TensorRT backend, :func:`deepis_rt.backends.trt.profile.profile_from_batch`).
        Without one the EP rebuilds its engine whenever a new batch size appears.
    """

    def __init__(
        self,
        model: str | os.PathLike | bytes | Callable[[], Any],
        provider: str = "cpu",
        intra_op_threads: int | None = None,
        execution_mode: str = "sequential",
        allow_spinning: bool = True,
        engines_dir: str | os.PathLike = "engines",
        fp16: bool = True,
        device_id: int = 0,
        allow_tf32: bool = False,
        trt_profile: Any = None,
    ) -> None:
        super().__init__()
        if provider not in _PROVIDERS:
            raise ConfigError(f"onnxruntime runner: provider must be one of {sorted(_PROVIDERS)}, got {provider!r}")
        if execution_mode not in ("sequential", "parallel"):
            raise ConfigError(f"onnxruntime runner: execution_mode must be 'sequential' or 'parallel', got {execution_mode!r}")
        if provider == "tensorrt" and trt_profile is None:
            raise ConfigError("onnxruntime runner: the TensorRT provider needs trt_profile (min, opt, max input "
                              "shapes), or it rebuilds its engine for every new batch size; see "
                              "deepis_rt.backends.trt.profile.profile_from_batch")
        self._model_source = model
        self.provider = provider
        self.intra_op_threads = intra_op_threads
        self.execution_mode = execution_mode
        self.allow_spinning = allow_spinning
        self.engines_dir = Path(engines_dir)
        self.fp16 = fp16
        self.device_id = int(device_id)
        self.allow_tf32 = bool(allow_tf32)
        self.trt_profile = trt_profile
        self.name = "onnxruntime-cpu" if provider == "cpu" else f"onnxruntime-{provider}"
        self.session: Any = None
        self.provider_options: list[Any] = []
        self._stream: Any = None
        self._run_options: Any = None

    def _session_options(self, ort: Any) -> Any:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = int(self.intra_op_threads or physical_cores())
        so.inter_op_num_threads = 1 if self.execution_mode == "sequential" else 2
        so.execution_mode = (
            ort.ExecutionMode.ORT_SEQUENTIAL if self.execution_mode == "sequential" else ort.ExecutionMode.ORT_PARALLEL
        )
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.allow_spinning else "0")
        so.log_severity_level = 3
        return so

    def _create_stream(self) -> Any:
        """The runner's own CUDA stream (ONNX Runtime's compute stream for the whole session)."""
        import torch

        if not torch.cuda.is_available():
            raise BackendError(f"{self.name}: no CUDA GPU is visible to PyTorch (torch {torch.__version__}), "
                               "which provides the runner's stream and device buffers")
        with torch.cuda.device(self.device_id):
            return torch.cuda.Stream(torch.device("cuda", self.device_id))

    def _check_available(self, ort: Any) -> None:
        available = ort.get_available_providers()
        wanted = _PROVIDERS[self.provider]
        if wanted not in available:
            raise BackendError(
                f"{self.name}: {wanted} is not available in this ONNX Runtime ({ort.__version__}: "
                f"{', '.join(available)}); for GPUs install onnxruntime-gpu (pip install 'deepis-rt[tensorrt]')"
            )

    def _provider_list(self, ort: Any, input_name: str = "input") -> list[Any]:
        self._check_available(ort)
        if self.provider == "cpu":
            return ["CPUExecutionProvider"]
        stream = None if self._stream is None else int(self._stream.cuda_stream)
        cuda = ("CUDAExecutionProvider", cuda_provider_options(self.device_id, stream, self.allow_tf32))
        if self.provider == "cuda":
            return [cuda, "CPUExecutionProvider"]
        trt_options = tensorrt_provider_options(self.device_id, input_name, self.trt_profile,
                                                self.engines_dir / "ort-trt", self.fp16)
        return [("TensorrtExecutionProvider", trt_options), cuda, "CPUExecutionProvider"]

    def activate_impl(self) -> None:
        ort = import_optional("onnxruntime")
        source = self._model_source
        if callable(source):
            source = source()
        if isinstance(source, (str, os.PathLike)):
            if not Path(source).is_file():
                raise BackendError(f"{self.name}: no such ONNX file: {source}")
            source = str(source)
        self._check_available(ort)
        if self.provider != "cpu":
            # before the session: the CUDA provider takes the stream's handle, and importing a CUDA
            # build of torch first loads the CUDA / cuDNN libraries ONNX Runtime looks for
            self._stream = self._create_stream()
        providers = self._provider_list(ort, _graph_input_name(source))
        self.provider_options = providers
        requested = [p[0] if isinstance(p, tuple) else p for p in providers if p != "CPUExecutionProvider"]
        try:
            if requested:
                if self.provider == "tensorrt":
                    log.info("%s: creating the session; without a cached engine in %s the TensorRT EP builds "
                             "one now (minutes)", self.name, self.engines_dir / "ort-trt")
                # enable_fallback=0: a GPU provider that fails is an error, not a silent retry on the CPU
                with NativeStderr() as native:
                    try:
                        session = ort.InferenceSession(source, sess_options=self._session_options(ort),
                                                       providers=providers, enable_fallback=0)
                    except Exception as exc:
                        raise BackendError(f"{self.name}: ONNX Runtime could not create a session with "
                                           f"{', '.join(requested)}: {type(exc).__name__}: {exc}") from exc
                check_registered(self.name, session, requested, native.text)
            else:
                session = ort.InferenceSession(source, sess_options=self._session_options(ort), providers=providers)
        except BaseException:
            self._stream = None
            raise
        self.session = session
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendError(f"{self.name}: expected one input and one output, got {len(inputs)} and {len(outputs)}")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        for what, meta in (("input", inputs[0]), ("output", outputs[0])):
            if meta.type not in _ELEMENT_TYPES:
                raise BackendError(f"{self.name}: the graph's {what} is {meta.type}; expected float or float16")
        self.input_dtype = _ELEMENT_TYPES[inputs[0].type]
        self.output_dtype = _ELEMENT_TYPES[outputs[0].type]
        spatial = inputs[0].shape[2:]
        if len(spatial) == 3 and all(isinstance(s, int) for s in spatial):
            self.fixed_spatial_zyx = tuple(int(s) for s in spatial)
        elif self.provider == "tensorrt":
            # the EP's engine is built for the profile's spatial range only
            lo, hi = _profile_bounds(self.trt_profile)
            self.spatial_range_zyx = (tuple(lo[2:]), tuple(hi[2:]))  # type: ignore[assignment]
        self._run_options = ort.RunOptions()
        if self.provider == "cuda":
            # Run() returns once the work is enqueued on the runner's stream; callers order it by
            # stream waits (forward_device) or synchronise the stream (infer_impl). Not for the
            # TensorRT EP, whose engines run on a stream of its own that no caller can wait for.
            self._run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")
        log.info("%s: session ready (providers %s, %s threads)", self.name, session.get_providers(),
                 session.get_session_options().intra_op_num_threads)

    def deactivate_impl(self) -> None:
        if self._stream is not None:
            self._stream.synchronize()  # nothing of ours may still run when the session goes
        self.session = None
        self._stream = None

    def _run_bound(self, device_type: str, x_ptr: int, y_ptr: int, shape: tuple[int, ...]) -> None:
        """One ``Run`` with the input and output bound to caller-owned memory (no copies by ONNX Runtime)."""
        binding = self.session.io_binding()
        device_id = 0 if device_type == "cpu" else self.device_id
        binding.bind_input(self.input_name, device_type, device_id, self.input_dtype, list(shape), x_ptr)
        binding.bind_output(self.output_name, device_type, device_id, self.output_dtype, list(shape), y_ptr)
        self.session.run_with_iobinding(binding, self._run_options)

    def infer_impl(self, batch: Any) -> np.ndarray:
        if self.provider == "cpu":
            x = np.ascontiguousarray(as_numpy_batch(batch), dtype=self.input_dtype)
            y = np.empty(x.shape, self.output_dtype)
            self._run_bound("cpu", x.ctypes.data, y.ctypes.data, x.shape)
            return y
        import torch

        x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(as_numpy_batch(batch))
        with torch.cuda.device(self.device_id):
            current = torch.cuda.current_stream()
            y = self.forward_device(x.to(current.device, non_blocking=True))
            current.synchronize()
        return y.cpu().numpy()

    def forward_device(self, x: Any) -> Any:
        """Enqueue inference of a CUDA tensor; returns the float32 output tensor, ready on the current stream.

        The input was produced on the caller's current stream. With the CUDA EP the runner's
        stream waits for it on the GPU, ONNX Runtime enqueues its kernels there (I/O bound to
        device memory), and the current stream waits for the runner's stream before anyone reads
        the output: the host is not blocked, and the caching allocator is told which streams use
        each tensor. The TensorRT EP runs on a stream of its own, so there the host waits for the
        input and ``Run`` returns when the output is complete.
        """
        import torch

        device = torch.device("cuda", self.device_id)
        current = torch.cuda.current_stream(device)
        stream = self._stream
        x = x.to(device, dtype=_torch_dtype(self.input_dtype)).contiguous()
        if self.provider != "cuda":
            # the TensorRT EP enqueues on its own stream: the input must be complete before Run,
            # and Run synchronises the EP's streams before it returns (no overlap on this path)
            current.synchronize()
            y = torch.empty(tuple(x.shape), dtype=_torch_dtype(self.output_dtype), device=device)
            self._run_bound("cuda", x.data_ptr(), y.data_ptr(), tuple(x.shape))
            return y.float()
        stream.wait_stream(current)
        x.record_stream(stream)
        with torch.cuda.stream(stream):
            y = torch.empty(tuple(x.shape), dtype=_torch_dtype(self.output_dtype), device=device)
        self._run_bound("cuda", x.data_ptr(), y.data_ptr(), tuple(x.shape))
        current.wait_stream(stream)
        y.record_stream(current)
        return y.float()

    def infer_stream(self, batches: Iterable[Any]) -> Iterator[np.ndarray]:
        if self.provider == "cpu":
            yield from super().infer_stream(batches)
            return
        from deepis_rt.backends.cuda import CudaDataPath

        with self._lock:
            yield from CudaDataPath(self.forward_device, device=f"cuda:{self.device_id}").run(self._checked(batches))

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"backend": self.name, "provider": _PROVIDERS[self.provider]}
        if self.provider != "cpu":
            info["device"] = f"cuda:{self.device_id}"
            if self.provider == "cuda":
                info["math"] = "tf32" if self.allow_tf32 else "fp32 (TF32 off)"
            else:
                # the TensorRT EP has no switch for TensorRT's TF32 builder flag, which is on by default
                info["math"] = "fp16" if self.fp16 else "fp32 (TensorRT may use TF32)"
        if self.session is not None:
            opts = self.session.get_session_options()
            info["intra_op_threads"] = opts.intra_op_num_threads
            info["execution_mode"] = self.execution_mode
            info["registered_providers"] = list(self.session.get_providers())
        return info


def _torch_dtype(dtype: Any) -> Any:
    import torch

    return torch.float16 if np.dtype(dtype) == np.float16 else torch.float32


def _profile_bounds(profile: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if hasattr(profile, "min_shape"):
        return tuple(profile.min_shape), tuple(profile.max_shape)
    lo, _opt, hi = profile
    return tuple(lo), tuple(hi)


def _graph_input_name(source: Any) -> str:
    """The name of the graph's (first) input, read without loading external weights."""
    try:
        import onnx

        proto = onnx.load_model_from_string(source) if isinstance(source, (bytes, bytearray)) else \
            onnx.load(str(source), load_external_data=False)
        initializers = {t.name for t in proto.graph.initializer}
        names = [i.name for i in proto.graph.input if i.name not in initializers]
        if names:
            return names[0]
    except Exception as exc:  # the session reports an unreadable graph more precisely
        log.debug("onnxruntime: could not read the graph's input name: %s", exc)
    return "input"
