import math

import numpy as np
import pytest

from deepis_rt.bench.measure import HostPeakRSS, accuracy
from deepis_rt.bench.peak import matmul_peak
from deepis_rt.core.metrics import dice
from deepis_rt.core.stats import latency_stats


def test_percentiles_on_known_samples():
    s = latency_stats(list(range(1, 101)))  # 1..100 ms
    assert s.n == 100
    assert s.p50_ms == pytest.approx(50.5)
    assert s.p95_ms == pytest.approx(95.05)
    assert s.p99_ms == pytest.approx(99.01)
    assert (s.min_ms, s.max_ms, s.mean_ms) == (1.0, 100.0, pytest.approx(50.5))
    # non-finite samples are dropped; an empty set is n = 0 with NaNs, not an exception
    assert latency_stats([float("nan"), 3.0, float("inf")]).to_dict()["p99_ms"] == 3.0
    empty = latency_stats([])
    assert empty.n == 0 and math.isnan(empty.p50_ms)


def test_matmul_peak_is_positive_and_finite():
    res = matmul_peak("cpu", size=128, min_seconds=0.01, repeats=2)
    assert res.tflops > 0 and math.isfinite(res.tflops)
    assert res.dtype == "float32" and res.size == 128
    assert res.seconds > 0


def test_dice_and_accuracy_on_known_masks():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    assert dice(a, b) == 1.0  # both empty
    a[0] = True  # 16 voxels
    b[0, :2] = True  # 8 voxels, all inside a
    assert dice(a, b) == pytest.approx(2 * 8 / 24)
    ref = np.zeros((1, 1, 4, 8, 8), np.float32)
    ref[..., :4] = 1.0  # CAR-T (distance > half pitch 0.125)
    ref[..., 4:] = -1.0  # target
    out = ref.copy()
    out[0, 0, 0, 0, 0] = -1.0  # one CAR-T voxel flips to target
    acc = accuracy(out, ref, (0.5, 0.25, 0.25))
    assert acc["max_abs_um"] == pytest.approx(2.0)
    assert acc["reference_tcell_voxels"] == 128 and acc["reference_target_voxels"] == 128
    assert acc["dice_tcell"] == pytest.approx(2 * 127 / 255, abs=1e-5)
    assert acc["dice_target"] == pytest.approx(2 * 128 / 257, abs=1e-5)
    assert accuracy(ref, ref, (0.5, 0.25, 0.25))["p99_abs_um"] == 0.0


def test_host_peak_rss_sees_an_allocation():
    with HostPeakRSS() as small:
        pass
    with HostPeakRSS() as big:
        x = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        del x
    assert small.peak_mib > 0 and big.peak_mib > 0
    if big.scope == "block" and small.scope == "block":
        assert big.peak_mib >= small.peak_mib + 48
