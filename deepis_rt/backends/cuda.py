"""The CUDA data path: pinned host ring, copy streams, compute stream, events (``torch.cuda`` only).

For frame ``i`` of a stream of batches, with ``slot = i % depth``::

    host  : batch -> pinned_in[slot]                       (CPU memcpy)
    h2d   : device_in[slot] <- pinned_in[slot]    ; record h2d_done[slot]
    compute (waits h2d_done[slot]) : y = fn(device_in[slot]) ; record computed[slot]
    d2h   (waits computed[slot])   : pinned_out[slot] <- y  ; record d2h_done[slot]

Up to ``depth`` frames are in flight, so the host-to-device copy of frame ``i + 1`` and the
device-to-host copy of frame ``i - 1`` overlap the compute of frame ``i``. A slot is reused only
after its previous frame was drained (``d2h_done`` synchronised and its output copied out), so a
pinned buffer is never overwritten while a copy still reads it. Outputs come back in order.

Ordering against the caller: the ring's device buffers are allocated on the copy-in stream (so the
caching allocator ties them to the stream that writes them), and before the copy-in stream first
writes a newly allocated buffer it waits for the caller's current stream — memory the allocator
hands out may have been freed by work still queued there. The device-to-host copy flattens the
output inside the copy-out stream's scope (a non-contiguous output is made contiguous on the
stream that waited for the compute, not on the caller's). Streams are made once per data path:
PyTorch hands out new ``torch.cuda.Stream`` objects from a pool of 32 per device and priority, so
a runner that made three new streams per call would soon get the same stream twice; runners keep
one data path for their lifetime.

Buffers outlive the work queued on them: device buffers are marked as used by every stream that
touches them (``record_stream``), and a consumer that stops iterating early (an abandoned
generator, an exception) does not free anything before the frames still in flight are finished —
the generator's ``finally`` waits for them. A runner may pass its own persistent compute stream
(``compute_stream``) so that its execution context is only ever used on that one stream.

No pycuda: streams, events and pinned memory are PyTorch's, shared by the PyTorch, ONNX Runtime
(CUDA EP with I/O binding) and TensorRT runners. The stream/event operations sit behind a small
``ops`` object so that the ring logic is unit-tested on the CPU with a stand-in.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from deepis_rt.backends.base import as_numpy_batch

__all__ = ["CudaDataPath", "TorchCudaOps"]

log = logging.getLogger(__name__)


class TorchCudaOps:
    """The CUDA operations of the data path, through ``torch.cuda``."""

    def __init__(self, device: str = "cuda") -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())

    def device_scope(self) -> Any:
        """``torch.cuda.device(index)``: this device is current inside the block."""
        return self.torch.cuda.device(self.device.index)

    def stream_scope(self, stream: Any) -> Any:
        """``torch.cuda.stream(stream)``: work and allocations inside the block go to ``stream``."""
        return self.torch.cuda.stream(stream)

    def stream(self) -> Any:
        return self.torch.cuda.Stream(self.device)

    def synchronize_stream(self, stream: Any) -> None:
        stream.synchronize()

    def current_stream(self) -> Any:
        return self.torch.cuda.current_stream(self.device)

    def wait_for_current(self, stream: Any) -> None:
        """Order ``stream`` after the work queued so far on the current stream (no-op when they are one)."""
        current = self.torch.cuda.current_stream(self.device)
        if current != stream:
            stream.wait_stream(current)

    def event(self) -> Any:
        return self.torch.cuda.Event()

    def pinned(self, numel: int) -> Any:
        return self.torch.empty(numel, dtype=self.torch.float32, pin_memory=True)

    def device_buffer(self, numel: int) -> Any:
        """Device memory, allocated on the current stream (the caching allocator ties it to that stream)."""
        return self.torch.empty(numel, dtype=self.torch.float32, device=self.device)

    def copy(self, dst: Any, src: Any, stream: Any) -> None:
        with self.torch.cuda.stream(stream):
            dst.copy_(src, non_blocking=True)

    def run(self, fn: Callable[[Any], Any], x: Any, stream: Any) -> Any:
        with self.torch.cuda.stream(stream):
            return fn(x)

    def record(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def wait(self, stream: Any, event: Any) -> None:
        stream.wait_event(event)

    def synchronize(self, event: Any) -> None:
        event.synchronize()

    def keep_alive(self, tensor: Any, stream: Any) -> None:
        # the caching allocator must not hand this memory out again before `stream`'s queued work is done;
        # host tensors are not the device allocator's (their copies are ordered by the events)
        if tensor.device.type == "cuda":
            tensor.record_stream(stream)


class _Slot:
    __slots__ = ("pinned_in", "device_in", "pinned_out", "h2d_done", "computed", "d2h_done", "capacity")

    def __init__(self, ops: Any, capacity: int, h2d_stream: Any, compute_stream: Any) -> None:
        self.capacity = capacity
        self.pinned_in = ops.pinned(capacity)
        # allocated on the stream that writes it; that stream first waits for the caller's stream,
        # where the allocator's block may still be in use by work queued before
        with ops.stream_scope(h2d_stream):
            self.device_in = ops.device_buffer(capacity)
        ops.wait_for_current(h2d_stream)
        ops.keep_alive(self.device_in, compute_stream)  # read there; freed only after that work
        self.pinned_out = ops.pinned(capacity)
        self.h2d_done = ops.event()
        self.computed = ops.event()
        self.d2h_done = ops.event()


class CudaDataPath:
    """Run ``fn`` over a stream of batches with copies overlapping compute.

    Parameters
    ----------
    fn : callable
        Device tensor ``(N, 1, Z, Y, X)`` float32 -> device tensor of the same shape; it is called
        inside the compute stream's context and may enqueue work asynchronously.
    device : str
        CUDA device.
    depth : int
        Frames in flight (ring size); 3 lets H2D, compute and D2H of three frames overlap.
    ops : object, optional
        Stream/event operations (default :class:`TorchCudaOps`); tests pass a CPU stand-in.
    trace : list, optional
        When given, ``(stage, frame, slot)`` tuples are appended as the path works (for tests).
    compute_stream : stream, optional
        The stream ``fn`` runs on (a runner's persistent stream); default: a new one.
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        device: str = "cuda",
        depth: int = 3,
        ops: Any = None,
        trace: list | None = None,
        compute_stream: Any = None,
    ) -> None:
        if depth < 1:
            raise ValueError(f"gpu data path: depth must be >= 1, got {depth}")
        self.fn = fn
        self.depth = int(depth)
        self.ops = ops if ops is not None else TorchCudaOps(device)
        self.trace = trace
        self.h2d_stream = self.ops.stream()
        self.compute_stream = compute_stream if compute_stream is not None else self.ops.stream()
        self.d2h_stream = self.ops.stream()
        self._slots: list[_Slot | None] = [None] * self.depth
        self.max_in_flight = 0

    def _log(self, stage: str, frame: int, slot: int) -> None:
        if self.trace is not None:
            self.trace.append((stage, frame, slot))

    def _slot(self, index: int, numel: int) -> _Slot:
        slot = self._slots[index]
        if slot is None or slot.capacity < numel:
            slot = _Slot(self.ops, numel, self.h2d_stream, self.compute_stream)
            self._slots[index] = slot
        return slot

    def _submit(self, frame: int, batch: Any) -> tuple[int, tuple[int, ...], Any]:
        ops = self.ops
        host = as_numpy_batch(batch)
        shape, numel = host.shape, host.size
        index = frame % self.depth
        slot = self._slot(index, numel)
        pinned_in = slot.pinned_in[:numel]
        pinned_in.numpy()[...] = host.reshape(-1)
        self._log("fill", frame, index)
        device_in = slot.device_in[:numel]
        ops.copy(device_in, pinned_in, self.h2d_stream)
        ops.record(slot.h2d_done, self.h2d_stream)
        self._log("h2d", frame, index)
        ops.wait(self.compute_stream, slot.h2d_done)
        y = ops.run(self.fn, device_in.view(shape), self.compute_stream)
        ops.record(slot.computed, self.compute_stream)
        self._log("compute", frame, index)
        ops.wait(self.d2h_stream, slot.computed)
        ops.keep_alive(y, self.d2h_stream)
        with ops.stream_scope(self.d2h_stream):
            # a non-contiguous y is copied here, after this stream waited for the compute (on the
            # caller's stream the copy could read y before it is written)
            flat = y.reshape(-1)
        ops.copy(slot.pinned_out[:numel], flat, self.d2h_stream)
        ops.record(slot.d2h_done, self.d2h_stream)
        self._log("d2h", frame, index)
        return frame, shape, y

    def _drain(self, frame: int, shape: tuple[int, ...]) -> np.ndarray:
        index = frame % self.depth
        slot = self._slots[index]
        assert slot is not None
        self.ops.synchronize(slot.d2h_done)
        numel = int(np.prod(shape))
        out = slot.pinned_out[:numel].numpy().reshape(shape).copy()
        self._log("drain", frame, index)
        return out

    def run(self, batches: Iterable[Any]) -> Iterator[np.ndarray]:
        """Yield the output of every batch, in order, keeping up to ``depth`` batches in flight."""
        pending: deque[tuple[int, tuple[int, ...], Any]] = deque()
        try:
            for frame, batch in enumerate(batches):
                if len(pending) == self.depth:
                    done, shape, _y = pending.popleft()
                    yield self._drain(done, shape)
                pending.append(self._submit(frame, batch))
                self.max_in_flight = max(self.max_in_flight, len(pending))
            while pending:
                done, shape, _y = pending.popleft()
                yield self._drain(done, shape)
        except BaseException:
            # abandoned early (generator closed) or an error: frames still in flight read and write the
            # ring's buffers; wait for them before anything can be freed or reused
            self._wait_for_all(pending)
            raise

    def _wait_for_all(self, pending: deque[tuple[int, tuple[int, ...], Any]]) -> None:
        while pending:
            done, _shape, _y = pending.popleft()
            slot = self._slots[done % self.depth]
            if slot is not None:
                self.ops.synchronize(slot.d2h_done)
            self._log("abandon", done, done % self.depth)
        # a frame that failed half-way was never queued as pending: its copies may still run
        sync = getattr(self.ops, "synchronize_stream", None)
        if sync is not None:
            for stream in (self.h2d_stream, self.compute_stream, self.d2h_stream):
                sync(stream)
