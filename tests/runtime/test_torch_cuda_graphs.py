"""PyTorch CUDA path: graph cache bookkeeping (with a CPU stand-in for torch.cuda), TF32 off for fp32.

The stand-in records what the cache asks of CUDA; it refuses the calls the cache must never make
per new shape (device-wide synchronisation, cache flush). The real thing runs in the GPU-marked
tests at the end.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepis_rt.backends import TorchRunner
from deepis_rt.backends.pytorch.cuda_graphs import CudaGraphCache
from deepis_rt.errors import ConfigError


class FakeEvent:
    def __init__(self, log):
        self.log, self.recorded_on, self.synchronized = log, None, 0

    def record(self, stream):
        self.recorded_on = stream
        self.log.append(("record", stream.name))

    def synchronize(self):
        self.synchronized += 1
        self.log.append(("event-sync", None))


class FakeStream:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def wait_stream(self, other):
        self.log.append(("wait_stream", self.name, other.name))

    def wait_event(self, event):
        self.log.append(("wait_event", self.name))


class FakeGraph:
    """Replays the captured function (on the CPU), so outputs are checkable."""

    def __init__(self, cuda):
        self.cuda, self.pool, self.mode = cuda, None, None

    def capture_begin(self, pool=None, capture_error_mode="global"):
        assert self.cuda.current.name == "side", "capture must run on the cache's side stream"
        self.pool, self.mode = pool, capture_error_mode
        self.cuda.capturing = self
        self.cuda.log.append(("capture_begin", pool))

    def capture_end(self):
        self.cuda.capturing = None
        self.cuda.log.append(("capture_end", None))

    def replay(self):
        self.cuda.log.append(("replay", self.cuda.current.name))
        out = self.fn(self.static_in)
        self.static_out.copy_(out)


class FakeCuda:
    """Just enough of torch.cuda for CudaGraphCache, on CPU tensors."""

    def __init__(self):
        self.log, self.capturing, self.pools = [], None, 0
        self.main = FakeStream("main", self.log)
        self.current = self.main

    def graph_pool_handle(self):
        self.pools += 1
        return ("pool", self.pools)

    def Stream(self, device):  # noqa: N802 - mirrors torch.cuda.Stream
        return FakeStream("side", self.log)

    def Event(self):  # noqa: N802 - mirrors torch.cuda.Event
        return FakeEvent(self.log)

    def CUDAGraph(self):  # noqa: N802 - mirrors torch.cuda.CUDAGraph
        return FakeGraph(self)

    def current_stream(self, device=None):
        return self.current

    def stream(self, stream):
        cuda = self

        class _Ctx:
            def __enter__(self):
                self.prev, cuda.current = cuda.current, stream

            def __exit__(self, *exc):
                cuda.current = self.prev

        return _Ctx()

    def synchronize(self, *a):
        raise AssertionError("a device-wide synchronize per new shape")

    def empty_cache(self):
        raise AssertionError("empty_cache per new shape")


def _model(cuda):
    calls = []

    def model(x):
        calls.append(tuple(x.shape))
        out = x * 2.0 + 1.0
        graph = cuda.capturing
        if graph is not None:  # remember what the graph computes
            graph.fn, graph.static_in, graph.static_out = (lambda t: t * 2.0 + 1.0), x, out
        return out

    return model, calls


def test_one_shared_pool_and_bounded_graphs():
    cuda = FakeCuda()
    model, calls = _model(cuda)
    cache = CudaGraphCache(model, "cuda:0", max_graphs=2, warmup=2, cuda=cuda)
    assert cuda.pools == 1  # one pool for every graph of this runner
    for n in (1, 2, 1, 3, 4, 2):
        x = torch.full((n, 1, 2, 2, 2), float(n))
        np.testing.assert_array_equal(cache.run(x).numpy(), (x * 2 + 1).numpy())
        assert len(cache) <= 2
    captures = [entry for entry in cuda.log if entry[0] == "capture_begin"]
    assert {pool for _, pool in captures} == {("pool", 1)}
    # shapes 1, 2 captured; 1 hit; 3 evicts 2 (least recently used); 4 evicts 1; 2 evicts 3
    assert cache.captures == 5 and cache.evictions == 3
    assert cache.shapes == [(4, 1, 2, 2, 2), (2, 1, 2, 2, 2)]
    # warm-up runs happen before each capture, outside it
    assert calls.count((3, 1, 2, 2, 2)) == 3


def test_capture_and_replay_ordering():
    cuda = FakeCuda()
    model, _ = _model(cuda)
    cache = CudaGraphCache(model, "cuda:0", max_graphs=1, warmup=1, cuda=cuda)
    cache.run(torch.ones(1, 1, 2, 2, 2))
    log = [e for e in cuda.log if e[0] != "record"]
    # the side stream waits for the caller's stream, captures, and the caller waits for it
    assert log[0] == ("wait_stream", "side", "main")
    assert log.index(("capture_begin", ("pool", 1))) < log.index(("capture_end", None))
    assert ("wait_stream", "main", "side") in log
    assert log[-1] == ("replay", "main")
    graph = cache._graphs[(1, 1, 2, 2, 2)].graph
    assert graph.mode == "thread_local"
    # a second replay waits (on the GPU) for the first: graphs share memory
    cache.run(torch.ones(1, 1, 2, 2, 2))
    assert ("wait_event", "main") in cuda.log
    # evicting the graph waits for its last replay first
    cache.run(torch.ones(2, 1, 2, 2, 2))
    assert ("event-sync", None) in cuda.log and cache.evictions == 1


def test_max_graphs_validated():
    with pytest.raises(ValueError):
        CudaGraphCache(lambda x: x, "cuda:0", max_graphs=0, cuda=FakeCuda())
    with pytest.raises(ConfigError, match="max_graphs"):
        TorchRunner(lambda: None, device="cuda", cuda_graphs=True, max_graphs=0)


def test_fp32_turns_tf32_off_during_forward_and_restores(tiny_checkpoint):
    """The math-mode switch on its own (a CPU runner told it is on CUDA; no CUDA call is made)."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cudnn.allow_tf32, matmul.allow_tf32)
    cudnn.allow_tf32 = matmul.allow_tf32 = True
    try:
        runner = TorchRunner(tiny_checkpoint, device="cpu")
        runner.is_cuda = True
        with runner._math_mode():
            assert (cudnn.allow_tf32, matmul.allow_tf32) == (False, False)
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, True)
        runner.allow_tf32 = True
        with runner._math_mode():
            assert (cudnn.allow_tf32, matmul.allow_tf32) == (True, True)
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = before


