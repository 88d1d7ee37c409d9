"""PyTorch runner: CPU and CUDA, FP32 / FP16 / BF16, channels-last, CUDA graphs, ``torch.compile``.

On CUDA, "fp32" means FP32: cuDNN's and cuBLAS's TF32 modes (cuDNN's is on by default in
PyTorch) are switched off around every forward pass unless ``allow_tf32=True``, which is then
reported as the math mode. ``cudnn.benchmark`` is on by default (the Segmenter feeds one fixed
tile shape, so autotuning runs once per batch size).

Reduced precision comes two ways: the weights cast to FP16/BF16 (activations follow; inputs
and outputs stay float32 for the caller), or ``autocast=True``, which keeps FP32 weights and
lets ``torch.autocast`` pick the precision per operation (convolutions in FP16/BF16, reductions
such as batch norm in FP32). The named combinations, and which of them auto-selection may pick,
are in :mod:`deepis_rt.backends.pytorch.variants`.

``compile_mode`` wraps the network in ``torch.compile`` (Inductor: Triton kernels on a GPU, C++/
OpenMP on a CPU). Compilation happens at the first call of each input shape; its seconds are
kept in :attr:`TorchRunner.compile_s` and reported by :meth:`TorchRunner.describe`, with
Inductor's on-disk cache folder (``compile_cache_dir``, else ``$TORCHINDUCTOR_CACHE_DIR``, else
PyTorch's default), which makes a second process's compile of the same graph much shorter.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt.backends.base import Runner, as_numpy_batch
from deepis_rt.backends.pytorch.cuda_graphs import CudaGraphCache
from deepis_rt.errors import BackendError, ConfigError

__all__ = ["TorchRunner", "PRECISIONS", "COMPILE_MODES"]

log = logging.getLogger(__name__)

#: at most this many captured CUDA graphs (one per input shape) are kept by default
_MAX_GRAPHS = 4
#: what ``precision`` may be
PRECISIONS = ("fp32", "fp16", "bf16")
#: ``torch.compile`` modes accepted by ``compile_mode`` (the ones that capture CUDA graphs themselves
#: cannot be combined with ``cuda_graphs=True``)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_COMPILE_GRAPHS = ("reduce-overhead", "max-autotune")


class TorchRunner(Runner):
    """Run a DeepIS network with PyTorch.

    Parameters
    ----------
    model : nn.Module, Checkpoint or callable
        The network, a :class:`~deepis_rt.checkpoint.Checkpoint` (built in :meth:`activate`), or a
        callable returning either (a lazy loader).
    device : str
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    precision : {"fp32", "fp16", "bf16"}
        ``"fp16"`` converts the weights to half on a GPU (inputs and outputs stay float32 for the
        caller); refused on the CPU, where half convolutions are slow. ``"bf16"`` converts them to
        bfloat16, on a GPU or a CPU (native on CPUs with AVX512_BF16 or AMX, emulated elsewhere).
    cuda_graphs : bool
        Capture one CUDA graph per input shape and replay it (GPU only): removes the per-kernel
        launch overhead, which matters for the many small kernels of a 3-D U-Net.
    num_threads : int, optional
        ``torch.set_num_threads`` on the CPU (process-wide in PyTorch); None leaves it alone.
    channels_last : bool
        Use the ``channels_last_3d`` memory format (sometimes faster with cuDNN / oneDNN).
    max_graphs : int
        With ``cuda_graphs``: graphs kept at most (one per input shape, all in one shared memory
        pool; least recently used evicted). See :class:`~deepis_rt.backends.pytorch.cuda_graphs.CudaGraphCache`.
    cudnn_benchmark : bool, optional
        Set ``torch.backends.cudnn.benchmark`` (process-wide) on activation; default: on for CUDA,
        where the Segmenter's fixed tile makes autotuning pay off. None on the CPU leaves it alone.
    allow_tf32 : bool
        Let FP32 convolutions and matmuls use TF32 on Ampere and newer GPUs (faster, ~1e-3
        relative error). Off by default: ``precision="fp32"`` then computes in FP32.
    autocast : bool
        With ``precision`` fp16 or bf16: keep the FP32 weights and run the forward pass under
        ``torch.autocast`` instead of casting the weights.
    compile_mode : str, optional
        Wrap the network in ``torch.compile(mode=compile_mode)`` (one of :data:`COMPILE_MODES`);
        None: eager.
    compile_cache_dir : path, optional
        Inductor's cache folder (sets ``TORCHINDUCTOR_CACHE_DIR``, process-wide, on activation).
    """

    def __init__(
        self,
        model: Any,
        device: str = "cpu",
        precision: str = "fp32",
        cuda_graphs: bool = False,
        num_threads: int | None = None,
        channels_last: bool = False,
        max_graphs: int = _MAX_GRAPHS,
        cudnn_benchmark: bool | None = None,
        allow_tf32: bool = False,
        autocast: bool = False,
        compile_mode: str | None = None,
        compile_cache_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ConfigError(f"torch runner: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.device_str = str(device)
        self.is_cuda = self.device_str.startswith("cuda")
        if precision == "fp16" and not self.is_cuda:
            raise ConfigError("torch runner: precision='fp16' needs a CUDA device; use fp32 or bf16 on the CPU")
        if cuda_graphs and not self.is_cuda:
            raise ConfigError("torch runner: cuda_graphs=True needs a CUDA device")
        if autocast and precision == "fp32":
            raise ConfigError("torch runner: autocast=True needs precision 'fp16' or 'bf16'")
        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise ConfigError(f"torch runner: compile_mode must be one of {', '.join(COMPILE_MODES)} or None, "
                              f"got {compile_mode!r}")
        if cuda_graphs and compile_mode in _COMPILE_GRAPHS:
            raise ConfigError(f"torch runner: compile_mode={compile_mode!r} captures CUDA graphs itself; use "
                              "cuda_graphs=False, or compile_mode='max-autotune-no-cudagraphs'")
        self._model_source = model
        self.precision = precision
        self.cuda_graphs = bool(cuda_graphs)
        self.num_threads = num_threads
        self.channels_last = bool(channels_last)
        if int(max_graphs) < 1:
            raise ConfigError(f"torch runner: max_graphs must be >= 1, got {max_graphs}")
        self.max_graphs = int(max_graphs)
        self.cudnn_benchmark = (self.is_cuda if cudnn_benchmark is None else bool(cudnn_benchmark))
        self.allow_tf32 = bool(allow_tf32)
        self.autocast = bool(autocast)
        self.compile_mode = compile_mode
        self.compile_cache_dir = None if compile_cache_dir is None else Path(compile_cache_dir)
        #: seconds of the first call per input shape when compiled (compilation included)
        self.compile_s: dict[tuple[int, ...], float] = {}
        self.name = "torch-cuda" if self.is_cuda else "torch-cpu"
        self.model: Any = None
        self._graphs: CudaGraphCache | None = None
        self._path: Any = None  # the CUDA data path: made once, its streams reused by every infer_stream

    # -- lifecycle ---------------------------------------------------------------------------
    def activate_impl(self) -> None:
        import torch

        if self.is_cuda and not torch.cuda.is_available():
            raise BackendError(f"{self.name}: CUDA is not available (torch {torch.__version__})")
        source = self._model_source
        if callable(source) and not isinstance(source, torch.nn.Module):
            source = source()
        if not isinstance(source, torch.nn.Module) and callable(getattr(source, "build", None)):
            source = source.build()  # a Checkpoint (or anything that builds the network)
        if not isinstance(source, torch.nn.Module):
            raise BackendError(f"{self.name}: expected an nn.Module or Checkpoint, got {type(source).__name__}")
        self.size_multiple = int(getattr(getattr(source, "config", None), "size_multiple", 16))
        if self.num_threads:
            torch.set_num_threads(int(self.num_threads))
        self.device = torch.device(self.device_str)
        model = source.eval().to(self.device)
        if self.precision != "fp32" and not self.autocast:
            model = model.to(self._compute_dtype(torch))
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
        if self.compile_mode is not None:
            if self.compile_cache_dir is not None:
                self.compile_cache_dir.mkdir(parents=True, exist_ok=True)
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self.compile_cache_dir)
            model = torch.compile(model, mode=self.compile_mode, dynamic=False)
        self.compile_s = {}
        self.model = model
        if self.is_cuda and self.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True  # process-wide; fixed tiles make autotuning pay off
        forward = self._compiled_forward if self.compile_mode is not None else self._forward
        self._graphs = (CudaGraphCache(forward, self.device, self.max_graphs) if self.cuda_graphs else None)

    def deactivate_impl(self) -> None:
        if self._graphs is not None:
            self._graphs.clear()
        self._graphs = None
        self._path = None
        self.model = None
        if self.is_cuda:
            import torch

            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()

    @contextlib.contextmanager
    def _math_mode(self) -> Any:
        """FP32 means FP32 on CUDA: TF32 off for cuDNN and cuBLAS during the call (restored after)."""
        if not self.is_cuda:
            yield
            return
        import torch

        cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
        saved = (cudnn.allow_tf32, matmul.allow_tf32)
        cudnn.allow_tf32 = matmul.allow_tf32 = self.allow_tf32
        try:
            yield
        finally:
            cudnn.allow_tf32, matmul.allow_tf32 = saved

    def _compute_dtype(self, torch: Any) -> Any:
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]

    def _forward(self, x: Any) -> Any:
        if not self.autocast:
            return self.model(x)
        import torch

        # autocast's cache of cast weights must not live across a CUDA-graph capture (PyTorch's advice)
        with torch.autocast(self.device.type, dtype=self._compute_dtype(torch), cache_enabled=not self.cuda_graphs):
            return self.model(x)

    def _compiled_call(self, x: Any) -> Any:
        if self.is_cuda and self.compile_mode in _COMPILE_GRAPHS:
            import torch

            # Inductor's own CUDA graphs reuse their output buffers at the next replay, while the data
            # path still copies the previous frame's output out: a new step, and a copy of the output
            torch.compiler.cudagraph_mark_step_begin()
            return self._forward(x).clone()
        return self._forward(x)

    def _compiled_forward(self, x: Any) -> Any:
        """The forward pass, timing the first call of each shape (that call compiles)."""
        shape = tuple(int(s) for s in x.shape)
        if shape in self.compile_s:
            return self._compiled_call(x)
        t0 = time.perf_counter()
        y = self._compiled_call(x)
        if self.is_cuda:
            import torch

            torch.cuda.current_stream(self.device).synchronize()
        self.compile_s[shape] = round(time.perf_counter() - t0, 3)
        log.info("%s: torch.compile(mode=%r) for input %s took %.1f s", self.name, self.compile_mode, shape,
                 self.compile_s[shape])
        return y

    # -- inference ---------------------------------------------------------------------------
    def _prepare(self, x: Any) -> Any:
        import torch

        if not isinstance(x, torch.Tensor):
            x = torch.from_numpy(as_numpy_batch(x))
        dtype = torch.float32 if self.autocast else self._compute_dtype(torch)
        x = x.to(self.device, dtype=dtype, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return x

    def forward_device(self, x: Any) -> Any:
        """Run on a device tensor and return the device tensor (float32); used by the GPU data path."""
        import torch

        with torch.inference_mode(), self._math_mode():
            x = self._prepare(x)
            if self._graphs is not None:
                y = self._graphs.run(x)
            elif self.compile_mode is not None:
                y = self._compiled_forward(x)
            else:
                y = self._forward(x)
            return y.float()

    def infer_impl(self, batch: Any) -> np.ndarray:
        import torch

        y = self.forward_device(batch)
        if self.is_cuda:
            torch.cuda.current_stream(self.device).synchronize()
        return y.contiguous().cpu().numpy()

    def infer_stream(self, batches: Iterable[Any]) -> Iterator[np.ndarray]:
        """On a GPU, overlap host-device copies with compute (see :mod:`deepis_rt.backends.cuda`)."""
        if not self.is_cuda:
            yield from super().infer_stream(batches)
            return
        from deepis_rt.backends.cuda import CudaDataPath

        if not self.is_active:
            raise BackendError(f"{self.name}: infer_stream() called before activate()")
        with self._lock:
            if self._path is None:  # its three streams live as long as the runner's activation
                self._path = CudaDataPath(self.forward_device, device=self.device_str)
            yield from self._path.run(self._checked(batches))

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "backend": self.name,
            "device": self.device_str,
            "precision": self.precision,
            "cuda_graphs": self.cuda_graphs,
            "channels_last": self.channels_last,
            "math": _math_label(self.is_cuda, self.precision, self.allow_tf32, self.autocast),
        }
        if self.compile_mode is not None:
            info["compile"] = {"mode": self.compile_mode, "cache_dir": str(inductor_cache_dir()),
                               "seconds_per_shape": {"x".join(map(str, k)): v for k, v in self.compile_s.items()}}
        return info


def inductor_cache_dir() -> Path:
    """Where Inductor keeps compiled kernels: ``$TORCHINDUCTOR_CACHE_DIR``, else PyTorch's default."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        return Path(cache_dir())
    except Exception:  # a private helper of PyTorch: its documented default otherwise
        import getpass
        import tempfile

        return Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}"


def _math_label(is_cuda: bool, precision: str, allow_tf32: bool, autocast: bool = False) -> str:
    """What the arithmetic really is (for result summaries and bench rows)."""
    if autocast:
        return f"autocast to {precision} (fp32 weights; convolutions in {precision}, reductions in fp32)"
    if precision == "bf16":
        return "bf16 weights and activations"
    if precision == "fp16":
        return "fp16 weights and activations"
    if is_cuda and allow_tf32:
        return "tf32 (fp32 storage, TF32 convolutions and matmuls)"
    return "fp32 (TF32 off)" if is_cuda else "fp32"
