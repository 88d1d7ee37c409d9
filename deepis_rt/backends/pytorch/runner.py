"""PyTorch runner: CPU (FP32 eager, ``inference_mode``) and CUDA (FP32 / FP16, CUDA graphs).

On CUDA, "fp32" means FP32: cuDNN's and cuBLAS's TF32 modes (cuDNN's is on by default in
PyTorch) are switched off around every forward pass unless ``allow_tf32=True``, which is then
reported as the math mode. ``cudnn.benchmark`` is on by default (the Segmenter feeds one fixed
tile shape, so autotuning runs once per batch size).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from deepis_rt.backends.base import Runner, as_numpy_batch
from deepis_rt.backends.pytorch.cuda_graphs import CudaGraphCache
from deepis_rt.errors import BackendError, ConfigError

__all__ = ["TorchRunner"]

log = logging.getLogger(__name__)

#: at most this many captured CUDA graphs (one per input shape) are kept by default
_MAX_GRAPHS = 4


class TorchRunner(Runner):
    """Run a DeepIS network with PyTorch.

    Parameters
    ----------
    model : nn.Module, Checkpoint or callable
        The network, a :class:`~deepis_rt.checkpoint.Checkpoint` (built in :meth:`activate`), or a
        callable returning either (a lazy loader).
    device : str
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    precision : {"fp32", "fp16"}
        ``"fp16"`` converts the weights to half on a GPU (inputs and outputs stay float32 for the
        caller); refused on the CPU, where half convolutions are slow.
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
    ) -> None:
        super().__init__()
        if precision not in ("fp32", "fp16"):
            raise ConfigError(f"torch runner: precision must be 'fp32' or 'fp16', got {precision!r}")
        self.device_str = str(device)
        self.is_cuda = self.device_str.startswith("cuda")
        if precision == "fp16" and not self.is_cuda:
            raise ConfigError("torch runner: precision='fp16' needs a CUDA device; use fp32 on the CPU")
        if cuda_graphs and not self.is_cuda:
            raise ConfigError("torch runner: cuda_graphs=True needs a CUDA device")
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
        self.name = "torch-cuda" if self.is_cuda else "torch-cpu"
        self.model: Any = None
        self._graphs: CudaGraphCache | None = None

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
        if self.precision == "fp16":
            model = model.half()
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
        self.model = model
        if self.is_cuda and self.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True  # process-wide; fixed tiles make autotuning pay off
        self._graphs = (CudaGraphCache(self._forward, self.device, self.max_graphs)
                        if self.cuda_graphs else None)

    def deactivate_impl(self) -> None:
        if self._graphs is not None:
            self._graphs.clear()
        self._graphs = None
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

    def _forward(self, x: Any) -> Any:
        return self.model(x)

    # -- inference ---------------------------------------------------------------------------
    def _prepare(self, x: Any) -> Any:
        import torch

        if not isinstance(x, torch.Tensor):
            x = torch.from_numpy(as_numpy_batch(x))
        x = x.to(self.device, dtype=torch.float16 if self.precision == "fp16" else torch.float32,
                 non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return x

    def forward_device(self, x: Any) -> Any:
        """Run on a device tensor and return the device tensor (float32); used by the GPU data path."""
        import torch

        with torch.inference_mode(), self._math_mode():
            x = self._prepare(x)
            y = self._graphs.run(x) if self._graphs is not None else self.model(x)
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
            path = CudaDataPath(self.forward_device, device=self.device_str)
            yield from path.run(self._checked(batches))

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "device": self.device_str,
            "precision": self.precision,
            "cuda_graphs": self.cuda_graphs,
            "math": _math_label(self.is_cuda, self.precision, self.allow_tf32),
        }


def _math_label(is_cuda: bool, precision: str, allow_tf32: bool) -> str:
    """What the arithmetic really is (for result summaries and bench rows)."""
    if precision == "fp16":
        return "fp16 weights and activations"
    if is_cuda and allow_tf32:
        return "tf32 (fp32 storage, TF32 convolutions and matmuls)"
    return "fp32 (TF32 off)" if is_cuda else "fp32"
