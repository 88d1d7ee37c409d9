import json
import math

import pytest

from deepis_rt.backends import FakeRunner
from deepis_rt.bench import report as rp
from deepis_rt.bench import suite
from deepis_rt.bench.models import resolve_model
from deepis_rt.bench.variants import Variant, expand_backends, plan_variants, unavailable_reason
from deepis_rt.errors import ConfigError


class _Broken(FakeRunner):
    name = "broken"

    def infer_impl(self, batch):
        raise RuntimeError("kernel exploded")


def test_backend_lists_and_baseline_first():
    assert expand_backends(["cpu", "torch-cpu"]) == ["torch-cpu", "onnxruntime-cpu", "openvino-cpu"]
    assert expand_backends(["all"])[:3] == ["torch-cpu", "onnxruntime-cpu", "openvino-cpu"]
    with pytest.raises(ConfigError, match="unknown backend"):
        expand_backends(["cuda-magic"])
    variants = plan_variants(["onnxruntime-cpu"])
    assert variants[0] == Variant("torch-cpu", "fp32") and variants[0].is_baseline
    assert Variant("onnxruntime-cpu", "fp32") in variants
    with pytest.raises(ConfigError):
        plan_variants(["torch-cpu"], ["int8"])


def test_gpu_backends_say_why_they_cannot_run():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for name in ("torch-cuda", "tensorrt", "onnxruntime-cuda"):
        assert "no CUDA GPU" in unavailable_reason(name)
    assert unavailable_reason("torch-cpu") is None


def test_finish_model_derives_speedup_peak_fraction_and_targets():
    model = {"name": "m", "source": "s", "preset": "deepis", "parameters": 1, "tile_zyx": [16, 16, 16],
             "flops_per_tile": 2e12, "gflops_per_tile": 2000.0}
    lat = {"n": 1, "mean_ms": 1.0, "p50_ms": 1.0, "p95_ms": 1.0, "p99_ms": 1.0, "min_ms": 1.0, "max_ms": 1.0}
    row = lambda b, p, n, fps: {"backend": b, "precision": p, "device": "cpu", "batch": n, "status": "ok",  # noqa: E731
                                "reason": "", "throughput_fps": fps, "latency_ms": lat, "samples_ms": [1.0]}
    rows = [row("torch-cpu", "fp32", 1, 0.5), row("onnxruntime-cpu", "fp32", 1, 1.0),
            row("onnxruntime-cpu", "fp32", 2, 1.5),
            {"backend": "tensorrt", "precision": "fp16", "device": "cuda:0", "batch": 1, "status": "skipped",
             "reason": "no CUDA GPU"}]
    pipes = [{"backend": "onnxruntime-cpu", "precision": "fp32", "batch": 2, "status": "ok", "throughput_fps": 1.2,
              "latency_ms": lat, "stages_ms": {"read_ms": 1.0, "infer_ms": 500.0}}]
    peaks = [{"device": "cpu", "precision": "fp32", "tflops": 4.0, "size": 2048}]
    mr = rp.finish_model(model, rows, pipes, peaks)
    assert mr["baseline"] == "torch-cpu fp32"
    assert rows[1]["speedup_vs_baseline"] == pytest.approx(2.0)
    assert rows[2]["speedup_vs_baseline"] == pytest.approx(3.0)  # no torch b2: vs the baseline's best
    assert rows[1]["achieved_tflops"] == pytest.approx(2.0)  # 2 TFLOP/tile x 1 tile/s
    assert rows[1]["fraction_of_peak"] == pytest.approx(0.5)
    assert pipes[0]["ratio_vs_compute"] == pytest.approx(0.8)
    assert pipes[0]["ratio_vs_infer_stage"] == pytest.approx(0.6)  # 1.2 frames/s x 0.5 s per frame
    targets = {t["name"]: t for t in mr["targets"]}
    ort = targets["ONNX Runtime CPU vs PyTorch eager FP32 (CPU)"]
    assert ort["measured"] == pytest.approx(3.0) and ort["met"] is True
    assert targets["whole pipeline vs compute-only throughput"]["met"] is False
    report = {"machine": {"cpu": "c", "cpu_cores": 2, "memory_gib": 1, "gpu": None, "os": "o", "python": "3",
                          "libraries": {"torch": "x"}},
              "peaks": peaks, "settings": {"batches": [1, 2], "frames": 1, "warmup_calls": 0, "cpu_threads": 1,
                                           "pipeline": True},
              "date_utc": "d", "models": [mr], "load_average_before": [float("nan")]}
    text = rp.format_table(report)
    assert "skipped: no CUDA GPU" in text and "NOT met" in text
    md = rp.to_markdown(report)
    assert md.startswith("# deepis-rt bench") and "| backend | precision | batch |" in md
    assert "Whole pipeline" in md and "50.0%" in md


