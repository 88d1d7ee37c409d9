"""OpenVINO CPU backend: FP32 equality with ONNX Runtime, BF16 refusal, auto order, concurrency, model cache.

The runner contract itself is checked by tests/runtime/test_runners.py (OpenVINO included).
"""

from __future__ import annotations

import json
import logging
import sys
import threading

import numpy as np
import pytest

import deepis_rt
from deepis_rt.backends import facts
from deepis_rt.backends.openvino import runner as openvino_runner
from deepis_rt.errors import BackendError, ConfigError
from deepis_rt.runtime.source import resolve_source

TILE = (16, 32, 32)


def _batch(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 1, *TILE)).astype(np.float32)


@pytest.fixture
def ov():
    return pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install openvino)")


@pytest.fixture
def no_bf16(monkeypatch):
    """A CPU without BF16, as OpenVINO would report it."""
    monkeypatch.setattr(openvino_runner, "cpu_capabilities", lambda: ("FP32", "INT8", "BIN", "EXPORT_IMPORT"))


def _force_cpu(monkeypatch):
    monkeypatch.setattr(facts, "cuda_available", lambda: False)
    monkeypatch.setattr(facts, "tensorrt_available", lambda: False)


def test_fp32_equals_onnxruntime(ov, tiny_onnx, tmp_path):
    from deepis_rt.backends import OnnxRuntimeRunner, OpenVINORunner

    x = _batch(3, seed=5)
    with OnnxRuntimeRunner(tiny_onnx) as o, OpenVINORunner(tiny_onnx, cache_dir=tmp_path) as v:
        a, b = o.infer(x), v.infer(x)
        assert v.describe()["execution_precision"] == "fp32"
        assert v.fixed_spatial_zyx == TILE
    assert np.abs(a).max() > 1e-3
    np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-5)


def test_model_bytes_and_cache_dir(ov, tiny_onnx, tmp_path):
    from deepis_rt.backends import OpenVINORunner

    cache = tmp_path / "ov-cache"
    with OpenVINORunner(tiny_onnx, cache_dir=cache) as first:
        ref = first.infer(_batch(1))
    blobs = [p for p in cache.rglob("*") if p.is_file()]
    assert blobs, "OpenVINO wrote no compiled model into CACHE_DIR"
    with OpenVINORunner(tiny_onnx.read_bytes(), cache_dir=cache) as again:  # bytes; compiled model from the cache
        np.testing.assert_array_equal(again.infer(_batch(1)), ref)
    assert sorted(p for p in cache.rglob("*") if p.is_file()) == sorted(blobs)  # reused, not recompiled


def test_bad_options_refused():
    from deepis_rt.backends import OpenVINORunner

    with pytest.raises(ConfigError, match="fp16"):
        OpenVINORunner("x.onnx", precision="fp16")
    with pytest.raises(ConfigError, match="hint"):
        OpenVINORunner("x.onnx", hint="fast")


def test_missing_file_is_clear(ov, tmp_path):
    from deepis_rt.backends import OpenVINORunner

    with pytest.raises(BackendError, match="no such ONNX file"):
        OpenVINORunner(tmp_path / "missing.onnx").activate()


def test_bf16_refused_without_cpu_support_simulated(ov, tiny_onnx, no_bf16):
    from deepis_rt.backends import OpenVINORunner

    r = OpenVINORunner(tiny_onnx, precision="bf16")
    with pytest.raises(BackendError, match=r"bf16.*no BF16 support.*AVX512_BF16 or AMX"):
        r.activate()
    assert not r.is_active
    assert "FP32, INT8" in openvino_runner.bf16_unavailable_reason()


def test_bf16_gate_follows_the_capability_query(ov, tiny_onnx, monkeypatch):
    """With BF16 reported, the runner compiles with the BF16 hint (OpenVINO itself decides on real hardware)."""
    from deepis_rt.backends import OpenVINORunner

    monkeypatch.setattr(openvino_runner, "cpu_capabilities", lambda: ("FP32", "BF16", "INT8"))
    assert openvino_runner.bf16_unavailable_reason() is None
    with OpenVINORunner(tiny_onnx, precision="bf16") as r:
        assert r.describe()["precision"] == "bf16"
        out = r.infer(_batch(1))
    assert np.isfinite(out).all()


