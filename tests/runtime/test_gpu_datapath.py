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
    ops = RecordingOps()
    compute = object()
    path = CudaDataPath(lambda x: x * 1, depth=2, ops=ops, compute_stream=compute)
    assert path.compute_stream is compute
    list(path.run(iter(_frames(2))))
    slot = path._slots[0]
    kept_streams = {s for ptr, s in ops.kept if ptr == slot.device_in.data_ptr()}
    assert kept_streams == {path.h2d_stream, compute}


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
