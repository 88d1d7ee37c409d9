import json

import pytest
import torch
from click.testing import CliRunner

from deepis_rt.checkpoint import save_checkpoint
from deepis_rt.cli import main
from deepis_rt.model import build_model


@pytest.mark.slow  # ~15-35 s on the shared 2-core machine: mostly the ONNX export
def test_quick_bench_with_a_tiny_model_on_the_cpu(tmp_path, tiny_overrides):
    """The real runners (PyTorch eager, ONNX Runtime after an ONNX export) and the real pipeline."""
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "tiny.pt", build_model("deepis-lite", **tiny_overrides), preset="deepis-lite")
    out = tmp_path / "out"
    args = ["bench", "--model", str(ckpt), "--backends", "cpu,tensorrt", "--batch", "1", "--frames", "1",
            "--warmup", "0", "--quick", "--threads", "1", "--tile", "16", "32", "32", "--pipeline", "--tta", "--cache-dir", str(tmp_path / "c"),
            "--json", str(out / "r.json"), "--markdown", str(out / "r.md"), "--plot", str(out / "r.png")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "torch-cpu" in res.output and "onnxruntime-cpu" in res.output and "targets:" in res.output
    report = json.loads((out / "r.json").read_text())
    assert report["machine"]["cpu_cores"] >= 1 and report["peaks"][0]["tflops"] > 0
    (mr,) = report["models"]
    assert mr["model"]["tile_zyx"] == [16, 32, 32] and mr["model"]["flops_per_tile"] > 0
    rows = {r["backend"]: r for r in mr["rows"]}
    assert rows["torch-cpu"]["status"] == "ok" and rows["onnxruntime-cpu"]["status"] == "ok"
    ort = rows["onnxruntime-cpu"]
    assert ort["throughput_fps"] > 0 and ort["latency_ms"]["p99_ms"] >= ort["latency_ms"]["p50_ms"]
    assert ort["accuracy"]["max_abs_um"] < 1e-3  # FP32 ONNX Runtime vs PyTorch FP32
    assert 0 < ort["fraction_of_peak"] and ort["speedup_vs_baseline"] > 0
    if not torch.cuda.is_available():
        assert rows["tensorrt"]["status"] == "skipped" and rows["tensorrt"]["reason"]
    from deepis_rt._optional import is_available

    ov = {"openvino-cpu"} if is_available("openvino") else set()
    assert {p["backend"] for p in mr["pipeline"]} == {"torch-cpu", "onnxruntime-cpu"} | ov
    if ov:  # FP32 exact; BF16 a row of its own (skipped with the reason on CPUs without it)
        fp32 = [r for r in mr["rows"] if r["backend"] == "openvino-cpu" and r["precision"] == "fp32"]
        assert fp32[0]["status"] == "ok" and fp32[0]["accuracy"]["max_abs_um"] < 1e-3
        assert any(r["backend"] == "openvino-cpu" and r["precision"] == "bf16" for r in mr["rows"])
    assert all(p["frames_ok"] == 1 and p["ratio_vs_compute"] > 0 for p in mr["pipeline"])
    # --tta: every pipeline once more with test-time augmentation, a row of its own
    assert sorted((p["backend"], p["tta"]) for p in mr["pipeline"]) == sorted(
        (b, t) for b in {"torch-cpu", "onnxruntime-cpu"} | ov for t in (False, True))
    assert [t["name"] for t in mr["targets"]][0].startswith("ONNX Runtime CPU")
    assert "| onnxruntime-cpu | fp32 | 1 |" in (out / "r.md").read_text()
    assert (out / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
