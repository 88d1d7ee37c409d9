"""ONNX Runtime runner: a tuned CPU execution provider; CUDA and TensorRT EPs with onnxruntime-gpu."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt._optional import import_optional
from deepis_rt.errors import BackendError, ConfigError
from deepis_rt.runtime.runners.base import Runner, as_numpy_batch

__all__ = ["OnnxRuntimeRunner", "physical_cores", "ort_providers"]

log = logging.getLogger(__name__)

_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


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
        Execution provider. ``"cuda"`` / ``"tensorrt"`` need ``onnxruntime-gpu`` and a GPU.
    intra_op_threads : int, optional
        Threads inside an operator; default: the physical cores (see :func:`physical_cores`).
    execution_mode : {"sequential", "parallel"}
        ``ORT_SEQUENTIAL`` or ``ORT_PARALLEL``; the U-Net is mostly a chain, so sequential is the
        default (parallel only helps where branches, e.g. the two GCN branches, are independent).
    allow_spinning : bool
        Let idle worker threads spin (lower latency on a dedicated machine; wasteful on a shared one).
    engines_dir : path
        Where the TensorRT EP keeps its engine and timing caches (``engines/ort-trt``).
    fp16 : bool
        Ask the TensorRT EP to build FP16 engines.
    device_id : int
        GPU index for the CUDA / TensorRT EPs.
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
    ) -> None:
        super().__init__()
        if provider not in _PROVIDERS:
            raise ConfigError(f"onnxruntime runner: provider must be one of {sorted(_PROVIDERS)}, got {provider!r}")
        if execution_mode not in ("sequential", "parallel"):
            raise ConfigError(f"onnxruntime runner: execution_mode must be 'sequential' or 'parallel', got {execution_mode!r}")
        self._model_source = model
        self.provider = provider
        self.intra_op_threads = intra_op_threads
        self.execution_mode = execution_mode
        self.allow_spinning = allow_spinning
        self.engines_dir = Path(engines_dir)
        self.fp16 = fp16
        self.device_id = int(device_id)
        self.name = "onnxruntime-cpu" if provider == "cpu" else f"onnxruntime-{provider}"
        self.session: Any = None

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

    def _provider_list(self, ort: Any) -> list[Any]:
        available = ort.get_available_providers()
        wanted = _PROVIDERS[self.provider]
        if wanted not in available:
            raise BackendError(
                f"{self.name}: {wanted} is not available in this ONNX Runtime ({ort.__version__}: "
                f"{', '.join(available)}); for GPUs install onnxruntime-gpu (pip install 'deepis-rt[tensorrt]')"
            )
        if self.provider == "cpu":
            return ["CPUExecutionProvider"]
        cuda = ("CUDAExecutionProvider", {"device_id": self.device_id})
        if self.provider == "cuda":
            return [cuda, "CPUExecutionProvider"]
        cache = self.engines_dir / "ort-trt"
        cache.mkdir(parents=True, exist_ok=True)
        trt_options = {
            "device_id": self.device_id,
            "trt_fp16_enable": bool(self.fp16),
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
        }
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
        self.session = ort.InferenceSession(
            source, sess_options=self._session_options(ort), providers=self._provider_list(ort)
        )
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise BackendError(f"{self.name}: expected one input and one output, got {len(inputs)} and {len(outputs)}")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        spatial = inputs[0].shape[2:]
        if len(spatial) == 3 and all(isinstance(s, int) for s in spatial):
            self.fixed_spatial_zyx = tuple(int(s) for s in spatial)
        log.info("%s: session ready (providers %s, %s threads)", self.name, self.session.get_providers(),
                 self.session.get_session_options().intra_op_num_threads)

    def deactivate_impl(self) -> None:
        self.session = None

    def infer_impl(self, batch: Any) -> np.ndarray:
        x = as_numpy_batch(batch)
        return self.session.run([self.output_name], {self.input_name: x})[0]

    def forward_device(self, x: Any) -> Any:
        """Run on a CUDA torch tensor through I/O binding (no host round trip); returns a CUDA tensor."""
        import torch

        x = x.to(dtype=torch.float32).contiguous()
        y = torch.empty_like(x)
        binding = self.session.io_binding()
        binding.bind_input(self.input_name, "cuda", self.device_id, np.float32, tuple(x.shape), x.data_ptr())
        binding.bind_output(self.output_name, "cuda", self.device_id, np.float32, tuple(y.shape), y.data_ptr())
        # ORT runs on its own stream: the input must be complete before it starts
        torch.cuda.current_stream(x.device).synchronize()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        return y

    def infer_stream(self, batches: Iterable[Any]) -> Iterator[np.ndarray]:
        if self.provider == "cpu":
            yield from super().infer_stream(batches)
            return
        from deepis_rt.runtime.gpu import CudaDataPath

        with self._lock:
            yield from CudaDataPath(self.forward_device, device=f"cuda:{self.device_id}").run(self._checked(batches))

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"backend": self.name, "provider": _PROVIDERS[self.provider]}
        if self.session is not None:
            opts = self.session.get_session_options()
            info["intra_op_threads"] = opts.intra_op_num_threads
            info["execution_mode"] = self.execution_mode
        return info