def test_a_failing_backend_is_a_row_not_a_crash(tmp_path, monkeypatch, tiny_overrides):
    def fake_make_runner(variant, model, max_batch, threads=None, engines_dir="engines"):
        return FakeRunner() if variant.backend == "torch-cpu" else _Broken()

    monkeypatch.setattr(suite, "make_runner", fake_make_runner)
    model = resolve_model(preset="deepis-lite", tile_zyx=(16, 32, 32), cache_dir=tmp_path, **tiny_overrides)
    report = suite.run_benchmark([model], ["torch-cpu", "onnxruntime-cpu", "tensorrt"], batches=[1, 2], frames=2,
                                 warmup=0, pipeline=True, quick=True)
    (mr,) = report["models"]
    by = {(r["backend"], r["batch"]): r for r in mr["rows"]}
    assert set(by) == {(b, n) for b in ("torch-cpu", "onnxruntime-cpu", "tensorrt") for n in (1, 2)}
    assert by[("torch-cpu", 2)]["status"] == "ok" and by[("torch-cpu", 2)]["frames"] == 2
    assert by[("torch-cpu", 1)]["accuracy"]["max_abs_um"] == 0.0
    assert by[("onnxruntime-cpu", 1)]["status"] == "failed"
    assert "kernel exploded" in by[("onnxruntime-cpu", 1)]["reason"]
    import torch

    if not torch.cuda.is_available():
        assert by[("tensorrt", 1)]["status"] == "skipped" and by[("tensorrt", 1)]["reason"]
    (pipe,) = mr["pipeline"]
    assert pipe["backend"] == "torch-cpu" and pipe["frames_ok"] == 2 and pipe["ratio_vs_compute"] > 0
    assert {"read_ms", "infer_ms", "analyze_ms", "write_ms"} <= set(pipe["stages_ms"])
    assert report["peaks"][0]["tflops"] > 0
    assert model.describe()["flops_per_tile"] > 0
    path = rp.write_json(report, tmp_path / "r.json")
    back = json.loads(path.read_text())
    assert back["models"][0]["rows"][0]["latency_ms"]["p50_ms"] > 0
    assert not any(isinstance(v, float) and math.isnan(v) for v in back["load_average_before"] or [])


def test_number_formatting_keeps_integer_zeros():
    assert rp._f(2229.6, 0) == "2230" and rp._f(100.0, 1) == "100" and rp._f(12.50, 2) == "12.5"
    assert rp._f(None) == "-" and rp._f(0.000012, 3) == "1.20e-05"


def test_merge_reports_concatenates_models_and_keeps_commands():
    a = {"models": [{"model": {"name": "a"}}], "peaks": [{"device": "cpu", "tflops": 1.0}], "command": "x",
         "elapsed_s": 1.0, "load_average_after": [1.0]}
    b = {"models": [{"model": {"name": "b"}}], "peaks": [{"device": "cpu", "tflops": 2.0}], "command": "y",
         "elapsed_s": 2.0, "load_average_after": [2.0]}
    m = rp.merge_reports([a, b])
    assert [x["model"]["name"] for x in m["models"]] == ["a", "b"]
    assert m["commands"] == ["x", "y"] and m["elapsed_s"] == 3.0 and m["load_average_after"] == [2.0]
    assert len(m["peaks"]) == 2 and a["models"] == [{"model": {"name": "a"}}]  # inputs untouched
    # each peak names the run and models it belongs to, even where two runs measured the same value
    assert [(p["run"], p["models"]) for p in m["peaks"]] == [(1, ["a"]), (2, ["b"])]
    same = rp.merge_reports([a, {**b, "peaks": [{"device": "cpu", "tflops": 1.0}]}])
    assert [p["run"] for p in same["peaks"]] == [1, 2]


def test_device_memory_column_uses_what_each_backend_can_see():
    """PyTorch's allocator counts only torch tensors: TensorRT / ONNX Runtime rows show the GPU's use."""
    base = {"precision": "fp16", "batch": 1, "throughput_fps": 1.0, "status": "ok",
            "latency_ms": {"p50_ms": 1.0, "p95_ms": 1.0, "p99_ms": 1.0},
            "device_peak_mib": 12.0, "device_used_mib": 3456.0}
    dev = rp._COLUMNS.index("dev MiB")
    assert rp._cells({**base, "backend": "torch-cuda"})[dev] == "12"
    assert rp._cells({**base, "backend": "tensorrt"})[dev] == "3456"
    assert rp._cells({**base, "backend": "onnxruntime-gpu"})[dev] == "3456"
