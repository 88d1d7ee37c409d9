"""Arrays given to segment() are decoded to RI or refused: the network never sees implausible values."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from deepis_rt.backends import FakeRunner
from deepis_rt.errors import ImplausibleRIError, InputError
from deepis_rt.runtime.segmenter import Segmenter

META = {"voxel_size_um": [0.5, 0.25, 0.25], "ri_normalization": {"offset": 1.337, "scale": 0.02},
        "medium_ri": 1.337, "tile_zyx": [16, 32, 32]}


@pytest.fixture
def ri():
    rng = np.random.default_rng(3)
    return (1.337 + 0.05 * rng.random((16, 32, 32))).astype(np.float32)


@pytest.fixture
def seg():
    runner = FakeRunner(fixed_spatial_zyx=(16, 32, 32))
    s = Segmenter(runner, META, analyze=False)
    yield s
    s.close()


def test_uint16_ri_x10000_gives_the_same_result_as_float_ri(seg, ri, caplog):
    ref = seg.segment(ri)
    with caplog.at_level(logging.INFO, logger="deepis_rt.io.ri"):
        a = seg.segment(np.round(ri * 10000).astype(np.uint16))
        seg.segment(np.round(ri * 10000).astype(np.uint16))
    np.testing.assert_allclose(a.distance, ref.distance, atol=2.2 * 0.5e-4 / 0.02)
    assert sum("RI x 10 000" in r.getMessage() for r in caplog.records) == 1  # once per source


@pytest.mark.parametrize("scaled,hint", [(255.0, "8-bit display"), (10000.0, "--ri-scale 0.0001")])
def test_float_in_wrong_units_never_reaches_the_network(seg, ri, scaled, hint):
    calls_before = len(seg.runner.calls)
    with pytest.raises(ImplausibleRIError, match=hint) as err:
        seg.segment(ri * np.float32(scaled) if scaled != 255.0 else (ri - 1.337) * np.float32(5000))
    assert str(err.value).startswith("segment: values span")
    assert len(seg.runner.calls) == calls_before
    with pytest.raises(InputError, match="cannot be refractive indices"):
        seg.segment_batch([ri, ri * np.float32(scaled)])
    assert len(seg.runner.calls) == calls_before  # a batch is validated whole before inference
    with pytest.raises(ImplausibleRIError):
        seg.check_volume(ri * np.float32(scaled), "frame_0007.tif")


def test_explicit_scale_and_offset(seg, ri):
    ref = seg.segment(ri)
    counts = np.round((ri - 1.3) * 2000).astype(np.uint8)
    with pytest.raises(ImplausibleRIError, match="ri_scale"):
        seg.segment(counts)
    got = seg.segment(counts, ri_scale=1 / 2000, ri_offset=1.3)
    np.testing.assert_allclose(got.distance, ref.distance, atol=2.2 * (0.5 / 2000) / 0.02)
    batch = seg.segment_batch([counts, counts], ri_scale=1 / 2000, ri_offset=1.3)
    np.testing.assert_array_equal(batch[0].distance, got.distance)
    checked = seg.check_volume(counts, "x", ri_scale=1 / 2000, ri_offset=1.3)
    assert checked.dtype == np.float32 and 1.3 <= checked.min() and checked.max() < 1.4
