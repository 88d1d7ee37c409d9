"""PyTorch runner variants: the one list, option checks, CPU runs of every variant with a CPU meaning
(BF16, autocast, channels-last, torch.compile), parity against FP32 and the measured-record choice."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deepis_rt.backends import TorchRunner
from deepis_rt.backends.pytorch.variants import (
    MIN_LABEL_AGREEMENT,
    TORCH_VARIANTS,
    load_records,
    record_key,
    record_variant_results,
    select_variant,
    variant,
    variants_for,
)
from deepis_rt.errors import ConfigError

VOXEL = (0.4, 0.2, 0.2)


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine two spinning threads are many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_module(tiny_checkpoint):
    from deepis_rt.checkpoint import load_checkpoint

    return load_checkpoint(tiny_checkpoint).build().eval()


@pytest.fixture(scope="module")
def tiles():
    return np.random.default_rng(3).standard_normal((2, 1, 16, 32, 32)).astype(np.float32)


def test_every_variant_makes_a_valid_runner_on_each_of_its_devices():
    names = [v.name for v in TORCH_VARIANTS]
    assert len(names) == len(set(names)) and names[0] == "fp32"
    for v in TORCH_VARIANTS:
        for device in v.devices:
            runner = TorchRunner(lambda: None, device=device, **v.options_for(device))
            assert runner.describe()["precision"] == v.options_for(device).get("precision", "fp32")
        assert v.exact == (v.options_for(v.devices[-1]).get("precision", "fp32") == "fp32"
                           and not v.options.get("allow_tf32"))
    cpu = {v.name for v in variants_for("cpu")}
    assert {"fp32", "fp32-channels-last", "fp32-compile", "bf16", "bf16-autocast", "bf16-compile"} <= cpu
    assert not any("fp16" in n or "graphs" in n or n == "tf32" for n in cpu)
    assert variant("fp16-compile").options_for("cuda:1")["compile_mode"] == "max-autotune"
    assert variant("fp32-compile").options_for("cpu")["compile_mode"] == "default"
    assert "fp32-compile" not in {v.name for v in variants_for("cpu", compiled=False)}
    with pytest.raises(ConfigError, match="fp16-cuda-graphs.*not on cpu"):
        variant("fp16-cuda-graphs").options_for("cpu")
    with pytest.raises(ConfigError, match="unknown torch variant 'fp8'.*fp16-compile"):
        variant("fp8")


@pytest.mark.parametrize("options, message", [
    ({"precision": "fp16"}, "fp16.*needs a CUDA device"),
    ({"precision": "int8"}, "precision must be one of fp32, fp16, bf16"),
    ({"autocast": True}, "autocast=True needs precision"),
    ({"compile_mode": "fastest"}, "compile_mode must be one of"),
    ({"device": "cuda", "cuda_graphs": True, "compile_mode": "max-autotune"}, "captures CUDA graphs itself"),
])
def test_runner_refuses_options_that_cannot_work(options, message):
    options = {"device": "cpu", **options}
    with pytest.raises(ConfigError, match=message):
        TorchRunner(lambda: None, **options)


def test_math_labels_say_what_is_computed(tiny_checkpoint):
    assert TorchRunner(tiny_checkpoint, device="cpu", precision="bf16").describe()["math"] == \
        "bf16 weights and activations"
    auto = TorchRunner(tiny_checkpoint, device="cpu", precision="bf16", autocast=True).describe()
    assert auto["math"].startswith("autocast to bf16 (fp32 weights")


def test_cpu_variants_run_and_are_compared_with_fp32(tiny_module, tiles):
    """BF16 (cast and autocast) and channels-last on the CPU, each against FP32 eager on the same tiles."""
    from deepis_rt.bench.torch_variants import measure_torch_variants

    seen = []
    results = measure_torch_variants(tiny_module, tiles, VOXEL, "cpu",
                                     names=["fp32-channels-last", "bf16", "bf16-autocast"], batches=[1, 2],
                                     iterations=2, e2e_calls=1, compiled=False,
                                     on_result=lambda r: seen.append(r["variant"]))
    assert seen == ["fp32", "fp32-channels-last", "bf16", "bf16-autocast"]  # reference first, each as measured
    by = {r["variant"]: r for r in results}
    assert all(r["status"] == "ok" for r in results), [r.get("reason") for r in results]
    assert "parity" not in by["fp32"]  # the reference itself
    assert by["fp32-channels-last"]["parity"]["max_abs_um"] < 1e-4
    assert by["fp32-channels-last"]["label_agreement"] == pytest.approx(1.0, abs=1e-4)
    for name in ("bf16", "bf16-autocast"):
        r = by[name]
        assert 0 < r["parity"]["max_abs_um"] < 0.5  # BF16 rounds: a real, small difference
        assert 0.9 <= r["label_agreement"] <= 1.0 and r["exact_enough"] == (r["label_agreement"] >= MIN_LABEL_AGREEMENT)
        assert r["math"].startswith("autocast") == (name == "bf16-autocast")
    for r in results:
        assert set(r["batches"]) == {"1", "2"} and all(v > 0 for v in r["tiles_per_s"].values())
        timed = r["batches"]["1"]["device_time"]
        assert timed["clock"] == "perf_counter" and timed["iterations"] == 2 and timed["latency_ms"]["n"] == 2
        assert r["batches"]["2"]["end_to_end"]["calls"] == 1


def test_torch_compile_on_cpu_matches_eager_and_reports_compile_time_and_cache(tmp_path, monkeypatch):
    """torch.compile (Inductor, C++ on the CPU) through the runner, on a two-layer network (the
    compile of the U-Net takes minutes on a small CPU; the runner's path is the same)."""
    import torch

    from deepis_rt.bench.torch_variants import measure_variant

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # restored after the test
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(2, 1, 1)).eval()
    x = np.random.default_rng(0).standard_normal((1, 1, 16, 16, 16)).astype(np.float32)
    with torch.inference_mode():
        reference = net(torch.from_numpy(x)).numpy()
    cache = tmp_path / "inductor"
    result, output = measure_variant(variant("fp32-compile"), net, x, reference, VOXEL, "cpu", batches=[1],
                                     iterations=1, e2e_calls=1, compile_cache_dir=cache)
    assert result["status"] == "ok", result.get("reason")
    np.testing.assert_allclose(output, reference, atol=1e-5, rtol=1e-4)
    assert result["options"] == {"compile_mode": "default"}
    assert result["label_agreement"] == pytest.approx(1.0)
    assert result["compile_s"]["1x1x16x16x16"] > 0
    assert result["compile_cache_dir"] == str(cache) and any(p.is_file() for p in cache.rglob("*"))


