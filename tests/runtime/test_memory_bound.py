"""A 64x512x512 field of view is segmented with memory bounded by the output plus a few tiles."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from deepis_rt.backends import FakeRunner
from deepis_rt.runtime.segmenter import Segmenter

SHAPE = (64, 512, 512)
VOLUME_MB = np.prod(SHAPE) * 4 / 2**20  # 64 MiB as float32
META = {"voxel_size_um": [0.5, 0.25, 0.25], "ri_normalization": {"offset": 1.337, "scale": 0.02},
        "medium_ri": 1.337, "tile_zyx": [64, 128, 128]}


@pytest.fixture(scope="module")
def big_volume():
    return np.full(SHAPE, 1.337, np.float32)


def _peak_mb(fn):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak / 2**20


def test_tiling_stage_memory_is_output_plus_a_few_tiles(big_volume):
    """Normalising, padding, inferring and blending 25 tiles of 64x128x128 (batch 2).

    Keeping every tile output (25 x 4 MiB), a normalised or padded copy of the input (64 MiB) or a
    weight volume (64 MiB) would each break this bound.
    """
    from deepis_rt.runtime.preprocess import Normalization
    from deepis_rt.runtime.tiling import sliding_window_inference

    norm = Normalization(1.337, 0.02)
    with FakeRunner(fixed_spatial_zyx=(64, 128, 128)) as runner:
        out, peak_mb = _peak_mb(lambda: sliding_window_inference(
            big_volume, runner, (64, 128, 128), overlap=0.25, batch_size=2,
            transform=lambda src, dst: norm.apply(src, out=dst), fixed_tile=True))
        assert sum(c[0] for c in runner.calls) == 25 and len(runner.calls) == 13
    assert out.shape == SHAPE
    assert peak_mb < VOLUME_MB + 32, f"peak {peak_mb:.0f} MiB"


@pytest.mark.parametrize("on_disk", [False, True])
def test_segment_large_volume_bounded_memory(big_volume, tmp_path, on_disk):
    """The whole ``segment`` call: distance map (in memory or a memmap on disk), labels, tiles.

    The paper's labels need the label volume and two masks (16 MiB each, uint8/bool); keeping
    all 25 tile outputs (100 MiB) or any extra float copy of the volume (64 MiB) breaks the bound.
    """
    seg = Segmenter(FakeRunner(fixed_spatial_zyx=(64, 128, 128)), META, batch_size=2, analyze=False,
                    stitch_on_disk=tmp_path if on_disk else False)
    result, peak_mb = _peak_mb(lambda: seg.segment(big_volume))
    assert result.distance.shape == SHAPE and result.labels.shape == SHAPE
    assert isinstance(result.distance, np.memmap) == on_disk
    bound = (0.0 if on_disk else VOLUME_MB) + 0.75 * VOLUME_MB + 24
    assert peak_mb < bound, f"peak {peak_mb:.0f} MiB >= bound {bound:.0f} MiB"
    # in the medium, the fake network gives 0 everywhere: the stitched output must be exactly that
    assert float(np.abs(result.distance[::8, ::64, ::64]).max()) == 0.0


def test_peak_rss_of_the_process_is_sane(big_volume):
    """ru_maxrss (the whole process's peak so far) must not have jumped by many volumes."""
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    seg = Segmenter(FakeRunner(fixed_spatial_zyx=(64, 128, 128)), META, batch_size=4, analyze=False)
    seg.segment(big_volume)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert after - before < 4 * VOLUME_MB
