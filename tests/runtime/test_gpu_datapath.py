"""The CUDA data path: ring logic on the CPU with a stand-in for torch.cuda; real overlap marked gpu."""

from __future__ import annotations

import numpy as np
import pytest

from deepis_rt.backends.cuda import CudaDataPath


class _Event:
    def __init__(self, log):
        self.log, self.recorded, self.synced = log, 0, 0


class HostOps:
    """Synchronous stand-in for TorchCudaOps that checks the event discipline as it goes."""

    def __init__(self):
        import torch

        self.torch = torch
        self.log = []
        self.allocations = 0

    def stream(self):
        return object()

    def event(self):
        return _Event(self.log)

    def pinned(self, numel):
        self.allocations += 1
        return self.torch.empty(numel, dtype=self.torch.float32)

    def device_buffer(self, numel):
        self.allocations += 1
        return self.torch.empty(numel, dtype=self.torch.float32)

    def stream_scope(self, stream):
        import contextlib

        return contextlib.nullcontext()

    def wait_for_current(self, stream):
        pass

    def copy(self, dst, src, stream):
        dst.copy_(src)

    def run(self, fn, x, stream):
        return fn(x)

    def record(self, event, stream):
        event.recorded += 1

    def wait(self, stream, event):
        assert event.recorded, "a stream waits on an event that was never recorded"

    def synchronize(self, event):
        assert event.recorded, "synchronising an event that was never recorded"
        event.synced += 1

    def keep_alive(self, tensor, stream):
        pass


def _frames(n, shape=(1, 1, 4, 4, 4)):
    return [np.full(shape, float(i), np.float32) for i in range(n)]


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_outputs_in_order_and_correct(depth):
    ops = HostOps()
    path = CudaDataPath(lambda x: x * 2 + 1, depth=depth, ops=ops)
    outs = list(path.run(iter(_frames(7))))
    assert [float(o.flat[0]) for o in outs] == [2 * i + 1 for i in range(7)]
    assert all(o.shape == (1, 1, 4, 4, 4) and o.dtype == np.float32 for o in outs)
    assert path.max_in_flight == min(depth, 7)
    assert ops.allocations == 3 * min(depth, 7)  # buffers are reused around the ring


def test_stage_order_and_slot_reuse():
    trace = []
    path = CudaDataPath(lambda x: x + 0, depth=3, ops=HostOps(), trace=trace)
    list(path.run(iter(_frames(8))))
    pos = {(stage, frame): i for i, (stage, frame, _slot) in enumerate(trace)}
    for f in range(8):
        # each frame goes fill -> h2d -> compute -> d2h -> drain
        assert pos[("fill", f)] < pos[("h2d", f)] < pos[("compute", f)] < pos[("d2h", f)] < pos[("drain", f)]
        assert {s for st, fr, s in trace if fr == f} == {f % 3}
        if f >= 3:
            # a slot is refilled only after its previous frame was drained
            assert pos[("drain", f - 3)] < pos[("fill", f)]
        if f + 1 < 8:
            # the next frame is submitted before this one is drained: frames overlap
            assert pos[("h2d", f + 1)] < pos[("drain", f)]
    drains = [fr for st, fr, _ in trace if st == "drain"]
    assert drains == list(range(8))


def test_ring_grows_for_a_larger_batch():
    ops = HostOps()
    path = CudaDataPath(lambda x: -x, depth=2, ops=ops)
    frames = [np.ones((1, 1, 4, 4, 4), np.float32), np.ones((3, 1, 4, 4, 4), np.float32),
              np.ones((2, 1, 4, 4, 4), np.float32)]
    outs = list(path.run(iter(frames)))
    assert [o.shape[0] for o in outs] == [1, 3, 2]
    assert all((o == -1).all() for o in outs)


def test_empty_stream_and_bad_depth():
    assert list(CudaDataPath(lambda x: x, depth=2, ops=HostOps()).run(iter([]))) == []
    with pytest.raises(ValueError):
        CudaDataPath(lambda x: x, depth=0, ops=HostOps())


@pytest.mark.gpu
def test_real_cuda_path_overlaps_and_matches():
    """On a GPU: results equal the synchronous path, and with depth 3 copies overlap compute."""
    import torch

    conv = torch.nn.Conv3d(1, 1, 3, padding=1).cuda().eval()

    def fn(x):
        with torch.inference_mode():
            return conv(x)

    frames = [np.random.default_rng(i).standard_normal((2, 1, 32, 64, 64)).astype(np.float32) for i in range(6)]
    path = CudaDataPath(fn, device="cuda", depth=3)
    outs = list(path.run(iter(frames)))
    assert path.max_in_flight == 3
    for f, o in zip(frames, outs, strict=True):
        ref = fn(torch.from_numpy(f).cuda()).cpu().numpy()
        np.testing.assert_allclose(o, ref, atol=1e-5)


