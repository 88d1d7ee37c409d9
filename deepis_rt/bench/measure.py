"""Measurements of one runner: compute-only throughput and latency, memory, GPU copy/compute split, accuracy.

Compute-only means tiles already normalised in host memory, through ``Runner.infer`` (which returns
a host array, so on a GPU the clock is read only after the device finished: no unsynchronised
timing). Each timed call is one batch; latency percentiles are per call.
"""

from __future__ import annotations

import logging
import math
import resource
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from deepis_rt.core.labels import cell_masks, default_threshold_um
from deepis_rt.core.metrics import dice, distance_errors
from deepis_rt.core.stats import latency_stats
from deepis_rt.synth import iter_timelapse

__all__ = ["HostPeakRSS", "time_runner", "gpu_breakdown", "accuracy", "dice", "synthetic_tiles"]

log = logging.getLogger(__name__)


class HostPeakRSS:
    """Peak resident memory of this process during a ``with`` block, in MiB.

    Linux: the kernel's high-water mark (``VmHWM``) is reset on entry by writing ``5`` to
    ``/proc/self/clear_refs`` and read on exit, so each block gets its own peak. Elsewhere the
    process peak since start (``getrusage``) is reported and :attr:`scope` says so.
    """

    def __init__(self) -> None:
        self.peak_mib: float | None = None
        self.scope = "block"

    @staticmethod
    def _hwm_kib() -> int | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None

    def __enter__(self) -> HostPeakRSS:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.scope = "process"
        return self

    def __exit__(self, *exc: object) -> None:
        kib = self._hwm_kib() if self.scope == "block" else None
        if kib is None:
            self.scope = "process"
            kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        self.peak_mib = round(kib / 1024, 1)


def _cuda_sync() -> None:
    import torch

    torch.cuda.synchronize()


def time_runner(runner: Any, batch: np.ndarray, n_calls: int, warmup: int = 1) -> dict[str, Any]:
    """Throughput and per-call latency of ``runner.infer(batch)``.

    Returns
    -------
    dict
        ``frames``, ``wall_s``, ``throughput_fps`` (tiles per second), ``latency_ms`` (statistics),
        ``samples_ms``, ``host_peak_rss_mib``, ``device_peak_mib`` / ``device_used_mib`` on a GPU.
    """
    gpu = str(getattr(runner, "device_str", "")).startswith("cuda") or getattr(runner, "provider", "cpu") != "cpu"
    for _ in range(max(0, warmup)):
        runner.infer(batch)
    if gpu:
        import torch

        _cuda_sync()
        torch.cuda.reset_peak_memory_stats()
    samples: list[float] = []
    with HostPeakRSS() as host:
        start = time.perf_counter()
        for _ in range(max(1, n_calls)):
            t0 = time.perf_counter()
            runner.infer(batch)  # returns host memory: the device has finished
            samples.append((time.perf_counter() - t0) * 1e3)
        wall = time.perf_counter() - start
    frames = batch.shape[0] * len(samples)
    out: dict[str, Any] = {
        "frames": frames,
        "wall_s": round(wall, 4),
        "throughput_fps": frames / wall,
        "latency_ms": latency_stats(samples).to_dict(),
        "samples_ms": [round(s, 3) for s in samples],
        "host_peak_rss_mib": host.peak_mib,
        "host_peak_scope": host.scope,
    }
    if gpu:
        import torch

        free, total = torch.cuda.mem_get_info()
        out["device_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        out["device_used_mib"] = round((total - free) / 2**20, 1)
    return out


def gpu_breakdown(runner: Any, batch: np.ndarray, repeats: int = 3) -> dict[str, float] | None:
    """Median H2D copy, device compute and D2H copy times (ms) with CUDA events, or None off the GPU.

    Uses the runner's ``forward_device`` (device tensor in, device tensor out) between copies from
    and to pinned host memory; every figure is read after ``torch.cuda.synchronize``.
    """
    fwd = getattr(runner, "forward_device", None)
    if fwd is None or not (str(getattr(runner, "device_str", "")).startswith("cuda")
                           or getattr(runner, "provider", "cpu") != "cpu"):
        return None
    import torch

    host_in = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).pin_memory()
    host_out = torch.empty(host_in.shape, dtype=torch.float32).pin_memory()
    h2d, comp, d2h = [], [], []
    for _ in range(max(1, repeats)):
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        ev[0].record()
        dev = host_in.to("cuda", non_blocking=True)
        ev[1].record()
        y = fwd(dev)
        ev[2].record()
        host_out.copy_(y.float(), non_blocking=True)
        ev[3].record()
        _cuda_sync()
        h2d.append(ev[0].elapsed_time(ev[1]))
        comp.append(ev[1].elapsed_time(ev[2]))
        d2h.append(ev[2].elapsed_time(ev[3]))
    med = lambda v: round(float(np.median(v)), 3)  # noqa: E731
    return {"h2d_ms": med(h2d), "compute_ms": med(comp), "d2h_ms": med(d2h)}


def accuracy(output: np.ndarray, reference: np.ndarray, voxel_size_um: Sequence[float]) -> dict[str, Any]:
    """Error of a distance map against the FP32 reference, and Dice of the CAR-T / target masks.

    Masks are the paper's thresholds (distance > half the voxel pitch: CAR-T; < minus it: target).
    ``reference_*_voxels`` say how many voxels the reference masks hold (a Dice of empty masks is 1).
    """
    out = np.asarray(output, np.float32)
    ref = np.asarray(reference, np.float32)
    if out.shape != ref.shape:
        raise ValueError(f"bench | accuracy: output shape {out.shape} differs from the reference {ref.shape}")
    t = default_threshold_um(voxel_size_um)
    tc_out, tg_out = cell_masks(out, t)
    tc_ref, tg_ref = cell_masks(ref, t)
    finite = bool(np.isfinite(out).all())
    errors = distance_errors(ref, out) if finite else None
    return {
        "max_abs_um": errors.max_abs_um if errors else math.inf,
        "p99_abs_um": errors.p99_abs_um if errors else math.inf,
        "dice_tcell": round(dice(tc_out, tc_ref), 5),
        "dice_target": round(dice(tg_out, tg_ref), 5),
        "reference_tcell_voxels": int(tc_ref.sum()),
        "reference_target_voxels": int(tg_ref.sum()),
    }


def synthetic_tiles(model: Any, n: int = 1, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """``n`` synthetic conjugate tomograms of the model's tile at its voxel size.

    Returns the normalised batch ``(n, 1, Z, Y, X)`` (the runners' input) and the raw RI volumes.
    """
    norm = model.checkpoint.meta.ri_normalization
    n_video = max(8, 2 * n)
    # late frames of the video: the cells are in contact, so both masks and an IS exist
    frames = list(range(n_video - n, n_video))
    synth_log = logging.getLogger("deepis_rt.synth")
    level = synth_log.level
    synth_log.setLevel(logging.ERROR)  # small quick-run tiles cut the cells: that warning is expected
    try:
        volumes = [f.ri.astype(np.float32) for f in iter_timelapse(n_video, seed, shape=model.tile_zyx,
                                                                     voxel_size_um=model.voxel_size_um, frames=frames)]
    finally:
        synth_log.setLevel(level)
    batch = np.stack([(v - norm.offset) / norm.scale for v in volumes])[:, None]
    return np.ascontiguousarray(batch, np.float32), volumes
