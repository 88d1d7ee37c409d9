"""The product's TensorRT code against the real bindings of ONE TensorRT version (run in a subprocess).

``tests/trt_api/test_trt_api.py`` runs this file once per binding version, in a process whose
LD_LIBRARY_PATH holds the stub libraries (see ``conftest.py``); collected on its own it skips.
Engine build, cache, timing cache and runner code run unchanged against the checked fakes of
``checked_trt.py``: real enums, real ILogger / IProgressMonitor subclasses, every call checked
against the real signatures.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

VERSION = os.environ.get("DEEPIS_TRT_API_VERSION")
if not VERSION:
    pytest.skip("run by tests/trt_api/test_trt_api.py with the real TensorRT bindings on the path",
                allow_module_level=True)

sys.path.insert(0, str(Path(__file__).parent))
import checked_trt as ct  # noqa: E402
import tensorrt_bindings as real  # noqa: E402

MAJOR = int(VERSION.split(".")[0])
GPUS = {0: ("NVIDIA H200", (9, 0)), 1: ("NVIDIA L4", (8, 9))}


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_violations():
    ct.VIOLATIONS.clear()
    ct.FakeBuilder._builds.clear()
    ct.FakeContext._streams.clear()
    ct.FakeContext._shapes_seen.clear()
    ct.FakeOnnxParser._fail_with = None
    yield
    assert not ct.VIOLATIONS, "TensorRT API violations:\n" + "\n".join(ct.VIOLATIONS)


class DeviceRecorder:
    """Stands in for ``torch.cuda.device``: records every device made current."""

    entered: list[int] = []

    def __init__(self, index):
        self.index = index

    def __enter__(self):
        DeviceRecorder.entered.append(int(self.index))
        return self

    def __exit__(self, *exc):
        return False


@pytest.fixture()
def trt(monkeypatch):
    """``import tensorrt`` gives the real bindings with checked fakes for the GPU factories; two GPUs."""
    import torch

    fake = ct.fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    DeviceRecorder.entered = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: GPUS[int(i)][0])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: GPUS[int(i)][1])
    monkeypatch.setattr(torch.cuda, "device", DeviceRecorder)
    return fake


@pytest.fixture()
def onnx_files(tmp_path):
    fp32, fp16 = tmp_path / "m.fp32.onnx", tmp_path / "m.fp16.onnx"
    fp32.write_bytes(b"fp32 graph bytes")
    fp16.write_bytes(b"fp16 graph bytes")
    return fp32, fp16


class HostStream:
    _next = 0x1000

    def __init__(self):
        HostStream._next += 0x10
        self.cuda_stream = HostStream._next  # a non-zero handle, like any stream but the legacy default
        self.synchronized = 0


class HostEvent:
    def __init__(self):
        self.recorded = 0


class HostOps:
    """The runner's CUDA operations on the CPU (host tensors stand in for device memory)."""

    def __init__(self):
        import torch

        self.torch, self.device = torch, torch.device("cpu")
        self.scopes, self.log = 0, []

    @contextlib.contextmanager
    def device_scope(self):
        self.scopes += 1
        yield

    def stream_scope(self, stream):
        return contextlib.nullcontext()

    def stream(self):
        return HostStream()

    def synchronize_stream(self, stream):
        stream.synchronized += 1
        self.log.append(("sync", stream.cuda_stream))

    def current_stream(self):
        return HostStream()

    def wait_for_current(self, stream):
        self.log.append(("wait", stream.cuda_stream))

    def event(self):
        return HostEvent()

    def pinned(self, numel):
        return self.torch.empty(numel, dtype=self.torch.float32)

    def device_buffer(self, numel):
        return self.torch.empty(numel, dtype=self.torch.float32)

    def copy(self, dst, src, stream):
        dst.copy_(src)

    def run(self, fn, x, stream):
        return fn(x)

    def record(self, event, stream):
        event.recorded += 1

    def wait(self, stream, event):
        assert event.recorded

    def synchronize(self, event):
        assert event.recorded

    def keep_alive(self, tensor, stream):
        self.log.append(("keep_alive", stream.cuda_stream))


# -- the bindings themselves -----------------------------------------------------------------------


