"""Out of memory classified by cause, and frames bounded before any allocation.

A frame that can never fit this machine is ``failed`` (permanent, not redone by the next run); only an
allocation that would fit an idle machine is ``retry``. A voxel size that resamples a frame past the
memory budget is refused before the resampled array exists.
"""

from __future__ import annotations

import csv
import tracemalloc

import numpy as np
import pytest
import torch

from deepis_rt.backends.base import Runner, as_numpy_batch
from deepis_rt.backends.failures import classify, host_memory_bytes, is_transient, never_fits
from deepis_rt.errors import BackendOutOfMemoryError, VolumeTooLargeError
from deepis_rt.io import write_tomogram
from deepis_rt.runtime import Segmenter
from deepis_rt.stream import Stream

VOXEL = (0.5, 0.25, 0.25)
TILE = (16, 32, 32)
META = {"voxel_size_um": list(VOXEL), "ri_normalization": {"offset": 1.337, "scale": 0.02}, "medium_ri": 1.337,
        "tile_zyx": list(TILE)}


def _torch_oom(request_gib: float, total_gib: float = 79.11) -> torch.cuda.OutOfMemoryError:
    return torch.cuda.OutOfMemoryError(
        f"CUDA out of memory. Tried to allocate {request_gib:.2f} GiB. GPU 0 has a total capacity of "
        f"{total_gib:.2f} GiB of which 3.12 GiB is free. Of the allocated memory 70.1 GiB is allocated by PyTorch")


def _numpy_oom(nbytes: int) -> MemoryError:
    try:
        np.empty(nbytes, np.uint8)
    except MemoryError as exc:
        return exc
    pytest.skip("this machine allocated the array")


class OutOfMemoryRunner(Runner):
    """The identity network that runs out of memory, like a GPU asked for ``request_gib`` at once, on
    frames whose RI is above 1.36 (the others pass)."""

    name = "oom"

    def __init__(self, request_gib: float) -> None:
        super().__init__()
        self.request_gib = request_gib
        self.calls = 0

    def activate_impl(self) -> None:
        pass

    def infer_impl(self, batch):
        self.calls += 1
        x = as_numpy_batch(batch)
        if x.mean() > (1.36 - 1.337) / 0.02:
            raise _torch_oom(self.request_gib)
        return x.copy()

    def describe(self):
        return {"backend": self.name, "device": "cpu", "precision": "fp32"}


def test_out_of_memory_that_could_never_fit_is_permanent_and_says_why():
    total = host_memory_bytes()
    assert total is not None and total > 0
    huge = _numpy_oom(4 * total)  # more than the machine has: NumPy refuses without touching memory
    assert "machine has" in never_fits(huge) and not is_transient(huge)
    assert never_fits(_torch_oom(120.0)) == "120 GiB is asked for at once; the GPU has 79.1 GiB in all"
    try:
        torch.empty(total, dtype=torch.float32)  # 4x the machine's memory: refused at once by the allocator
    except RuntimeError as exc:
        torch_cpu = exc
    else:
        pytest.skip("this machine lent PyTorch four times its memory (overcommit)")
    assert "machine has" in never_fits(torch_cpu)
    for exc in (huge, _torch_oom(120.0), torch_cpu):
        typed = classify(exc, "torch-cuda")
        assert isinstance(typed, VolumeTooLargeError) and not is_transient(typed)
        assert typed.args[0].startswith("torch-cuda: out of memory that waiting cannot cure")


def test_out_of_memory_that_fits_an_idle_machine_is_transient():
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                       "you tried to allocate 4096 bytes. Error code 12 (Cannot allocate memory)")
    for exc in (_torch_oom(2.0), MemoryError(), np.core._exceptions._ArrayMemoryError((1024,), np.dtype("f4")), cpu):
        assert never_fits(exc) is None and is_transient(exc)
        assert isinstance(classify(exc, "torch-cuda"), BackendOutOfMemoryError)


def _camera(tmp_path):
    cam = tmp_path / "cam"
    cam.mkdir()
    write_tomogram(cam / "frame_0000.npy", np.full(TILE, 1.35, np.float32), VOXEL, fmt="npy")
    write_tomogram(cam / "frame_0001.npy", np.full(TILE, 1.38, np.float32), VOXEL, fmt="npy")  # runs out
    return cam


def _statuses(out):
    with open(out / "frames.csv", newline="") as f:
        return {row["source"]: (row["status"], row["error"]) for row in csv.DictReader(f)}


def _run(cam, out, runner, retry_for_s):
    stream = Stream(cam, out, Segmenter(runner, META), once=True, settle_s=0.0, use_events=False,
                    write_masks=False, refresh_s=3600.0, retry_for_s=retry_for_s, max_batch=1)
    results = list(stream.start())
    stream.close()
    assert stream.health.outages == (1 if any(r.status == "retry" for r in results) else 0)
    return results


def test_a_frame_that_can_never_fit_is_failed_at_once_and_not_redone_by_the_next_run(tmp_path):
    cam, out = _camera(tmp_path), tmp_path / "out"
    runner = OutOfMemoryRunner(request_gib=120.0)
    results = _run(cam, out, runner, retry_for_s=5.0)  # as transient, it would wait 5 s and end "retry"
    assert [r.status for r in results] == ["ok", "failed"]
    status, error = _statuses(out)["frame_0001.npy"]
    assert status == "failed" and "120 GiB is asked for at once; the GPU has 79.1 GiB in all" in error
    # not an outage (the assertion in _run): no wait at all
    again = OutOfMemoryRunner(request_gib=120.0)
    assert _run(cam, out, again, retry_for_s=5.0) == [] and again.calls == 0


def test_a_frame_short_of_memory_that_would_fit_waits_for_the_next_run(tmp_path):
    cam, out = _camera(tmp_path), tmp_path / "out"
    results = _run(cam, out, OutOfMemoryRunner(request_gib=2.0), retry_for_s=0.0)
    assert [r.status for r in results] == ["ok", "retry"]
    redo = OutOfMemoryRunner(request_gib=2.0)
    assert [r.source for r in _run(cam, out, redo, retry_for_s=0.0)] == ["frame_0001.npy"]


class CountingRunner(OutOfMemoryRunner):
    def __init__(self) -> None:
        super().__init__(request_gib=0.0)


def test_a_voxel_size_that_resamples_past_the_budget_is_refused_before_allocating():
    runner = CountingRunner()
    seg = Segmenter(runner, META)
    volume = np.full((64, 256, 256), 1.35, np.float32)  # 16 MiB
    tracemalloc.start()
    try:
        with pytest.raises(VolumeTooLargeError) as info:
            seg.segment(volume, voxel_size_um=(4.0, 4.0, 4.0))  # plausible alone: 8x, 16x, 16x the model's
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert "shape (64, 256, 256) at voxel size [4, 4, 4] um resamples to (512, 4096, 4096)" in message
    assert "GiB budget per frame" in message and "check the voxel size" in message
    assert peak < 64 * 1024**2 and runner.calls == 0


def test_the_frame_budget_counts_the_model_grid_and_can_be_set():
    seg = Segmenter(CountingRunner(), META, max_frame_bytes=1 * 1024**2)
    volume = np.full(TILE, 1.35, np.float32)  # 32 kB on its own grid, 1 MiB+ at half the voxel size
    with pytest.raises(VolumeTooLargeError, match=r"resamples to \(32, 64, 64\)"):
        seg.segment(volume, voxel_size_um=(1.0, 0.5, 0.5))
    assert seg.segment(volume, voxel_size_um=(0.6, 0.3, 0.3)).distance.shape == TILE