def test_device_time_reads_events_after_one_final_synchronisation():
    """At least 50 timed calls, each between two events; the host synchronises only before and after."""
    from deepis_rt.bench.device_time import device_time

    log = []

    class FakeEvent:
        clock = 0.0

        def __init__(self, enable_timing=False):
            assert enable_timing
            self.t = None

        def record(self):
            FakeEvent.clock += 1.0
            self.t = FakeEvent.clock
            log.append("record")

        def elapsed_time(self, other):
            assert log[-1] == "sync", "an event read before the final synchronisation"
            return (other.t - self.t) * 0.5

    class Cuda:
        Event = FakeEvent

        @staticmethod
        def synchronize():
            log.append("sync")

    calls = []

    class X:
        shape = (4, 1, 8, 8, 8)

    timed = device_time(lambda x: calls.append(x) or log.append("call"), X(), iterations=10, warmup=2, cuda=Cuda)
    assert timed["iterations"] == 50 and len(calls) == 52 and timed["clock"] == "cuda-events"
    assert log.count("sync") == 2 and log[2] == "sync" and log[-1] == "sync"
    assert timed["latency_ms"]["n"] == 50 and timed["latency_ms"]["p50_ms"] == pytest.approx(0.5)  # 1 tick x 0.5 ms
    assert timed["tiles_per_s"] == pytest.approx(8000.0)  # 4 tiles per 0.5 ms