def test_describe_says_what_the_math_is(tiny_checkpoint):
    assert TorchRunner(tiny_checkpoint, device="cpu").describe()["math"] == "fp32"
    cuda = TorchRunner(tiny_checkpoint, device="cuda")
    assert cuda.describe()["math"] == "fp32 (TF32 off)" and cuda.cudnn_benchmark is True
    assert TorchRunner(tiny_checkpoint, device="cuda", allow_tf32=True).describe()["math"].startswith("tf32")
    assert TorchRunner(tiny_checkpoint, device="cpu").cudnn_benchmark is False


# -- on a GPU ---------------------------------------------------------------------------------------

def _batch(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 1, 16, 32, 32)).astype(np.float32)


@pytest.mark.gpu
def test_cuda_fp32_matches_cpu_with_tf32_off(tiny_checkpoint):
    from deepis_rt.checkpoint import load_checkpoint

    x = _batch(2, seed=1)
    with TorchRunner(load_checkpoint(tiny_checkpoint), device="cpu") as cpu:
        ref = cpu.infer(x)
    with TorchRunner(load_checkpoint(tiny_checkpoint), device="cuda", cuda_graphs=True) as gpu:
        out = gpu.infer(x)
        assert torch.backends.cudnn.benchmark is True
    # FP32 on both (TF32 off): only summation order differs
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.gpu
def test_real_graphs_share_a_pool_and_stay_bounded(tiny_checkpoint):
    from deepis_rt.checkpoint import load_checkpoint

    with TorchRunner(load_checkpoint(tiny_checkpoint), device="cuda", cuda_graphs=True, max_graphs=2) as graphs, \
            TorchRunner(load_checkpoint(tiny_checkpoint), device="cuda") as eager:
        for n in (1, 2, 3, 1, 2):
            x = _batch(n, seed=n)
            np.testing.assert_allclose(graphs.infer(x), eager.infer(x), atol=1e-4, rtol=1e-4)
            assert len(graphs._graphs) <= 2
        assert graphs._graphs.evictions >= 2
