"""load(), Segmenter and FrameResult: sources, backends, auto-selection, threads, bad input."""

from __future__ import annotations

import shutil
import threading

import numpy as np
import pytest

import deepis_rt
from deepis_rt.backends import FakeRunner, facts, registry
from deepis_rt.errors import BackendError, CheckpointError, ConfigError, InputError, NonFiniteInputError
from deepis_rt.runtime import backends
from deepis_rt.runtime.result import FrameResult, labels_from_distance
from deepis_rt.runtime.segmenter import Segmenter

META = {"voxel_size_um": [0.5, 0.25, 0.25], "ri_normalization": {"offset": 1.337, "scale": 0.02},
        "medium_ri": 1.337, "tile_zyx": [16, 32, 32]}


@pytest.fixture(scope="module")
def seg_torch(tiny_checkpoint):
    seg = deepis_rt.load(tiny_checkpoint, backend="torch", analyze=False)
    yield seg
    seg.close()


@pytest.fixture(scope="module")
def seg_ort(tiny_checkpoint, tiny_onnx, onnx_cache):
    seg = deepis_rt.load(tiny_checkpoint, backend="onnxruntime", cache_dir=onnx_cache, analyze=False)
    yield seg
    seg.close()


def _best_exact_cpu() -> str:
    """What ``auto`` picks on a CPU: OpenVINO FP32 where installed, else ONNX Runtime."""
    from deepis_rt._optional import is_available

    return "openvino-cpu" if is_available("openvino") else "onnxruntime-cpu"


def test_public_names():
    assert deepis_rt.load is deepis_rt.runtime.load
    assert deepis_rt.Segmenter is Segmenter and deepis_rt.FrameResult is FrameResult


def test_segment_torch_and_onnxruntime_agree(seg_torch, seg_ort, make_ri):
    ri = make_ri((20, 40, 36))
    a, b = seg_torch.segment(ri), seg_ort.segment(ri)
    assert a.backend == "torch-cpu" and b.backend == "onnxruntime-cpu"
    for r in (a, b):
        assert r.distance.shape == ri.shape and r.distance.dtype == np.float32
        assert r.labels.shape == ri.shape and r.labels.dtype == np.uint8 and r.labels.max() <= 3
        assert r.voxel_size_um == (0.5, 0.25, 0.25)
        assert {"validate", "resample", "infer", "resample_back", "analyze", "total"} <= set(r.timings_ms)
        assert r.analysis is None and r.cells == () and r.synapses == ()
    # both tile (20, 40, 36) with (16, 32, 32) tiles here, so they agree to float precision
    assert np.abs(a.distance).max() > 1e-3
    np.testing.assert_allclose(a.distance, b.distance, atol=1e-4)
    assert (a.labels == b.labels).mean() > 0.999


def test_resampled_input_comes_back_on_its_grid(seg_ort, make_ri):
    ri = make_ri((12, 30, 50))
    res = seg_ort.segment(ri, voxel_size_um=(0.8, 0.3, 0.2))
    assert res.distance.shape == ri.shape and res.labels.shape == ri.shape
    assert res.voxel_size_um == (0.8, 0.3, 0.2)
    assert res.timings_ms["resample"] > 0 and res.timings_ms["resample_back"] > 0


def test_load_onnx_file_and_export_folder(tiny_onnx, tmp_path, make_ri):
    ri = make_ri((16, 32, 32))
    direct = deepis_rt.load(tiny_onnx, analyze=False)
    assert direct.backend == _best_exact_cpu()
    assert direct.tile_zyx == (16, 32, 32)  # meta read from the ONNX file
    folder = tmp_path / "export"
    folder.mkdir()
    shutil.copy(tiny_onnx, folder / "tiny.onnx")
    from_folder = deepis_rt.load(folder, analyze=False)  # no manifest: the ONNX file found by name
    np.testing.assert_allclose(from_folder.segment(ri).distance, direct.segment(ri).distance, atol=1e-6)
    # an ONNX file cannot be run by PyTorch: a clear error lists why
    with pytest.raises(BackendError, match="needs a PyTorch checkpoint"):
        deepis_rt.load(tiny_onnx, backend="torch")


def test_export_folder_manifest_is_verified(tiny_onnx, tmp_path):
    """An export folder as ``deepis-rt export`` writes it: the manifest's checksums are checked."""
    import json

    from deepis_rt.checkpoint import file_sha256
    from deepis_rt.errors import DeepisError

    pipeline = pytest.importorskip("deepis_rt.export.pipeline")
    folder = tmp_path / "tiny"
    folder.mkdir()
    shutil.copy(tiny_onnx, folder / "tiny.fp32.onnx")
    manifest = {"format": pipeline.EXPORT_FORMAT, "format_version": 1, "name": "tiny",
                "files": [{"path": "tiny.fp32.onnx", "precision": "fp32", "sha256": file_sha256(folder / "tiny.fp32.onnx")}],
                "engine": None}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    seg = deepis_rt.load(folder, analyze=False)
    assert seg.backend == _best_exact_cpu() and seg.tile_zyx == (16, 32, 32)
    with open(folder / "tiny.fp32.onnx", "ab") as f:
        f.write(b"tampered")
    with pytest.raises(DeepisError, match="sha256"):
        deepis_rt.load(folder)