# -- the choice from measured records ---------------------------------------------------------------

MODEL = {"preset": "deepis", "name": "deepis"}


def _rec(tiles_per_s, agreement=None):
    return {"tiles_per_s": tiles_per_s, "label_agreement": agreement}


def test_select_variant_picks_the_fastest_exact_enough_one():
    key = record_key(MODEL, "cuda:0", (64, 128, 128), "NVIDIA H100 80GB HBM3", host="h")
    records = {key: {"variants": {
        "fp32": _rec({"1": 50.0, "4": 60.0}),                          # exact, no agreement needed
        "fp16-compile": _rec({"1": 400.0, "4": 300.0}, 0.9990),        # fastest qualifying (best batch 400)
        "bf16-compile": _rec({"1": 390.0, "4": 450.0}, 0.9900),        # faster, but labels differ too often
        "fp16": _rec({"1": 200.0}, None),                              # non-exact without a measured agreement
        "fp8-future": _rec({"1": 9000.0}, 1.0),                        # a name this version does not know
    }}}
    assert select_variant(records, key).name == "fp16-compile"
    assert select_variant(records, key, min_label_agreement=0.98).name == "bf16-compile"
    records[key]["variants"]["fp32-cuda-graphs"] = _rec({"1": 500.0}, 0.90)  # exact, yet measured wrong
    assert select_variant(records, key).name == "fp16-compile"
    other_gpu = record_key(MODEL, "cuda:0", (64, 128, 128), "NVIDIA H200", host="h")
    assert other_gpu != key and select_variant(records, other_gpu) is None
    assert select_variant({}, key) is None


def test_records_are_stored_merged_and_read_back(tmp_path):
    key = record_key(MODEL, "cuda", (64, 128, 128), "NVIDIA H100 80GB HBM3", host="h")
    record_variant_results(key, [
        {"variant": "fp32", "status": "ok", "tiles_per_s": {"1": 10.0}, "label_agreement": None},
        {"variant": "fp16", "status": "failed", "tiles_per_s": {"1": 99.0}},
    ], gpu_name="NVIDIA H100 80GB HBM3", date_utc="d1", cache_dir=tmp_path)
    record_variant_results(key, [{"variant": "fp16", "status": "ok", "tiles_per_s": {1: 30.0},
                                  "label_agreement": 0.999, "compile_s": None}], cache_dir=tmp_path)
    stored = load_records(tmp_path)
    assert set(stored[key]["variants"]) == {"fp32", "fp16"}  # merged; the failed row was not stored
    assert stored[key]["variants"]["fp16"]["tiles_per_s"] == {"1": 30.0}
    assert select_variant(stored, key).name == "fp16"
    with pytest.raises(ConfigError, match="unknown torch variant"):
        record_variant_results(key, [{"variant": "nope", "status": "ok", "tiles_per_s": {"1": 1.0}}], cache_dir=tmp_path)
    (tmp_path / "torch_variants.json").write_text("{not json")
    assert load_records(tmp_path) == {}
    json.loads(json.dumps(stored))  # plain JSON