class RecordingOps(HostOps):
    """HostOps that also records which buffers are kept alive on which stream."""

    def __init__(self):
        super().__init__()
        self.kept = []
        self.synced = []

    def stream(self):
        return object()

    def keep_alive(self, tensor, stream):
        self.kept.append((tensor.data_ptr(), stream))

    def synchronize(self, event):
        super().synchronize(event)
        self.synced.append(event)


def test_abandoned_stream_waits_for_frames_in_flight():
    """Closing the generator early synchronises every frame still queued before buffers can go."""
    ops = RecordingOps()
    trace = []
    path = CudaDataPath(lambda x: x + 1, depth=3, ops=ops, trace=trace)
    gen = path.run(iter(_frames(10)))
    first = next(gen)  # frames 0..2 submitted, frame 0 drained
    assert float(first.flat[0]) == 1.0
    gen.close()
    abandoned = [fr for st, fr, _ in trace if st == "abandon"]
    assert abandoned == [1, 2]  # every submitted, undrained frame was waited for
    assert len(ops.synced) == 3  # one drain + two waits on d2h_done
    # the ring is still usable afterwards
    assert [float(o.flat[0]) for o in path.run(iter(_frames(2)))] == [1.0, 2.0]


def test_device_buffers_are_kept_alive_on_the_streams_that_use_them():
    """Allocated on the copy-in stream (which writes them), kept alive for the compute stream (which reads them)."""
    ops = RecordingOps()
    compute = object()
    path = CudaDataPath(lambda x: x * 1, depth=2, ops=ops, compute_stream=compute)
    assert path.compute_stream is compute
    list(path.run(iter(_frames(2))))
    slot = path._slots[0]
    kept_streams = {s for ptr, s in ops.kept if ptr == slot.device_in.data_ptr()}
    assert kept_streams == {compute}


def test_torch_cuda_ops_scope_the_device(monkeypatch):
    """TorchCudaOps makes its own device current with torch.cuda.device(index)."""
    import torch

    from deepis_rt.backends.cuda import TorchCudaOps

    entered = []

    class Recorder:
        def __init__(self, index):
            self.index = index

        def __enter__(self):
            entered.append(self.index)

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "device", Recorder)
    ops = TorchCudaOps("cuda:1")
    with ops.device_scope():
        pass
    assert entered == [1] and ops.device == torch.device("cuda", 1)


def test_error_mid_frame_waits_for_every_stream():
    """A frame that fails after its copy was queued: all three streams are synchronised before re-raising."""
    ops = RecordingOps()
    synced_streams = []
    ops.synchronize_stream = synced_streams.append

    def fn(x):
        if float(x.flatten()[0]) == 2.0:
            raise RuntimeError("engine failed")
        return x

    path = CudaDataPath(fn, depth=3, ops=ops)
    with pytest.raises(RuntimeError, match="engine failed"):
        list(path.run(iter(_frames(5))))
    assert set(map(id, synced_streams)) == {id(path.h2d_stream), id(path.compute_stream), id(path.d2h_stream)}


# -- the real TorchCudaOps against a recording stand-in for torch.cuda --------------------------------


class _RecStream:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def wait_stream(self, other):
        self.log.append(("wait_stream", self.name, other.name))

    def wait_event(self, event):
        self.log.append(("wait_event", self.name, event.recorded_on))

    def synchronize(self):
        self.log.append(("stream_sync", self.name))

    def __repr__(self):
        return f"<stream {self.name}>"


class _RecEvent:
    def __init__(self, log):
        self.log, self.recorded_on = log, None

    def record(self, stream=None):
        self.recorded_on = stream.name
        self.log.append(("record", stream.name))

    def synchronize(self):
        assert self.recorded_on is not None, "synchronising an event that was never recorded"


class RecordingCuda:
    """``torch.cuda``'s stream/event API on the CPU: tracks the current stream and logs every call;
    tensor operations are logged (with the stream current at the time) by a TorchFunctionMode."""

    def __init__(self):
        self.log = []
        self.caller = _RecStream("caller", self.log)
        self.current = [self.caller]
        self.made = 0

    def Stream(self, device=None):  # noqa: N802 - torch.cuda's name
        self.made += 1
        return _RecStream(f"s{self.made}", self.log)

    def Event(self, enable_timing=False):  # noqa: N802
        return _RecEvent(self.log)

    def current_stream(self, device=None):
        return self.current[-1]

    def current_device(self):
        return 0

    def stream(self, s):
        cuda = self

        class _Scope:
            def __enter__(self):
                cuda.current.append(s)

            def __exit__(self, *exc):
                cuda.current.pop()
                return False

        return _Scope()

    def device(self, index):
        import contextlib

        return contextlib.nullcontext()