def test_analysis_is_attached_when_available(make_ri):
    pytest.importorskip("deepis_rt.analysis")
    # the fake network maps RI above the medium to positive distances (CAR-T) and below to negative
    seg = Segmenter(FakeRunner(gain=3.0), META)
    res = seg.segment(make_ri((32, 64, 64)))
    assert res.analysis is not None
    assert res.labels is res.analysis.labels or np.array_equal(res.labels, res.analysis.labels)
    kinds = {c.kind for c in res.cells}
    assert kinds <= {"tcell", "target"} and len(res.cells) >= 1
    assert res.timings_ms["analyze"] > 0


def test_bad_paths_and_backends(tmp_path, tiny_checkpoint, monkeypatch):
    with pytest.raises(CheckpointError, match="no such file"):
        deepis_rt.load(tmp_path / "missing.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no .onnx or .pt"):
        deepis_rt.load(tmp_path / "empty")
    with pytest.raises(ConfigError, match="unknown backend"):
        deepis_rt.load(tiny_checkpoint, backend="tpu")


def test_no_bundled_checkpoint_is_a_clear_error(monkeypatch):
    import deepis_rt.checkpoint as ckpt_mod

    monkeypatch.setattr(ckpt_mod, "bundled_checkpoint_path", lambda: None, raising=False)
    with pytest.raises(CheckpointError, match="no bundled checkpoint"):
        deepis_rt.load()


def _force(monkeypatch, cuda=False, trt=False, providers=("CPUExecutionProvider",), openvino=False):
    monkeypatch.setattr(facts, "cuda_available", lambda: cuda)
    monkeypatch.setattr(facts, "tensorrt_available", lambda: trt)
    monkeypatch.setattr(facts, "ort_providers", lambda: list(providers))
    monkeypatch.setattr(facts, "openvino_available", lambda: openvino)


def test_auto_prefers_onnxruntime_cpu_and_reports_why(tiny_checkpoint, onnx_cache, tiny_onnx, monkeypatch):
    _force(monkeypatch)  # no OpenVINO (tests/runtime/test_openvino.py covers the order with it)
    seg = deepis_rt.load(tiny_checkpoint, cache_dir=onnx_cache, analyze=False)
    assert seg.backend == "onnxruntime-cpu"
    report = {c.backend: c for c in seg.backend_report}
    assert [c.backend for c in seg.backend_report] == list(registry.auto_order()[:5])
    assert report["tensorrt"].status == "skipped" and "CUDA" in report["tensorrt"].reason
    assert report["openvino-cpu"].status == "skipped" and "OpenVINO is not installed" in report["openvino-cpu"].reason
    assert report["onnxruntime-cpu"].status == "chosen"
    assert "torch-cpu" not in report  # never tried: a faster one worked


def test_auto_falls_back_to_torch_without_onnxruntime(tiny_checkpoint, monkeypatch):
    _force(monkeypatch, providers=())
    seg = deepis_rt.load(tiny_checkpoint, analyze=False)
    assert seg.backend == "torch-cpu"
    assert "onnxruntime is not installed" in str(seg.backend_report[4])


def test_auto_falls_back_when_a_backend_fails_to_start(tiny_checkpoint, monkeypatch):
    """TensorRT 'installed' with a 'GPU', but activation fails: the next backend is used."""
    import sys

    from deepis_rt.runtime.source import resolve_source

    _force(monkeypatch, cuda=True, trt=True)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # 'installed' per the probe, but unusable

    def no_export(source, cache_dir=None):
        raise BackendError("no export in this test")

    monkeypatch.setattr(backends, "onnx_for_checkpoint", no_export)
    monkeypatch.setattr(backends, "gpu_onnx_for_checkpoint", no_export)
    runner, report = backends.select_runner(resolve_source(tiny_checkpoint), "auto")
    statuses = {c.backend: c.status for c in report}
    assert statuses["tensorrt"] == "failed"
    assert statuses["onnxruntime-cuda"] == "skipped"  # no CUDA provider
    # torch-cuda "probes" well here but fails to activate without a real GPU, unless one exists
    assert runner.name in ("torch-cuda", "torch-cpu")
    runner.deactivate()