def test_bf16_on_this_cpu(ov, tiny_onnx, tiny_checkpoint, onnx_cache):
    """The real capability query: refused with a clear error where the CPU lacks BF16, BF16 where it has it."""
    from deepis_rt.backends import OpenVINORunner

    if "BF16" in openvino_runner.cpu_capabilities():
        with OpenVINORunner(tiny_onnx, precision="bf16") as r:
            assert r.execution_precision() == "bf16"
        return
    with pytest.raises(BackendError, match="no BF16 support"):
        OpenVINORunner(tiny_onnx, precision="bf16").activate()
    with pytest.raises(BackendError, match="openvino-cpu: skipped .*no BF16 support"):
        deepis_rt.load(tiny_checkpoint, backend="openvino", precision="bf16", cache_dir=onnx_cache)


def test_auto_order_with_openvino(ov, tiny_checkpoint, onnx_cache, monkeypatch):
    _force_cpu(monkeypatch)
    seg = deepis_rt.load(tiny_checkpoint, cache_dir=onnx_cache, analyze=False)
    assert seg.backend == "openvino-cpu"
    assert seg.describe()["execution_precision"] == "fp32"  # auto is exact: never BF16 unasked
    assert [c.backend for c in seg.backend_report] == ["tensorrt", "onnxruntime-cuda", "torch-cuda", "openvino-cpu"]
    assert seg.backend_report[-1].status == "chosen"


def test_auto_order_without_openvino(tiny_checkpoint, onnx_cache, monkeypatch):
    _force_cpu(monkeypatch)
    monkeypatch.setitem(sys.modules, "openvino", None)  # not installed
    seg = deepis_rt.load(tiny_checkpoint, cache_dir=onnx_cache, analyze=False)
    assert seg.backend == "onnxruntime-cpu"
    report = {c.backend: c for c in seg.backend_report}
    assert report["openvino-cpu"].status == "skipped"
    assert "OpenVINO is not installed" in report["openvino-cpu"].reason
    with pytest.raises(BackendError, match="OpenVINO is not installed"):
        deepis_rt.load(tiny_checkpoint, backend="openvino", cache_dir=onnx_cache)
    assert "not installed" in openvino_runner.bf16_unavailable_reason()


def test_bf16_only_when_asked_and_only_on_openvino(tiny_checkpoint, onnx_cache, monkeypatch, no_bf16):
    _force_cpu(monkeypatch)
    with pytest.raises(BackendError) as info:
        deepis_rt.load(tiny_checkpoint, precision="bf16", cache_dir=onnx_cache)
    text = str(info.value)
    assert "onnxruntime-cpu: skipped (precision 'bf16' runs on openvino-cpu only" in text
    assert "torch-cpu: skipped (precision 'bf16' runs on openvino-cpu only" in text


def _parity_report(sha, agreement):
    return {"checkpoint_sha256": sha, "summary": {"label_agreement_min": agreement, "label_agreement": agreement}}


def test_bf16_warns_per_the_measured_report(tiny_checkpoint, onnx_cache, caplog):
    from deepis_rt.backends.openvino import parity as pp

    source = resolve_source(tiny_checkpoint)
    path = onnx_cache / "openvino" / "parity" / f"{source.sha256[:16]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.write_text(json.dumps(_parity_report(source.sha256, 0.990)))
        with caplog.at_level(logging.WARNING, logger=pp.__name__):
            assert pp.warn_if_bf16_disagrees(source, onnx_cache) is False
        assert "99.000 %" in caplog.text and "< 99.5 %" in caplog.text
        path.write_text(json.dumps(_parity_report(source.sha256, 0.999)))
        assert pp.warn_if_bf16_disagrees(source, onnx_cache) is True
        path.write_text(json.dumps(_parity_report("0" * 64, 0.999)))  # another checkpoint's report
        assert pp.find_parity_report(source, onnx_cache) is None
    finally:
        path.unlink()


