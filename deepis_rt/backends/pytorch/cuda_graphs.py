"""CUDA graphs for the PyTorch runner: one shared memory pool, a bounded number of graphs.

A 3-D U-Net launches hundreds of small kernels per tile; replaying a captured CUDA graph removes
their launch overhead. The cache keeps one graph per input shape with these rules:

* **One memory pool for all graphs** (``torch.cuda.graph_pool_handle()``): each graph's
  activations would otherwise sit in a private pool, so eight batch sizes cost eight times the
  activation memory. Sharing is safe when graphs never run concurrently; every replay therefore
  waits (on the GPU) for the previous one (:attr:`CudaGraphCache.last_replay`).
* **At most ``max_graphs`` graphs**, least recently used evicted first (after its last replay
  has finished).
* **No device-wide synchronisation, garbage collection or cache flush per new shape.** The
  ``torch.cuda.graph`` context manager does all three on entry; capture here uses
  ``CUDAGraph.capture_begin(pool=...)`` / ``capture_end()`` on the cache's own side stream,
  after a warm-up on that stream (as the PyTorch documentation asks), ordered against the
  caller's stream by stream waits only.

``cuda`` (the ``torch.cuda`` module by default) is a parameter so that the bookkeeping is unit-
tested on a CPU with a stand-in.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

__all__ = ["CudaGraphCache"]

log = logging.getLogger(__name__)


class _Entry:
    __slots__ = ("graph", "static_in", "static_out")

    def __init__(self, graph: Any, static_in: Any, static_out: Any) -> None:
        self.graph, self.static_in, self.static_out = graph, static_in, static_out


class CudaGraphCache:
    """Captured forward passes of ``model``, one per input shape.

    Parameters
    ----------
    model : callable
        The network (tensor -> tensor), already on the device and in eval mode.
    device : torch.device
        The CUDA device.
    max_graphs : int
        Graphs kept at most (one per input shape; the Segmenter's fixed tile makes that one per
        batch size).
    warmup : int
        Eager runs on the side stream before a capture (cuDNN autotuning and lazy
        initialisation must not happen inside the capture).
    cuda : module, optional
        ``torch.cuda`` or a stand-in with ``Stream``, ``Event``, ``CUDAGraph``,
        ``graph_pool_handle``, ``current_stream`` and ``stream``.
    """

    def __init__(self, model: Callable[[Any], Any], device: Any, max_graphs: int = 4, warmup: int = 3,
                 cuda: Any = None) -> None:
        if max_graphs < 1:
            raise ValueError(f"cuda graphs: max_graphs must be >= 1, got {max_graphs}")
        if cuda is None:
            import torch

            cuda = torch.cuda
        self.cuda = cuda
        self.model = model
        self.device = device
        self.max_graphs = int(max_graphs)
        self.warmup = int(warmup)
        self.pool = cuda.graph_pool_handle()
        self.side_stream = cuda.Stream(device)
        self.last_replay: Any = None
        self.captures = 0
        self.evictions = 0
        self._graphs: OrderedDict[tuple[int, ...], _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._graphs)

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        """Input shapes with a captured graph, least recently used first."""
        return list(self._graphs)

    def _capture(self, x: Any) -> _Entry:
        cuda = self.cuda
        current = cuda.current_stream(self.device)
        side = self.side_stream
        static_in = x.clone()
        side.wait_stream(current)  # static_in (and the weights) are ready
        graph = cuda.CUDAGraph()
        with cuda.stream(side):
            for _ in range(self.warmup):
                self.model(static_in)
            # thread_local: other threads (readers allocating pinned memory) may keep working
            graph.capture_begin(pool=self.pool, capture_error_mode="thread_local")
            try:
                static_out = self.model(static_in)
            finally:
                graph.capture_end()
        current.wait_stream(side)
        self.captures += 1
        log.debug("cuda graphs: captured a graph for input %s (%d kept, shared pool)", tuple(x.shape),
                  len(self._graphs) + 1)
        return _Entry(graph, static_in, static_out)

    def _evict(self) -> None:
        shape, entry = self._graphs.popitem(last=False)
        if self.last_replay is not None:
            self.last_replay.synchronize()  # the graph may be the one still running
        del entry
        self.evictions += 1
        log.debug("cuda graphs: evicted the graph for input %s (max_graphs=%d)", shape, self.max_graphs)

    def run(self, x: Any) -> Any:
        """The model's output for ``x`` (a device tensor), by replaying the graph of its shape.

        The returned tensor is a copy made on the caller's current stream: the graph's own output
        buffer is overwritten by the next replay.
        """
        key = tuple(int(s) for s in x.shape)
        entry = self._graphs.get(key)
        if entry is None:
            if len(self._graphs) >= self.max_graphs:
                self._evict()
            entry = self._capture(x)
            self._graphs[key] = entry
        else:
            self._graphs.move_to_end(key)
        current = self.cuda.current_stream(self.device)
        if self.last_replay is not None:
            current.wait_event(self.last_replay)  # graphs share memory: never two replays at once
        entry.static_in.copy_(x)
        entry.graph.replay()
        out = entry.static_out.clone()
        event = self.cuda.Event()
        event.record(current)
        self.last_replay = event
        return out

    def clear(self) -> None:
        """Drop every graph (after the last replay has finished)."""
        if self.last_replay is not None:
            self.last_replay.synchronize()
        self._graphs.clear()
        self.last_replay = None
