"""Device time of a forward pass: CUDA events around ``forward_device`` on an input already on the GPU.

The headline GPU figure of a benchmark row. Host timers around ``Runner.infer`` measure the copies
to and from pageable host memory, Python and synchronisation as well; that end-to-end figure is
reported beside this one, not instead of it. Here:

* the input is copied to the device once, before timing;
* ``warmup`` calls run first (cuDNN autotuning, CUDA-graph capture, ``torch.compile``);
* each of ``iterations`` (on a GPU at least :data:`MIN_ITERATIONS`) calls is bracketed by two CUDA events
  recorded on the current stream, and all are read after one synchronisation at the end, so the
  host never waits between calls (the GPU's queue stays full, as in a stream of tiles);
* percentiles come from those per-call event times.

On a CPU device the same function times each call with ``time.perf_counter`` (the CPU's device
time is its wall time), so the code path is exercised and compared everywhere.

``cuda`` (the ``torch.cuda`` module by default) is a parameter so the bookkeeping is tested on a CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from deepis_rt.bench.stats import latency_stats

__all__ = ["MIN_ITERATIONS", "device_time"]

#: fewer timed calls give percentiles (p99) that mean nothing
MIN_ITERATIONS = 50


def device_time(forward: Callable[[Any], Any], x: Any, iterations: int = MIN_ITERATIONS, warmup: int = 5,
                cuda: Any = None) -> dict[str, Any]:
    """Per-call time of ``forward(x)`` on ``x``'s device.

    Parameters
    ----------
    forward : callable
        Device tensor -> device tensor (a runner's ``forward_device``); may enqueue asynchronously.
    x : torch.Tensor
        The input, already on the device it runs on.
    iterations : int
        Timed calls; on a GPU raised to :data:`MIN_ITERATIONS`.
    warmup : int
        Untimed calls first.
    cuda : module, optional
        ``torch.cuda`` or a stand-in with ``Event(enable_timing=True)`` and ``synchronize``.

    Returns
    -------
    dict
        ``clock`` (``"cuda-events"`` or ``"perf_counter"``), ``iterations``, ``warmup``,
        ``latency_ms`` (statistics of the per-call times), ``samples_ms``, ``tiles_per_s``
        (batch size / median call time).
    """
    on_gpu = getattr(getattr(x, "device", None), "type", "cpu") == "cuda" or cuda is not None
    # a GPU's percentiles need many calls; a CPU call is milliseconds to seconds, and its caller chooses
    iterations = max(int(iterations), MIN_ITERATIONS if on_gpu else 1)
    for _ in range(max(0, int(warmup))):
        forward(x)
    if on_gpu:
        if cuda is None:
            import torch

            cuda = torch.cuda
        cuda.synchronize()
        pairs = [(cuda.Event(enable_timing=True), cuda.Event(enable_timing=True)) for _ in range(iterations)]
        for start, end in pairs:
            start.record()
            forward(x)
            end.record()
        cuda.synchronize()
        samples = [float(start.elapsed_time(end)) for start, end in pairs]
        clock = "cuda-events"
    else:
        samples = []
        for _ in range(iterations):
            t0 = time.perf_counter()
            forward(x)
            samples.append((time.perf_counter() - t0) * 1e3)
        clock = "perf_counter"
    stats = latency_stats(samples).to_dict()
    batch = int(x.shape[0])
    return {"clock": clock, "iterations": iterations, "warmup": int(warmup), "latency_ms": stats,
            "samples_ms": [round(s, 4) for s in samples],
            "tiles_per_s": batch * 1e3 / stats["p50_ms"] if stats["p50_ms"] > 0 else None}
