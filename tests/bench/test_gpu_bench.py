import pytest

from deepis_rt.bench import suite
from deepis_rt.bench.models import resolve_model


@pytest.mark.gpu
def test_gpu_rows_have_device_memory_and_copy_compute_split(tmp_path, tiny_overrides):
    model = resolve_model(preset="deepis-lite", tile_zyx=(32, 64, 64), cache_dir=tmp_path, **tiny_overrides)
    report = suite.run_benchmark([model], ["torch-cuda", "torch-cuda-graphs"], ["fp32", "fp16"], batches=[1, 2],
                                 frames=4, warmup=1, pipeline=True, quick=True)
    (mr,) = report["models"]
    assert mr["baseline"] == "torch-cuda fp32"
    ok = [r for r in mr["rows"] if r["status"] == "ok"]
    assert {(r["backend"], r["precision"]) for r in ok} == {
        ("torch-cuda", "fp32"), ("torch-cuda", "fp16"), ("torch-cuda-graphs", "fp32"), ("torch-cuda-graphs", "fp16")}
    for r in ok:
        assert r["device_peak_mib"] > 0 and r["throughput_fps"] > 0
        split = r["breakdown_ms"]
        assert split["compute_ms"] > 0 and split["h2d_ms"] >= 0 and split["d2h_ms"] >= 0
        assert r["accuracy"]["dice_tcell"] >= 0.9 or r["accuracy"]["reference_tcell_voxels"] < 100
    fp16 = [r for r in ok if r["precision"] == "fp16"]
    assert all(r["accuracy"]["max_abs_um"] < 1.0 for r in fp16)
    assert {p["precision"] for p in report["peaks"] if p["device"] == "cuda"} == {"fp32", "fp16"}
    assert all(p["frames_ok"] == 4 for p in mr["pipeline"])