@pytest.mark.gpu
def test_gpu_variants_agree_with_fp32_and_are_timed_on_the_device(tiny_module, tiles):
    """On a GPU: FP16, BF16, autocast, channels-last and CUDA graphs run, are compared with FP32 eager
    (TF32 off) and timed with CUDA events; FP32 variants agree with it to 1e-4."""
    from deepis_rt.bench.torch_variants import measure_torch_variants

    names = ["fp32-channels-last", "fp32-cuda-graphs", "tf32", "fp16", "fp16-autocast", "fp16-cuda-graphs",
             "bf16-cuda-graphs"]
    results = measure_torch_variants(tiny_module, tiles, VOXEL, "cuda", names=names, batches=[1, 2], e2e_calls=2,
                                     compiled=False)
    by = {r["variant"]: r for r in results}
    assert all(r["status"] == "ok" for r in results), [(r["variant"], r.get("reason")) for r in results]
    for name in ("fp32-channels-last", "fp32-cuda-graphs"):
        assert by[name]["parity"]["max_abs_um"] < 1e-4 and by[name]["label_agreement"] > 0.9999
    for r in results:
        timed = r["batches"]["2"]["device_time"]
        assert timed["clock"] == "cuda-events" and timed["iterations"] >= 50 and timed["latency_ms"]["p99_ms"] > 0
        assert r["device_peak_mib"] > 0


@pytest.mark.gpu
def test_gpu_compile_max_autotune_output_survives_the_next_call(tiny_module, tiles):
    """Inductor's CUDA graphs reuse their output buffers; the runner hands out copies (the data path
    still reads frame i while frame i + 1 runs)."""
    import copy

    import torch

    runner = TorchRunner(copy.deepcopy(tiny_module), device="cuda", compile_mode="max-autotune")
    with runner:
        x1, x2 = (torch.from_numpy(tiles[i : i + 1]).cuda() for i in range(2))
        y1 = runner.forward_device(x1)
        first = y1.clone()
        runner.forward_device(x2)
        torch.cuda.synchronize()
        assert torch.equal(y1, first)
        assert list(runner.describe()["compile"]["seconds_per_shape"]) == ["1x1x16x32x32"]
        out = list(runner.infer_stream(iter([tiles[:1], tiles[1:2], tiles[:1]])))
    np.testing.assert_allclose(out[0], out[2], atol=1e-5)


class _Model:
    """The lazy-loader face of a model, as a registry factory sees it (nothing is built here)."""

    tile_zyx = (64, 128, 128)
    sha256 = "ab" * 32
    name = "deepis"
    meta = {"preset": "deepis"}

    def module(self):
        raise AssertionError("the network is built on activation, not when the runner is made")


def test_torch_cuda_runs_the_measured_fastest_exact_enough_variant(tmp_path, monkeypatch):
    import torch

    from deepis_rt.backends.pytorch import loader
    from deepis_rt.backends.spec import RunnerRequest

    gpu = "NVIDIA H100 80GB HBM3"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu)
    key = record_key(MODEL, "cuda:0", _Model.tile_zyx, gpu)
    record_variant_results(key, [
        {"variant": "fp32", "status": "ok", "tiles_per_s": {"1": 50.0}, "label_agreement": None},
        {"variant": "bf16-compile", "status": "ok", "tiles_per_s": {"1": 300.0}, "label_agreement": 0.9991},
        {"variant": "fp16-compile", "status": "ok", "tiles_per_s": {"1": 900.0}, "label_agreement": 0.95},
    ], gpu_name=gpu, cache_dir=tmp_path)

    runner = loader.make_cuda_runner(RunnerRequest(model=_Model(), device="cuda:0", cache_dir=tmp_path))
    chosen = variant("bf16-compile").options_for("cuda")
    assert runner.precision == "bf16" and runner.compile_mode == chosen["compile_mode"]

    # an explicit precision or option is the user's choice; without a record nothing is chosen
    asked = loader.make_cuda_runner(RunnerRequest(model=_Model(), device="cuda:0", precision="fp32",
                                                  cache_dir=tmp_path))
    assert asked.precision == "fp32" and asked.compile_mode is None
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    default = loader.make_cuda_runner(RunnerRequest(model=_Model(), device="cuda:0", cache_dir=tmp_path))
    assert default.precision == loader.CUDA_PRECISIONS[0] and default.compile_mode is None and default.cuda_graphs
