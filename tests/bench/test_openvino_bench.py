"""Bench rows of the OpenVINO backend: variants, the BF16 peak probe, targets against ONNX Runtime."""

from __future__ import annotations

import pytest

from deepis_rt.backends.openvino import runner as openvino_runner
from deepis_rt.bench import peak, suite
from deepis_rt.bench import report as rp
from deepis_rt.bench.variants import Variant, plan_variants, unavailable_reason
from deepis_rt.errors import ConfigError

LAT = {"n": 1, "mean_ms": 1.0, "p50_ms": 1.0, "p95_ms": 1.0, "p99_ms": 1.0, "min_ms": 1.0, "max_ms": 1.0}


def _row(backend, precision, fps, status="ok", reason=""):
    row = {"backend": backend, "precision": precision, "device": "cpu", "batch": 1, "status": status,
           "reason": reason}
    if status == "ok":
        row.update(throughput_fps=fps, latency_ms=LAT, samples_ms=[1.0])
    return row


def test_openvino_variants_fp32_and_bf16():
    variants = plan_variants(["openvino-cpu"])
    assert variants[0] == Variant("torch-cpu", "fp32")
    assert Variant("openvino-cpu", "fp32") in variants and Variant("openvino-cpu", "bf16") in variants
    assert not Variant("openvino-cpu", "bf16").is_gpu
    # bf16 only for OpenVINO, fp16 never for it
    assert plan_variants(["onnxruntime-cpu", "openvino-cpu"], ["bf16"])[1:] == [Variant("openvino-cpu", "bf16")]
    assert Variant("openvino-cpu", "fp16") not in plan_variants(["openvino-cpu"], ["fp16"])
    with pytest.raises(ConfigError, match="bf16"):
        plan_variants(["openvino-cpu"], ["int4"])


def test_bf16_row_says_why_without_bf16(monkeypatch):
    pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install openvino)")
    monkeypatch.setattr(openvino_runner, "cpu_capabilities", lambda: ("FP32", "INT8"))
    assert "no BF16 support" in unavailable_reason("openvino-cpu", "bf16")
    assert unavailable_reason("openvino-cpu", "fp32") is None


def test_openvino_missing_is_a_skipped_row(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)
    assert "OpenVINO is not installed" in unavailable_reason("openvino-cpu", "fp32")


def test_bf16_peak_probe(monkeypatch):
    from deepis_rt.bench import machine

    monkeypatch.setattr(machine, "cpu_flags", lambda: ["avx2", "fma"])
    assert "avx512_bf16" in peak.cpu_bf16_unsupported_reason()
    res = suite._cpu_bf16_peak(quick=True, threads=1)
    assert res["status"] == "unsupported" and res["tflops"] is None and res["precision"] == "bf16"
    monkeypatch.setattr(machine, "cpu_flags", lambda: ["avx2", "amx_bf16"])
    assert peak.cpu_bf16_unsupported_reason() is None


def test_openvino_targets_and_bf16_peak_fraction():
    model = {"name": "m", "preset": "deepis", "tile_zyx": [16, 16, 16], "flops_per_tile": 1e12}
    rows = [_row("torch-cpu", "fp32", 0.5), _row("onnxruntime-cpu", "fp32", 1.0),
            _row("openvino-cpu", "fp32", 1.5), _row("openvino-cpu", "bf16", 2.4)]
    peaks = [{"device": "cpu", "precision": "fp32", "tflops": 4.0}, {"device": "cpu", "precision": "bf16", "tflops": 8.0}]
    mr = rp.finish_model(model, rows, [], peaks)
    targets = {t["name"]: t for t in mr["targets"]}
    fp32 = targets["OpenVINO FP32 vs ONNX Runtime FP32 (CPU)"]
    assert fp32["measured"] == pytest.approx(1.5) and fp32["met"] is True
    bf16 = targets["OpenVINO BF16 vs ONNX Runtime FP32 (CPU)"]
    assert bf16["measured"] == pytest.approx(2.4) and bf16["met"] is True
    assert rows[3]["fraction_of_peak"] == pytest.approx(2.4 / 8.0)  # against the BF16 peak
    assert rows[2]["fraction_of_peak"] == pytest.approx(1.5 / 4.0)


def test_skipped_bf16_target_is_not_a_number():
    model = {"name": "m", "preset": "deepis", "tile_zyx": [16, 16, 16], "flops_per_tile": 1e12}
    rows = [_row("torch-cpu", "fp32", 0.5), _row("onnxruntime-cpu", "fp32", 1.0), _row("openvino-cpu", "fp32", 1.1),
            _row("openvino-cpu", "bf16", None, "skipped", "this CPU has no BF16 support")]
    mr = rp.finish_model(model, rows, [], [{"device": "cpu", "precision": "fp32", "tflops": 4.0}])
    targets = {t["name"]: t for t in mr["targets"]}
    assert targets["OpenVINO FP32 vs ONNX Runtime FP32 (CPU)"]["met"] is False
    bf16 = targets["OpenVINO BF16 vs ONNX Runtime FP32 (CPU)"]
    assert bf16["measured"] is None and bf16["met"] is None and "no BF16 support" in bf16["note"]
    lines = rp._targets_lines(mr)
    assert any("n/a" in line and "no BF16 support" in line for line in lines)
