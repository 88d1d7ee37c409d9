"""PyTorch runner: CPU (FP32 eager, ``inference_mode``) and CUDA (FP32 / FP16, CUDA graphs)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from deepis_rt.errors import BackendError, ConfigError
from deepis_rt.runtime.runners.base import Runner, as_numpy_batch

__all__ = ["TorchRunner"]

log = logging.getLogger(__name__)

#: at most this many captured CUDA graphs (one per input shape) are kept
_MAX_GRAPHS = 8


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
    """

    def __init__(
        self,
        model: Any,
        device: str = "cpu",
        precision: str = "fp32",
        cuda_graphs: bool = False,
        num_threads: int | None = None,
        channels_last: bool = False,
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
        self.name = "torch-cuda" if self.is_cuda else "torch-cpu"
        self.model: Any = None
        self._graphs: dict[tuple[int, ...], tuple[Any, Any, Any]] = {}

    # -- lifecycle ---------------------------------------------------------------------------
    def activate_impl(self) -> None:
        import torch

        from deepis_rt.checkpoint import Checkpoint

        if self.is_cuda and not torch.cuda.is_available():
            raise BackendError(f"{self.name}: CUDA is not available (torch {torch.__version__})")
        source = self._model_source
        if callable(source) and not isinstance(source, torch.nn.Module):
            source = source()
        if isinstance(source, Checkpoint):
            source = source.build()
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
        self._graphs = {}

    def deactivate_impl(self) -> None:
        self.model = None
        self._graphs = {}
        if self.is_cuda:
            import torch

            torch.cuda.empty_cache()

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

        with torch.inference_mode():
            x = self._prepare(x)
            if self.cuda_graphs:
                y = self._replay(x)
            else:
                y = self.model(x)
            return y.float()

    def infer_impl(self, batch: Any) -> np.ndarray:
        import torch

        y = self.forward_device(batch)
        if self.is_cuda:
            torch.cuda.current_stream(self.device).synchronize()
        return y.contiguous().cpu().numpy()

    def infer_stream(self, batches: Iterable[Any]) -> Iterator[np.ndarray]:
        """On a GPU, overlap host-device copies with compute (see :mod:`deepis_rt.runtime.gpu`)."""
        if not self.is_cuda:
            yield from super().infer_stream(batches)
            return
        from deepis_rt.runtime.gpu import CudaDataPath

        if not self.is_active:
            raise BackendError(f"{self.name}: infer_stream() called before activate()")
        with self._lock:
            path = CudaDataPath(self.forward_device, device=self.device_str)
            yield from path.run(self._checked(batches))

    # -- CUDA graphs ---------------------------------------------------------------------------
    def _replay(self, x: Any) -> Any:
        """Capture a graph per shape (after a warm-up on a side stream, as the PyTorch docs ask)."""
        import torch

        key = tuple(x.shape)
        entry = self._graphs.get(key)
        if entry is None:
            if len(self._graphs) >= _MAX_GRAPHS:
                self._graphs.pop(next(iter(self._graphs)))
            static_in = x.clone()
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(3):
                    self.model(static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self.model(static_in)
            entry = (graph, static_in, static_out)
            self._graphs[key] = entry
            log.debug("%s: captured a CUDA graph for input %s", self.name, key)
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        # the graph's output buffer is reused by the next replay: hand out a copy
        return static_out.clone()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "device": self.device_str,
            "precision": self.precision,
            "cuda_graphs": self.cuda_graphs,
        }
