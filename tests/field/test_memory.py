"""Memory stays within the budget on a field several times larger than it (resident memory, not timed).

Resident memory rather than tracemalloc: tracing every allocation of zarr's asynchronous I/O makes
the run ten times slower. The sampled peak is an upper bound of what the run holds (it includes
the allocator's free lists and the pages of the memory-mapped input that were read).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import psutil
from field_scenes import VOXEL_SIZE_UM, conjugate_field

from deepis_rt.field.segment import IN_MEMORY_BYTES_PER_VOXEL, segment_field

SHAPE = (16, 256, 1024)  # 16 MiB of float32
BUDGET_GB = 0.005
#: thread stacks, allocator arenas and free lists, zarr's and Blosc's buffers
SLACK_BYTES = 16 * 2**20


def _peak_rss_above_start(fn):
    proc = psutil.Process()
    start = proc.memory_info().rss
    peak = [start]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = fn()
    finally:
        done.set()
        sampler.join()
    return result, max(peak[0], proc.memory_info().rss) - start


def test_peak_is_within_the_budget_whatever_the_field(fake_segmenter, tmp_path):
    centres = [(8, 100, 70), (8, 160, 400), (8, 60, 700), (8, 200, 960)]
    field = np.lib.format.open_memmap(tmp_path / "field.npy", mode="w+", dtype=np.float32, shape=SHAPE)
    field[:] = conjugate_field(SHAPE, centres, radius_vox=(4, 10, 10))
    field.flush()
    del field
    source = np.load(tmp_path / "field.npy", mmap_mode="r")  # read region by region, never whole
    input_bytes = source.size * 4
    assert input_bytes > 3 * BUDGET_GB * 1e9 and source.size * IN_MEMORY_BYTES_PER_VOXEL > 30 * BUDGET_GB * 1e9
    # warm up: imports, zarr's I/O thread, the contact estimator's first call
    segment_field(fake_segmenter, conjugate_field((16, 64, 96), [(8, 32, 48)], radius_vox=(4, 10, 10)), VOXEL_SIZE_UM,
                  out=tmp_path / "warm.zarr")

    result, peak = _peak_rss_above_start(lambda: segment_field(
        fake_segmenter, source, VOXEL_SIZE_UM, out=tmp_path / "f.zarr", max_memory_gb=BUDGET_GB))
    assert len(result.synapses) == len(centres)  # the work was done
    # the budget, plus the input's pages that were read through the memory map
    assert peak < BUDGET_GB * 1e9 + input_bytes + SLACK_BYTES, f"peak {peak / 2**20:.1f} MiB"