def test_device_cpu_skips_gpu_backends(tiny_checkpoint, monkeypatch):
    _force(monkeypatch, cuda=True, trt=True, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    seg = deepis_rt.load(tiny_checkpoint, backend="torch", device="cpu", analyze=False)
    assert seg.backend == "torch-cpu"
    assert "asks for the CPU" in str(seg.backend_report[0])


def test_bad_input_raises_before_inference():
    runner = FakeRunner()
    seg = Segmenter(runner, META)
    bad = np.ones((16, 32, 32), np.float32)
    bad[3, 3, 3] = np.nan
    with pytest.raises(NonFiniteInputError):
        seg.segment(bad)
    with pytest.raises(InputError, match="3-D"):
        seg.segment(np.ones((32, 32), np.float32))
    with pytest.raises(InputError, match="voxel_size_um"):
        seg.segment(np.ones((16, 32, 32), np.float32), voxel_size_um=(1, 2))
    with pytest.raises(InputError):
        seg.segment_batch([np.ones((16, 32, 32), np.float32), np.ones((4, 4), np.float32)])
    assert runner.calls == []


def test_segment_batch_equals_segment(make_ri):
    seg = Segmenter(FakeRunner(), META, batch_size=2, analyze=False)
    vols = [make_ri((16, 32, 32), seed=s) for s in range(3)]
    batch = seg.segment_batch(vols)
    assert [c[0] for c in seg.runner.calls] == [2, 1]  # frames share runner calls
    for v, r in zip(vols, batch, strict=True):
        single = seg.segment(v)
        np.testing.assert_allclose(r.distance, single.distance, atol=1e-6)
        np.testing.assert_array_equal(r.labels, single.labels)
    # per-volume voxel sizes, and volumes that need tiling
    mixed = seg.segment_batch([make_ri((20, 40, 40)), make_ri((10, 20, 20))], [(0.5, 0.25, 0.25), (1.0, 0.5, 0.5)])
    assert mixed[1].distance.shape == (10, 20, 20) and mixed[1].voxel_size_um == (1.0, 0.5, 0.5)


def test_stages_chain_to_segment(make_ri):
    """The stage methods deepis_rt.stream runs in separate threads give what segment() gives."""
    seg = Segmenter(FakeRunner(), META, batch_size=2)
    vols = [make_ri((16, 32, 32), seed=s) for s in range(3)]
    seg.check_volume(vols[0], "frame_0001.tif")
    with pytest.raises(InputError, match="frame_0002.tif"):
        seg.check_volume(np.ones((3, 3), np.float32), "frame_0002.tif")
    prepared = [seg.preprocess(v, 0.25 * np.array([2.0, 1.0, 1.0])) for v in vols]
    outputs = seg.infer_prepared(prepared)
    for v, p, out in zip(vols, prepared, outputs, strict=True):
        result = seg.analyze_result(seg.postprocess(p, out), v, medium_ri=1.337)
        direct = seg.segment(v, (0.5, 0.25, 0.25))
        np.testing.assert_array_equal(result.distance, direct.distance)
        np.testing.assert_array_equal(result.labels, direct.labels)
        assert result.labels is not None and {"infer", "resample_back", "analyze"} <= set(result.timings_ms)
    assert seg.device == "cpu" and seg.describe()["backend"] == "fake"


def test_scalar_voxel_size(make_ri):
    seg = Segmenter(FakeRunner(), META, analyze=False)
    res = seg.segment(make_ri((8, 16, 16)), 0.25)
    assert res.voxel_size_um == (0.25, 0.25, 0.25) and res.distance.shape == (8, 16, 16)


def test_concurrent_segment_calls_match_serial(seg_torch, make_ri):
    """A control-loop thread and a streaming thread share one Segmenter."""
    vols = [make_ri((16, 40, 40), seed=s) for s in range(4)]
    serial = [seg_torch.segment(v).distance for v in vols]
    results: dict[tuple[int, int], np.ndarray] = {}
    errors: list[BaseException] = []

    def work(thread):
        try:
            for i in range(len(vols)):
                k = (i + thread) % len(vols)
                results[(thread, k)] = seg_torch.segment(vols[k]).distance
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(results) == 8
    for (_, k), d in results.items():
        np.testing.assert_array_equal(d, serial[k])


def test_labels_follow_the_paper():
    d = np.zeros((9, 9, 21), np.float32)
    d[:, :, 2:9] = 1.0     # CAR-T
    d[:, :, 12:19] = -1.0  # target, 3 voxels away
    labels = labels_from_distance(d, (0.5, 0.25, 0.25))
    assert (labels[:, :, 2:9] >= 1).all() and (labels[:, :, 12:19] >= 2).all()
    assert (labels[:, :, 9:12] == 3).any()  # dilated by 2 voxels each, the masks meet in between
    assert (labels[:, :, :2] == 0).all()
    far = np.zeros_like(d)
    far[:, :, 0:3], far[:, :, 15:18] = 1.0, -1.0
    assert not (labels_from_distance(far, (0.5, 0.25, 0.25)) == 3).any()


def test_frame_result_forwards_analysis():
    class A:
        cells = [1, 2]
        synapses = [3]

    r = FrameResult(np.zeros((2, 2, 2), np.float32), np.zeros((2, 2, 2), np.uint8), (1.0, 1.0, 1.0), analysis=A())
    assert r.cells == (1, 2) and r.synapses == (3,)
    assert "synapses=1" in repr(r)
    assert r.ok and r.status == "ok"
    bad = FrameResult.failed("frame_0003.tif: 2-D image", frame=3)
    assert not bad.ok and bad.frame == 3 and bad.cells == () and "2-D image" in repr(bad)