def test_bf16_load_consults_the_report(ov, tiny_checkpoint, onnx_cache, monkeypatch, caplog):
    """precision='bf16' on a (simulated) BF16 CPU: loads, and warns when the measured report breaks the rule."""
    from deepis_rt.backends.openvino import parity as pp

    monkeypatch.setattr(openvino_runner, "cpu_capabilities", lambda: ("FP32", "BF16"))
    seen = []
    monkeypatch.setattr(pp, "warn_if_bf16_disagrees", lambda source, cache_dir=None: seen.append(source.sha256))
    seg = deepis_rt.load(tiny_checkpoint, backend="openvino", precision="bf16", cache_dir=onnx_cache, analyze=False)
    assert seg.describe()["precision"] == "bf16" and seen == [resolve_source(tiny_checkpoint).sha256]
    seg.close()


def test_label_parity_figures():
    from deepis_rt.bench.precision_parity import label_parity, summarize_parity

    vs = (0.5, 0.25, 0.25)
    ref = np.zeros((8, 16, 16), np.float32)
    ref[:, :, :6] = 1.0
    ref[:, :, 10:] = -1.0
    same = label_parity(ref, ref.copy(), vs)
    assert same["label_agreement"] == 1.0 and same["max_abs_um"] == 0.0 and same["dice_tcell"] == 1.0
    moved = ref.copy()
    moved[:, :, 5] = 0.0  # one CAR-T column becomes background
    diff = label_parity(ref, moved, vs)
    assert diff["label_agreement"] == pytest.approx(1 - 1 / 16)
    assert diff["dice_tcell"] == pytest.approx(2 * 5 / 11) and diff["dice_target"] == 1.0
    assert diff["max_abs_um"] == pytest.approx(1.0)
    s = summarize_parity([{**same, "voxels": ref.size}, {**diff, "voxels": ref.size}])
    assert s["label_agreement_min"] == diff["label_agreement"] and s["frames"] == 2


def test_parity_tool_refuses_cleanly_without_bf16(monkeypatch):
    from deepis_rt.bench import precision_parity as pp

    monkeypatch.setattr(pp, "bf16_parity_report",
                        lambda *a, **k: (_ for _ in ()).throw(BackendError("bf16 parity | no BF16 here")))
    lines = []
    assert pp.main([], out=lines.append) == 2
    assert lines == ["error: bf16 parity | no BF16 here\n(an estimate on this CPU: add --emulate)"]


def test_bf16_emulation_rounds_operands_not_accumulation():
    """An emulated convolution equals an exact (float64) one on BF16-rounded input and weights, bias kept."""
    import torch

    from deepis_rt.bench.precision_parity import emulate_bf16

    torch.manual_seed(0)
    conv = torch.nn.Conv3d(8, 4, 3, padding=1)
    x = torch.randn(1, 8, 6, 6, 6)
    exact32 = conv(x)
    bf = torch.bfloat16
    want = torch.nn.functional.conv3d(x.to(bf).double(), conv.weight.to(bf).double(), conv.bias.double(), padding=1)
    handles = emulate_bf16(conv)
    got = conv(x)
    assert (got.double() - want).abs().max() < 1e-5  # FP32 accumulation of exact BF16 products
    assert (got - exact32).abs().max() > 1e-4  # the rounding is really there
    assert conv.weight.to(bf).float().equal(conv.weight)  # weights hold BF16 values
    for h in handles:
        h.remove()
    assert (conv(x).double() - want).abs().max() > 1e-5  # inputs no longer rounded