def test_these_are_the_real_bindings_of_this_version():
    assert real.__version__ == VERSION
    assert hasattr(real.BuilderFlag, "TF32")
    assert hasattr(real.BuilderFlag, "FP16") == (MAJOR < 11)
    assert hasattr(real.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") == (MAJOR < 11)
    with pytest.raises(TypeError):  # the stub factory returns NULL: no engine can really be built here
        real.Builder(real.Logger())


# -- the checker catches what it must --------------------------------------------------------------


def test_checker_rejects_wrong_calls(trt):
    config = ct.FakeBuilderConfig()
    with pytest.raises(ct.ApiViolation, match="set_flag"):
        config.set_flag(6)  # an int where the real binding wants a BuilderFlag
    with pytest.raises(ct.ApiViolation, match="set_flag"):
        config.set_flag(trt.MemoryPoolType.WORKSPACE)  # the wrong enum
    with pytest.raises(ct.ApiViolation, match="create_network"):
        ct.FakeBuilder(trt.Logger()).create_network(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    with pytest.raises(ct.ApiViolation, match="missing argument 'ignore_mismatch'"):
        config.set_timing_cache(config.create_timing_cache(b""))
    with pytest.raises(ct.ApiViolation, match="no argument named 'pool_limit'"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, pool_limit=1 << 30)
    with pytest.raises(ct.ApiViolation, match="set_input_shape"):
        ct.FakeContext(ct.FakeEngine("x", "y", (1,), (1,), (1,))).set_input_shape("x", "1x1")
    engine = ct.FakeEngine("x", "y", (1,), (1,), (1,))
    with pytest.raises(ct.ApiViolation, match="has no attribute 'get_binding_shape'"):
        engine.get_binding_shape(0)  # removed in TensorRT 10
    with pytest.raises(ct.ApiViolation, match="read-only|not a settable"):
        engine.num_io_tensors = 3
    with pytest.raises(ct.ApiViolation, match="has no attribute 'build_engine'"):
        class _Wrong(ct.Checked):  # a fake may not invent API either
            REAL = "Builder"

            def build_engine(self, network, config):
                return None
    with pytest.raises(ct.ApiViolation, match="fake does not model"):
        config.get_memory_pool_limit(trt.MemoryPoolType.WORKSPACE)  # real, but not modelled
    if MAJOR >= 11:
        with pytest.raises(AttributeError):
            trt.BuilderFlag.FP16  # noqa: B018 - removed in TensorRT 11
        with pytest.raises(AttributeError):
            trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH  # noqa: B018
    ct.VIOLATIONS.clear()  # these were provoked on purpose


# -- engine build and cache ------------------------------------------------------------------------


def _profile(dynamic=False):
    from deepis_rt.backends.trt import profile_from_batch

    return profile_from_batch((1, 2, 4), (32, 64, 64), dynamic_shape=dynamic)


def test_fp32_engine_clears_tf32_and_is_cached(trt, onnx_files, tmp_path):
    from deepis_rt.backends.trt import get_engine, load_engine_bytes

    fp32, _ = onnx_files
    built = get_engine(fp32, tmp_path / "engines", "fp32", _profile(), progress=False)
    assert not built.cached and built.data is not None
    (record,) = ct.FakeBuilder._builds
    assert "TF32" not in record["flags"] and "FP16" not in record["flags"]
    assert record["workspace"] == 4 << 30
    assert record["profile"] == [[1, 1, 32, 64, 64], [2, 1, 32, 64, 64], [4, 1, 32, 64, 64]]
    strongly = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert record["network_flags"] == (strongly if MAJOR < 11 else 0)
    assert built.manifest["tf32"] is False and built.manifest["gpu_name"] == "NVIDIA H200"
    assert load_engine_bytes(built.path) == built.data
    again = get_engine(fp32, tmp_path / "engines", "fp32", _profile())
    assert again.cached and again.path == built.path and again.data == built.data
    assert len(ct.FakeBuilder._builds) == 1  # no second build
    # TF32 and workspace are part of the key
    tf32 = get_engine(fp32, tmp_path / "engines", "fp32", _profile(), tf32=True, progress=False)
    ws = get_engine(fp32, tmp_path / "engines", "fp32", _profile(), workspace_gib=1.0, progress=False)
    assert len({built.path, tf32.path, ws.path}) == 3
    assert "TF32" in ct.FakeBuilder._builds[1]["flags"] and ct.FakeBuilder._builds[2]["workspace"] == 1 << 30


def test_fp16_engine_by_tensorrt_version(trt, onnx_files, tmp_path, monkeypatch):
    from deepis_rt.backends.trt import get_engine

    fp32, fp16 = onnx_files
    built = get_engine(fp16, tmp_path, "fp16", _profile(), onnx_fp32_path=fp32, progress=False)
    record = ct.FakeBuilder._builds[-1]
    assert record["onnx"] == str(fp16) and "FP16" not in record["flags"]  # strongly typed: the FP16 graph
    assert built.manifest["build_mode"] == "strongly-typed"
    if MAJOR < 11:
        # TensorRT 10.x before 10.12: the FP32 graph with BuilderFlag.FP16, also when no FP16 ONNX exists
        monkeypatch.setattr(trt, "__version__", "10.11.0.33")
        old = get_engine(fp32, tmp_path, "fp16", _profile(), progress=False)
        record = ct.FakeBuilder._builds[-1]
        assert record["onnx"] == str(fp32) and "FP16" in record["flags"] and record["network_flags"] == 0
        assert old.manifest["build_mode"] == "builder-flag" and old.manifest["precision"] == "fp16"


def test_bad_profile_and_parse_errors_are_reported(trt, onnx_files, tmp_path):
    from deepis_rt.backends.trt import EngineProfile, build_engine
    from deepis_rt.errors import ExportError

    fp32, _ = onnx_files
    bad = EngineProfile((4, 1, 32, 64, 64), (2, 1, 32, 64, 64), (1, 1, 32, 64, 64))
    with pytest.raises(ExportError, match="rejected the optimisation profile"):
        build_engine(fp32, tmp_path, "fp32", bad, progress=False)
    ct.FakeOnnxParser._fail_with = "Unsupported operator FancyOp"
    with pytest.raises(ExportError, match="could not parse .*FancyOp"):
        build_engine(fp32, tmp_path, "fp32", _profile(), progress=False)


@pytest.mark.parametrize("existing", ["other-device", "garbage", "compatible"])
def test_timing_cache_is_checked_and_mismatch_replaced(trt, onnx_files, tmp_path, existing):
    from deepis_rt.backends.trt import build_engine

    fp32, _ = onnx_files
    first = build_engine(fp32, tmp_path, "fp32", _profile(), progress=False)
    cache_file = tmp_path / first.manifest["timing_cache"]
    assert json.loads(cache_file.read_bytes())["tag"] == ct.DEVICE_TAG
    if existing == "other-device":
        cache_file.write_bytes(json.dumps({"tag": "A100|sm80", "entries": {"old": 1.0}}).encode())
    elif existing == "garbage":
        cache_file.write_bytes(b"\x00garbage")
    second = build_engine(fp32, tmp_path, "fp32", _profile(), progress=False)
    saved = json.loads(cache_file.read_bytes())
    assert saved["tag"] == ct.DEVICE_TAG  # never the mismatching cache written back
    if existing == "compatible":
        assert second.manifest["timing_cache_status"] == "loaded"
        assert len(saved["entries"]) == 2  # the first build's timings were kept
    else:
        assert second.manifest["timing_cache_status"].startswith("rejected")
        assert "old" not in saved["entries"]


def test_build_holds_the_engine_lock(trt, onnx_files, tmp_path, monkeypatch):
    import deepis_rt.backends.trt.build as trt_mod

    held = []
    real_lock = trt_mod.file_lock

    @contextlib.contextmanager
    def spy(path, what, *a, **k):
        with real_lock(path, what, *a, **k):
            held.append(Path(path).name)
            yield

    monkeypatch.setattr(trt_mod, "file_lock", spy)
    built = trt_mod.get_engine(onnx_files[0], tmp_path, "fp32", _profile(), progress=False)
    assert held == [built.path.name]


def test_device_used_for_facts_key_and_scope(trt, onnx_files, tmp_path):
    from deepis_rt.backends.trt import get_engine

    fp32, _ = onnx_files
    on0 = get_engine(fp32, tmp_path, "fp32", _profile(), device="cuda:0", progress=False)
    DeviceRecorder.entered = []
    on1 = get_engine(fp32, tmp_path, "fp32", _profile(), device="cuda:1", progress=False)
    assert DeviceRecorder.entered and set(DeviceRecorder.entered) == {1}
    assert on1.manifest["gpu_name"] == "NVIDIA L4" and on1.manifest["compute_capability"] == "8.9"
    assert on0.path != on1.path


# -- the runner ------------------------------------------------------------------------------------


def _engine_bytes(tmp_path, onnx, dynamic):
    from deepis_rt.backends.trt import get_engine

    return get_engine(onnx, tmp_path, "fp32", _profile(dynamic), progress=False).data


def test_runner_reads_profile_uses_one_context_and_its_own_stream(trt, onnx_files, tmp_path):
    from deepis_rt.backends import TensorRTRunner
    from deepis_rt.errors import ShapeError

    ops = HostOps()
    runner = TensorRTRunner(_engine_bytes(tmp_path, onnx_files[0], dynamic=True), device="cuda:1", ops=ops)
    runner.activate()
    engine = runner.engine
    assert runner.input_profile.min_shape == (1, 1, 16, 16, 16)
    assert runner.input_profile.max_shape == (4, 1, 64, 128, 128)
    assert runner.fixed_spatial_zyx is None
    assert runner.spatial_range_zyx == ((16, 16, 16), (64, 128, 128)) and runner.max_batch_size == 4
    x = np.random.default_rng(0).standard_normal((6, 1, 16, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(runner.infer(x), 2 * x + 1, rtol=1e-6)  # 6 > max batch 4: two chunks
    outs = list(runner.infer_stream(iter([x[:2], x[2:5], x[:1]])))
    np.testing.assert_allclose(outs[1], 2 * x[2:5] + 1, rtol=1e-6)
    with pytest.raises(ShapeError, match="outside the sizes this backend accepts"):
        runner.infer(np.zeros((1, 1, 16, 16, 256), np.float32))
    assert ct.created_contexts(engine) == 1  # one context for every call and stream
    assert set(ct.FakeContext._streams) == {runner._stream.cuda_stream} and 0 not in ct.FakeContext._streams
    assert ops.scopes > 0
    runner.deactivate()
    assert ops.log[-1] == ("sync", ct.FakeContext._streams[0])  # synchronised before release
    gc.collect()
    assert ct.live_contexts(engine) == 0


def test_runner_fixed_profile_and_real_device_scope(trt, onnx_files, tmp_path, monkeypatch):
    """With the product's own CUDA ops, the engine is loaded inside torch.cuda.device(1)."""
    import deepis_rt.backends.cuda as gpu
    from deepis_rt.backends import TensorRTRunner

    data = _engine_bytes(tmp_path, onnx_files[0], dynamic=False)
    monkeypatch.setattr(gpu.TorchCudaOps, "stream", lambda self: HostStream())
    DeviceRecorder.entered = []
    runner = TensorRTRunner(data, device="cuda:1").activate()
    assert DeviceRecorder.entered and set(DeviceRecorder.entered) == {1}
    assert runner.fixed_spatial_zyx == (32, 64, 64) and runner.spatial_range_zyx is None
    assert runner.describe()["profile"]["max"] == [4, 1, 32, 64, 64]
    monkeypatch.setattr(gpu.TorchCudaOps, "synchronize_stream", lambda self, s: None)
    runner.deactivate()


def test_backend_loader_builds_once_and_passes_verified_bytes(trt, onnx_files, tmp_path, monkeypatch):
    from deepis_rt.backends.trt.loader import engine_for_model
    from deepis_rt.runtime.backends import SourceFiles
    from deepis_rt.runtime.source import ModelSource

    fp32, fp16 = onnx_files
    reads = []
    real_read = Path.read_bytes

    def counting(self):
        if self.suffix == ".plan":
            reads.append(self.name)
        return real_read(self)

    monkeypatch.setattr(Path, "read_bytes", counting)
    source = ModelSource(path=fp32, kind="onnx", onnx_fp32=fp32, onnx_fp16=None,
                         meta={"tile_zyx": [32, 64, 64]})
    data = engine_for_model(SourceFiles(source), tmp_path, (1, 1, 4), precision="fp16", device="cuda:1")()
    assert data.startswith(b"FAKEPLAN") and reads == []  # built: nothing read back from disk
    again = engine_for_model(SourceFiles(source), tmp_path, (1, 1, 4), precision="fp16", device="cuda:1")()
    assert again == data and len(reads) == 1  # cached: read (and hashed) once
    # strongly typed TensorRT without an FP16 graph builds (and labels) FP32
    assert ct.FakeBuilder._builds[-1]["onnx"] == str(fp32)


def test_segmenter_plans_tiles_inside_the_engine_profile(trt, onnx_files, tmp_path):
    """A volume smaller than the profile's minimum is padded to a tile the engine accepts."""
    from deepis_rt.backends import TensorRTRunner
    from deepis_rt.backends.trt import EngineProfile, get_engine
    from deepis_rt.runtime.segmenter import Segmenter

    profile = EngineProfile((1, 1, 32, 32, 32), (1, 1, 32, 64, 64), (2, 1, 64, 128, 128))
    data = get_engine(onnx_files[0], tmp_path, "fp32", profile, progress=False).data
    runner = TensorRTRunner(data, device="cuda:0", ops=HostOps())
    meta = {"tile_zyx": [32, 64, 64], "voxel_size_um": [0.5, 0.25, 0.25], "medium_ri": 1.337}
    seg = Segmenter(runner, meta, analyze=False)
    assert runner.spatial_range_zyx == ((32, 32, 32), (64, 128, 128))
    volume = np.full((10, 40, 40), 1.337, np.float32)
    volume[3:7, 10:30, 10:30] = 1.37
    result = seg.segment(volume)
    assert result.distance.shape == volume.shape and np.isfinite(result.distance).all()
    assert ct.FakeContext._shapes_seen and all(s[2:] == (32, 64, 64) for s in ct.FakeContext._shapes_seen)
    seg.close()


def test_run_engine_checks_shape_uses_own_stream_and_releases_its_context(trt, onnx_files, tmp_path):
    import torch

    from deepis_rt.backends.trt import deserialize_engine, run_engine
    from deepis_rt.errors import BackendError

    data = _engine_bytes(tmp_path, onnx_files[0], dynamic=False)
    engine = deserialize_engine(data, device="cuda:1")
    assert DeviceRecorder.entered[-1] == 1
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((3, 1, 32, 64, 64)).astype(np.float32))
    ops = HostOps()
    y = run_engine(engine, x, ops=ops)
    assert y.dtype == torch.float32 and torch.allclose(y, 2 * x + 1)
    assert 0 not in ct.FakeContext._streams and ("sync", ct.FakeContext._streams[-1]) in ops.log
    gc.collect()
    assert ct.created_contexts(engine) == 1 and ct.live_contexts(engine) == 0
    with pytest.raises(BackendError, match="outside the engine's optimisation profile"):
        run_engine(engine, torch.zeros((1, 1, 16, 64, 64)), ops=HostOps())


class CallerOps(HostOps):
    """HostOps with a current stream: the caller's, or the one a ``stream_scope`` makes current."""

    def __init__(self):
        super().__init__()
        self.caller = self.current = HostStream()

    def current_stream(self):
        return self.current

    @contextlib.contextmanager
    def stream_scope(self, stream):
        saved, self.current = self.current, stream
        try:
            yield
        finally:
            self.current = saved

    def wait_for_current(self, stream):
        # (waiting stream, stream waited for, engine runs enqueued so far)
        self.log.append(("wait", stream.cuda_stream, self.current.cuda_stream, len(ct.FakeContext._streams)))


def test_forward_device_output_is_ready_on_the_callers_stream(trt, onnx_files, tmp_path):
    """The caller's stream is ordered after the engine (it reads the output there), the host is not blocked."""
    import torch

    from deepis_rt.backends import TensorRTRunner

    ops = CallerOps()
    runner = TensorRTRunner(_engine_bytes(tmp_path, onnx_files[0], dynamic=False), device="cuda:0", ops=ops)
    runner.activate()
    own, caller = runner._stream.cuda_stream, ops.caller.cuda_stream
    x = torch.from_numpy(np.random.default_rng(2).standard_normal((2, 1, 32, 64, 64)).astype(np.float32))
    ops.log.clear()
    y = runner.forward_device(x)
    assert torch.allclose(y, 2 * x + 1)
    assert ("wait", own, caller, 0) in ops.log  # the engine runs after the caller's input is made
    assert ("wait", caller, own, 1) in ops.log  # the caller reads y after the engine has written it
    assert ("keep_alive", caller) in ops.log and not any(e[0] == "sync" for e in ops.log)
    # in the data path the runner's stream is the current one: nothing more to order
    ops.log.clear()
    with ops.stream_scope(runner._stream):
        runner.forward_device(x)
    assert all(e[1] == own for e in ops.log if e[0] in ("wait", "keep_alive")), ops.log
    runner.deactivate()


def test_loader_uses_the_fp16_flag_on_old_tensorrt_without_fp16_onnx(trt, onnx_files, tmp_path, monkeypatch):
    from deepis_rt.backends.trt.loader import engine_for_model
    from deepis_rt.runtime.backends import SourceFiles
    from deepis_rt.runtime.source import ModelSource

    if MAJOR >= 11:  # TensorRT 11 has no FP16 builder flag: always the FP16 graph
        assert not hasattr(trt.BuilderFlag, "FP16")
        return
    monkeypatch.setattr(trt, "__version__", "10.11.0.33")
    fp32, _ = onnx_files
    source = ModelSource(path=fp32, kind="onnx", onnx_fp32=fp32, meta={"tile_zyx": [32, 64, 64]})
    engine_for_model(SourceFiles(source), tmp_path, (1, 1, 4), precision=None, device="cuda:0")()
    record = ct.FakeBuilder._builds[-1]
    assert record["onnx"] == str(fp32) and "FP16" in record["flags"]


def test_timing_cache_keeps_timings_another_process_wrote(trt, tmp_path):
    from deepis_rt.backends.trt.cache import TimingCache

    path = tmp_path / "timing.cache"
    path.write_bytes(json.dumps({"tag": ct.DEVICE_TAG, "entries": {"mine-before": 1.0}}).encode())
    config = ct.FakeBuilderConfig()
    cache = TimingCache(path)
    cache.attach(config)
    assert cache.status == "loaded" and config.get_timing_cache() is cache.cache
    # meanwhile another build wrote its timings, and this build added one
    path.write_bytes(json.dumps({"tag": ct.DEVICE_TAG, "entries": {"theirs": 2.0}}).encode())
    cache.cache._entries["mine-new"] = 3.0
    cache.save()
    assert set(json.loads(path.read_bytes())["entries"]) == {"mine-before", "theirs", "mine-new"}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_bench_tensorrt_variant_activates(trt, onnx_files, tmp_path, monkeypatch, precision):
    """The bench's TensorRT rows use the same engine cache and runner (activation is all a CPU can do)."""
    import types

    import deepis_rt.backends.cuda as gpu
    from deepis_rt.bench.variants import Variant, make_runner

    fp32, fp16 = onnx_files
    model = types.SimpleNamespace(tile_zyx=(32, 64, 64), onnx_fp32=lambda: fp32, onnx_fp16=lambda: fp16)
    monkeypatch.setattr(gpu.TorchCudaOps, "stream", lambda self: HostStream())
    monkeypatch.setattr(gpu.TorchCudaOps, "synchronize_stream", lambda self, s: None)
    runner = make_runner(Variant("tensorrt", precision), model, max_batch=4, engines_dir=tmp_path)
    runner.activate()
    assert runner.fixed_spatial_zyx == (32, 64, 64) and runner.max_batch_size == 4
    record = ct.FakeBuilder._builds[-1]
    assert ("TF32" in record["flags"]) == (precision == "fp16")
    runner.deactivate()
