"""GPU figures of the bench report: data-sheet peaks, FP32 peaks without TF32, device-time rows and targets."""

from __future__ import annotations

import pytest
import torch

from deepis_rt.bench import report as rp
from deepis_rt.bench.peak import gpu_spec_tflops, matmul_peak


@pytest.mark.parametrize("name, precision, card, tflops", [
    ("NVIDIA H100 80GB HBM3", "fp16", "H100 SXM5", 989.5),
    ("NVIDIA H100 80GB HBM3", "fp32", "H100 SXM5", 67.0),
    ("NVIDIA H100 PCIe", "bf16", "H100 PCIe", 756.5),
    ("NVIDIA H100 NVL", "tf32", "H100 NVL", 417.5),
    ("NVIDIA H200", "bf16", "H200 SXM", 989.5),
    ("NVIDIA H200 NVL", "fp16", "H200 NVL", 835.5),
])
def test_spec_peaks_by_device_name(name, precision, card, tflops):
    spec = gpu_spec_tflops(name, precision)
    assert spec["card"] == card and spec["tflops"] == tflops and "datasheet" in spec["source"]


def test_unknown_card_or_precision_has_no_spec():
    assert gpu_spec_tflops("NVIDIA A100-SXM4-80GB", "fp16") is None
    assert gpu_spec_tflops("NVIDIA H100 80GB HBM3", "int4") is None


def test_fp32_peak_is_measured_without_tf32_and_flags_are_restored():
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cudnn.allow_tf32, matmul.allow_tf32)
    res = matmul_peak("cpu", torch.float32, size=64, min_seconds=0.001, repeats=1)
    assert res.math == "float32" and (cudnn.allow_tf32, matmul.allow_tf32) == before


def _gpu_row(backend, precision, batch, e2e_fps, device_fps, p99_ms=4.0):
    lat = {"n": 8, "mean_ms": 1.0, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": p99_ms, "min_ms": 1.0, "max_ms": 3.0}
    dev = {"clock": "cuda-events", "iterations": 50, "warmup": 3, "tiles_per_s": device_fps,
           "latency_ms": {**lat, "n": 50, "p99_ms": 1.5}}
    return {"backend": backend, "precision": precision, "device": "cuda:0", "batch": batch, "status": "ok",
            "reason": "", "throughput_fps": e2e_fps, "latency_ms": lat, "samples_ms": [1.0], "device_time": dev}


def test_device_time_feeds_fraction_of_peak_and_the_gpu_targets():
    model = {"name": "deepis", "source": "s", "preset": "deepis", "parameters": 1, "tile_zyx": [64, 128, 128],
             "flops_per_tile": 1e12, "gflops_per_tile": 1000.0}
    rows = [_gpu_row("torch-cuda", "fp32", 1, 8.0, 10.0), _gpu_row("torch-cuda", "fp32", 4, 9.0, 12.0),
            _gpu_row("torch-cuda-graphs", "fp16", 1, 40.0, 60.0, p99_ms=12.0),
            _gpu_row("torch-cuda-graphs", "fp16", 4, 50.0, 400.0)]
    peaks = [{"device": "cuda", "precision": "fp32", "tflops": 50.0, "math": "float32"},
             {"device": "cuda", "precision": "fp16", "tflops": 800.0, "math": "float16",
              "spec": {"card": "H100 SXM5", "tflops": 989.5}}]
    mr = rp.finish_model(model, rows, [], peaks)
    fp16_b4 = rows[3]
    assert fp16_b4["device_throughput_fps"] == 400.0
    assert fp16_b4["device_fraction_of_peak"] == pytest.approx(0.5)  # 400 TFLOP/s of 800
    assert fp16_b4["fraction_of_peak"] == pytest.approx(50 / 800)  # end to end beside it
    assert rows[0]["device_fraction_of_peak"] == pytest.approx(10 / 50)  # FP32 rows against the FP32 peak
    targets = {t["name"]: t for t in mr["targets"]}
    frac = targets["best GPU backend vs FP16 matrix-product peak (device time)"]
    assert frac["measured"] == pytest.approx(0.5) and frac["met"] is True and frac["target"] == 0.35
    vs32 = targets["best GPU backend vs PyTorch FP32, TF32 off (device time)"]
    assert vs32["measured"] == pytest.approx(400 / 12) and vs32["met"] is True
    p99 = targets["one tile's end-to-end latency, p99 (ms)"]
    assert p99["measured"] == 12.0 and p99["met"] is False and p99["at_most"] is True  # at most 10 ms
    report = {"machine": {"cpu": "c", "cpu_cores": 16, "memory_gib": 1, "gpu": "H100", "gpu_compute_capability": "9.0",
                          "gpu_memory_gib": 80, "os": "o", "python": "3", "libraries": {}},
              "peaks": peaks, "settings": {"batches": [1, 4], "frames": 8, "warmup_calls": 2, "cpu_threads": 1,
                                           "pipeline": False},
              "date_utc": "d", "models": [mr]}
    md = rp.to_markdown(report)
    assert "GPU device time" in md and "| torch-cuda-graphs | fp16 | 4 |" in md and "50.0%" in md
    assert "spec H100 SXM5: 989.5" in md and "target <= 10.0 -> NOT met" in md