def _recording_ops(monkeypatch):
    import torch
    from torch.overrides import TorchFunctionMode

    from deepis_rt.backends.cuda import TorchCudaOps

    cuda = RecordingCuda()
    for name in ("Stream", "Event", "current_stream", "current_device", "stream", "device"):
        monkeypatch.setattr(torch.cuda, name, getattr(cuda, name))

    class HostTorchCudaOps(TorchCudaOps):
        """The real operations, with host memory standing in for device and pinned memory."""

        def __init__(self):
            super().__init__("cuda")
            self.device = torch.device("cpu")

        def pinned(self, numel):
            return torch.empty(numel, dtype=torch.float32)

    class Ops(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", str(func))
            if name in ("empty", "reshape", "copy_", "contiguous"):
                cuda.log.append(("op", name, cuda.current[-1].name))
            return func(*args, **(kwargs or {}))

    return cuda, HostTorchCudaOps(), Ops


def test_copy_in_stream_owns_and_waits_before_writing_a_new_buffer(monkeypatch):
    """The device input buffer is allocated on the copy-in stream, which waits for the caller's stream
    (memory the allocator hands out may still be in use by work queued there) before its first copy."""
    cuda, ops, mode = _recording_ops(monkeypatch)
    path = CudaDataPath(lambda x: x + 1, device="cuda", depth=2, ops=ops)
    h2d = path.h2d_stream.name
    with mode():
        outs = list(path.run(iter(_frames(3))))
    assert [float(o.flat[0]) for o in outs] == [1.0, 2.0, 3.0]
    log = cuda.log
    allocs = [i for i, e in enumerate(log) if e[:2] == ("op", "empty") and e[2] == h2d]
    assert len(allocs) == 2  # one device input per slot, each on the copy-in stream
    for i in allocs:
        wait = log.index(("wait_stream", h2d, "caller"), i)
        first_copy = next(j for j, e in enumerate(log) if j > i and e == ("op", "copy_", h2d))
        assert wait < first_copy


def test_non_contiguous_output_is_flattened_on_the_copy_out_stream(monkeypatch):
    """A non-contiguous output is made contiguous after the copy-out stream waited for the compute,
    never on the caller's stream (which is not ordered after the compute stream)."""
    cuda, ops, mode = _recording_ops(monkeypatch)
    path = CudaDataPath(lambda x: x.transpose(-1, -2), device="cuda", depth=2, ops=ops)
    d2h = path.d2h_stream.name
    frames = [np.arange(64, dtype=np.float32).reshape(1, 1, 4, 4, 4) + 100 * i for i in range(3)]
    with mode():
        outs = list(path.run(iter(frames)))
    for f, o in zip(frames, outs, strict=True):
        np.testing.assert_array_equal(o, f.swapaxes(-1, -2))
    reshapes = [e for e in cuda.log if e[:2] == ("op", "reshape")]
    assert reshapes and all(e[2] != "caller" for e in reshapes)
    copies_out = [i for i, e in enumerate(cuda.log) if e == ("op", "copy_", d2h)]
    waits = [i for i, e in enumerate(cuda.log) if e[:2] == ("wait_event", d2h)]
    assert len(copies_out) == 3 and all(any(w < c for w in waits) for c in copies_out)
    flattened_on_d2h = [i for i, e in enumerate(cuda.log) if e == ("op", "reshape", d2h)]
    assert len(flattened_on_d2h) >= 3


def test_keep_alive_leaves_host_tensors_alone(monkeypatch):
    """record_stream belongs to device memory; a host tensor handed to keep_alive is not touched."""
    import torch

    _cuda, ops, _mode = _recording_ops(monkeypatch)
    ops.keep_alive(torch.zeros(3), object())  # would raise in record_stream on a CPU tensor


def test_torch_runner_makes_its_streams_once(monkeypatch, tiny_checkpoint):
    """Every infer_stream call of one activation reuses the data path and its three streams: new
    torch.cuda.Stream objects per call come from a pool of 32 and would soon alias each other."""
    import torch

    from deepis_rt.backends import TorchRunner
    from deepis_rt.checkpoint import load_checkpoint

    cuda, ops, _mode = _recording_ops(monkeypatch)
    runner = TorchRunner(load_checkpoint(tiny_checkpoint), device="cuda")

    def activate_on_host():  # the runner's own activation needs a GPU: the same model on the host
        runner.model = load_checkpoint(tiny_checkpoint).build().eval()
        runner.device = torch.device("cpu")

    monkeypatch.setattr(runner, "activate_impl", activate_on_host)
    monkeypatch.setattr(runner, "deactivate_impl", lambda: setattr(runner, "_path", None))
    import deepis_rt.backends.cuda as cuda_module

    monkeypatch.setattr(cuda_module, "TorchCudaOps", lambda device: ops)
    x = np.random.default_rng(0).standard_normal((1, 1, 16, 32, 32)).astype(np.float32)
    with runner:
        first = list(runner.infer_stream(iter([x, x])))
        made = cuda.made
        second = list(runner.infer_stream(iter([x])))
        assert made == 3 and cuda.made == 3
    np.testing.assert_allclose(second[0], first[0])
    with runner:  # a new activation makes a new data path
        list(runner.infer_stream(iter([x])))
    assert cuda.made == 6