def test_emulated_report_estimates_but_never_gates(tiny_checkpoint, onnx_cache, tmp_path, caplog):
    from deepis_rt.bench import precision_parity as pp

    lines = []
    out_json = tmp_path / "emulated.json"
    assert pp.main([str(tiny_checkpoint), "--emulate", "--videos", "1", "--cache-dir", str(onnx_cache),
                    "--json", str(out_json)], out=lines.append) == 0
    report = json.loads(out_json.read_text())
    assert report["emulated"] is True and "EMULATED" in report["report"] and len(report["rows"]) == 4
    s = report["summary"]
    assert 0 < s["max_abs_um"] < 1.0 and 0.9 < s["label_agreement_min"] <= 1.0
    assert "not stored" in lines[-1]
    source = resolve_source(tiny_checkpoint)
    assert not (onnx_cache / "openvino" / "parity" / f"{source.sha256[:16]}.json").exists()
    # an emulated report put where a measured one is looked for is ignored, loudly
    sidecar = tiny_checkpoint.with_name(tiny_checkpoint.name + ".bf16-parity.json")
    sidecar.write_text(out_json.read_text())
    try:
        with caplog.at_level(logging.WARNING, logger=pp.__name__):
            assert pp.find_parity_report(source, onnx_cache) is None
        assert "emulated BF16 estimate, not a measurement" in caplog.text
    finally:
        sidecar.unlink()


def test_parity_report_refused_on_this_cpu_without_bf16(ov, no_bf16):
    from deepis_rt.bench.precision_parity import bf16_parity_report

    with pytest.raises(BackendError, match="cannot measure BF16 here.*AVX512_BF16 or AMX"):
        bf16_parity_report()


def test_concurrent_threads_share_one_runner(ov, tiny_onnx):
    """Two threads calling infer() and infer_stream() on one runner get what serial calls give."""
    from deepis_rt.backends import OpenVINORunner

    xs = [_batch(2, seed=s) for s in range(4)]
    with OpenVINORunner(tiny_onnx, hint="throughput") as r:
        serial = [r.infer(x) for x in xs]
        results: dict[tuple[int, int], np.ndarray] = {}
        errors: list[BaseException] = []

        def work(thread):
            try:
                if thread == 0:
                    for k, x in enumerate(xs):
                        results[(0, k)] = r.infer(x)
                else:
                    for k, out in enumerate(r.infer_stream(iter(xs))):
                        results[(1, k)] = out
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors and len(results) == 8
    for (_, k), out in results.items():
        np.testing.assert_array_equal(out, serial[k])


def test_stream_keeps_requests_in_flight(ov, tiny_onnx):
    """infer_stream takes the next batch while earlier ones run, and yields in order."""
    from deepis_rt.backends import OpenVINORunner

    xs = [_batch(1, seed=s) for s in range(6)]
    taken = []

    def batches():
        for i, x in enumerate(xs):
            taken.append(i)
            yield x

    with OpenVINORunner(tiny_onnx, hint="throughput", num_requests=3) as r:
        assert r.describe()["infer_requests"] == 3
        outs = []
        for out in r.infer_stream(batches()):
            outs.append(out)
            if len(outs) == 1:
                assert len(taken) >= 2  # the second batch was submitted before the first came back
        expected = [r.infer(x) for x in xs]
    for a, b in zip(outs, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_segmenter_on_openvino_matches_onnxruntime(ov, tiny_checkpoint, onnx_cache, make_ri):
    ri = make_ri((20, 40, 36))
    with deepis_rt.load(tiny_checkpoint, backend="openvino", cache_dir=onnx_cache, analyze=False, batch_size=2) as a, \
            deepis_rt.load(tiny_checkpoint, backend="onnxruntime", cache_dir=onnx_cache, analyze=False) as b:
        ra, rb = a.segment(ri), b.segment(ri)
        batch = a.segment_batch([ri, ri[::-1].copy()])
    assert ra.backend == "openvino-cpu"
    np.testing.assert_allclose(ra.distance, rb.distance, atol=1e-5)
    np.testing.assert_allclose(batch[0].distance, ra.distance, atol=1e-5)
