"""TensorRT engine cache (key, manifest, checksums) and the missing-TensorRT path.

The cache logic is tested without TensorRT with fake plan files; real build-and-run tests are
marked ``tensorrt`` and run where TensorRT and a GPU exist.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import replace

import numpy as np
import pytest

from deepis_rt.backends.trt import (
    ENGINE_FORMAT,
    EngineEnv,
    build_mode,
    cache_key,
    load_engine_bytes,
    profile_from_batch,
    tensorrt_unavailable_reason,
)
from deepis_rt.errors import EngineCacheError, ExportError, MissingDependencyError

PROFILE = profile_from_batch((1, 1, 4), (64, 128, 128))
KEY_ARGS = dict(onnx_sha256="a" * 64, trt_version="10.13.0", gpu_name="NVIDIA H100 80GB HBM3",
                compute_capability="9.0", precision="fp16", profile=PROFILE)
ENV = EngineEnv("10.13.0", "NVIDIA H100 80GB HBM3", "9.0")


def test_cache_key_is_stable():
    assert cache_key(**KEY_ARGS) == cache_key(**dict(KEY_ARGS))
    # a profile given as a plain dict (as read back from a manifest) gives the same key
    assert cache_key(**{**KEY_ARGS, "profile": json.loads(json.dumps(PROFILE.to_dict()))}) == cache_key(**KEY_ARGS)
    assert cache_key(**KEY_ARGS).startswith("fp16-")


@pytest.mark.parametrize("field, value", [
    ("onnx_sha256", "b" * 64),
    ("trt_version", "10.13.1"),
    ("gpu_name", "NVIDIA A100-SXM4-80GB"),
    ("compute_capability", "8.0"),
    ("precision", "fp32"),
    ("profile", profile_from_batch((1, 2, 4), (64, 128, 128))),
    ("profile", profile_from_batch((1, 1, 4), (64, 128, 128), dynamic_shape=True)),
    ("tf32", True),
    ("workspace_bytes", 1 << 30),
])
def test_cache_key_changes_with_each_input(field, value):
    assert cache_key(**{**KEY_ARGS, field: value}) != cache_key(**KEY_ARGS)


def test_manifest_without_tf32_or_workspace_is_refused(tmp_path):
    """Engines keyed before TF32 and workspace were part of the key are rebuilt, not trusted."""
    plan, _, manifest = _fake_engine(tmp_path)
    for field in ("tf32", "workspace_bytes"):
        edited = {k: v for k, v in manifest.items() if k != field}
        plan.with_suffix(".json").write_text(json.dumps(edited))
        with pytest.raises(EngineCacheError, match=f"lacks '{field}'"):
            load_engine_bytes(plan)


def test_profile_from_batch():
    p = profile_from_batch((1, 2, 8), (64, 128, 128))
    assert p.min_shape == (1, 1, 64, 128, 128) and p.opt_shape == (2, 1, 64, 128, 128)
    assert p.max_shape == (8, 1, 64, 128, 128)
    d = profile_from_batch((1, 1, 2), (64, 128, 128), dynamic_shape=True, size_multiple=16)
    assert d.min_shape == (1, 1, 16, 16, 16) and d.max_shape == (2, 1, 128, 256, 256)
    with pytest.raises(ExportError, match="MIN <= OPT <= MAX"):
        profile_from_batch((4, 1, 2), (64, 128, 128))


@pytest.mark.parametrize("version, mode", [
    ("10.3.0", "builder-flag"), ("10.11.0.33", "builder-flag"), ("10.12.0", "strongly-typed"),
    ("10.13.3", "strongly-typed"), ("11.0.0", "strongly-typed"),
])
def test_build_mode_by_tensorrt_version(version, mode):
    assert build_mode(version, "fp16") == mode
    with pytest.raises(ExportError):
        build_mode(version, "int8")


def _fake_engine(folder, env=ENV, data=b"\x00plan-bytes" * 100):
    """A plan file and manifest exactly as build_engine writes them (without TensorRT)."""
    key = cache_key("c" * 64, env.trt_version, env.gpu_name, env.compute_capability, "fp16", PROFILE,
                    tf32=True, workspace_bytes=4 << 30)
    plan = folder / f"{key}.plan"
    plan.write_bytes(data)
    manifest = {
        "format": ENGINE_FORMAT, "format_version": 1, "cache_key": key, "onnx_sha256": "c" * 64,
        "trt_version": env.trt_version, "gpu_name": env.gpu_name, "compute_capability": env.compute_capability,
        "precision": "fp16", "tf32": True, "workspace_bytes": 4 << 30, "build_mode": "strongly-typed",
        "profile": PROFILE.to_dict(),
        "build_time_s": 1.0, "built_at": "2026-01-01T00:00:00+00:00",
        "engine_sha256": hashlib.sha256(data).hexdigest(), "engine_bytes": len(data),
    }
    plan.with_suffix(".json").write_text(json.dumps(manifest))
    return plan, key, manifest


def test_valid_engine_loads(tmp_path):
    plan, key, _ = _fake_engine(tmp_path)
    assert load_engine_bytes(plan, expected_key=key, env=ENV) == plan.read_bytes()


def test_corrupt_engine_file_is_refused(tmp_path):
    plan, key, _ = _fake_engine(tmp_path)
    data = bytearray(plan.read_bytes())
    data[5] ^= 0x01
    plan.write_bytes(bytes(data))
    with pytest.raises(EngineCacheError, match="checksum mismatch"):
        load_engine_bytes(plan, expected_key=key, env=ENV)
    plan.write_bytes(bytes(data[:50]))  # truncated
    with pytest.raises(EngineCacheError, match="checksum mismatch"):
        load_engine_bytes(plan)


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(precision="fp32"), "do not give its key"),
    (lambda m: m.update(gpu_name="NVIDIA A100"), "do not give its key"),
    (lambda m: m.update(cache_key="fp16-0000"), "manifest is for key"),
    (lambda m: m.pop("onnx_sha256"), "lacks"),
    (lambda m: m.update(format="something else"), "not a deepis-rt engine manifest"),
])
def test_edited_manifest_is_refused(tmp_path, edit, message):
    plan, _, manifest = _fake_engine(tmp_path)
    edit(manifest)
    plan.with_suffix(".json").write_text(json.dumps(manifest))
    with pytest.raises(EngineCacheError, match=message):
        load_engine_bytes(plan)


def test_missing_or_garbled_manifest_is_refused(tmp_path):
    plan, _, _ = _fake_engine(tmp_path)
    plan.with_suffix(".json").write_text('{"format": "deepis-rt-engine", ')
    with pytest.raises(EngineCacheError, match="corrupt manifest"):
        load_engine_bytes(plan)
    plan.with_suffix(".json").unlink()
    with pytest.raises(EngineCacheError, match="manifest missing"):
        load_engine_bytes(plan)


def test_stale_engine_is_refused(tmp_path):
    plan, key, _ = _fake_engine(tmp_path)
    other = cache_key(**{**KEY_ARGS, "onnx_sha256": "d" * 64})
    with pytest.raises(EngineCacheError, match="stale engine"):
        load_engine_bytes(plan, expected_key=other)
    elsewhere = replace(ENV, gpu_name="NVIDIA L4", compute_capability="8.9")
    with pytest.raises(EngineCacheError, match="NVIDIA L4"):
        load_engine_bytes(plan, env=elsewhere)


def test_info_describes_engines(tmp_path):
    from deepis_rt.info import describe

    plan, key, _ = _fake_engine(tmp_path)
    desc = describe(plan)
    assert desc["kind"] == "engine" and desc["cache_key"] == key and desc["integrity"].startswith("ok")
    assert describe(plan.with_suffix(".json"))["kind"] == "engine"
    folder = describe(tmp_path)
    assert folder["kind"] == "engines" and folder["engines"][0]["cache_key"] == key
    plan.write_bytes(b"garbage")
    assert describe(plan)["integrity"].startswith("FAILED")


def test_missing_tensorrt_is_explained(monkeypatch):
    from deepis_rt.backends.trt import build_engine, current_engine_env

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    reason = tensorrt_unavailable_reason()
    assert reason is not None
    assert "TensorRT Python package is not installed" in reason
    assert "pip install 'deepis-rt[tensorrt]'" in reason
    with pytest.raises(MissingDependencyError, match=r"deepis-rt\[tensorrt\]"):
        current_engine_env()
    with pytest.raises(MissingDependencyError):
        build_engine("model.onnx", profile=PROFILE)


def test_export_without_tensorrt(monkeypatch, exports, fake_onnx_export, tmp_path):
    from deepis_rt.export.pipeline import export_model, read_manifest

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    ckpt, _ = exports.get("deepis-lite")
    # auto: the ONNX files are written, the engine is skipped with the reason
    result = export_model(ckpt, out_dir=tmp_path, name="auto", trt=None, engines_dir=tmp_path / "engines")
    assert result.engine is None and result.trt_status.startswith("skipped:")
    assert "pip install 'deepis-rt[tensorrt]'" in result.trt_status
    assert read_manifest(result.out_dir)["tensorrt"] == result.trt_status
    # explicitly asked for: an error, after the ONNX files and manifest were written
    with pytest.raises(MissingDependencyError, match="TensorRT Python package is not installed"):
        export_model(ckpt, out_dir=tmp_path, name="asked", trt=True, engines_dir=tmp_path / "engines")
    assert (tmp_path / "asked" / "asked.fp32.onnx").is_file()
    assert (tmp_path / "asked" / "asked.fp16.onnx").is_file()
    read_manifest(tmp_path / "asked")
    assert not (tmp_path / "engines").exists() or not list((tmp_path / "engines").iterdir())


# --- real TensorRT: run where TensorRT and a CUDA GPU exist ----------------------------------------


@pytest.fixture(scope="session")
def engines_dir(tmp_path_factory):
    """One engine folder for the run ($DEEPIS_RT_TEST_ENGINES, shared with gpu_check.sh): built once."""
    import os
    from pathlib import Path

    shared = os.environ.get("DEEPIS_RT_TEST_ENGINES")
    return Path(shared) if shared else tmp_path_factory.mktemp("engines")


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_tensorrt_engine_builds_runs_and_caches(exports, engines_dir, precision):
    import torch

    from deepis_rt.backends.trt import deserialize_engine, get_engine, run_engine
    from deepis_rt.checkpoint import load_checkpoint
    from deepis_rt.export.parity import FP16_TOLERANCE, compare_distance

    ckpt_path, result = exports.get("deepis-lite")
    tile = load_checkpoint(ckpt_path).tile_zyx
    profile = profile_from_batch((1, 2, 3), tile)
    onnx = result.onnx_fp16 if precision == "fp16" else result.onnx_fp32
    first = get_engine(onnx, engines_dir, precision, profile, onnx_fp32_path=result.onnx_fp32, progress=False)
    assert first.path.is_file() and first.data is not None
    assert first.manifest["tf32"] is (precision == "fp16")
    assert list(engines_dir.glob("timing-*.cache"))
    again = get_engine(onnx, engines_dir, precision, profile, onnx_fp32_path=result.onnx_fp32)
    assert again.cached and again.path == first.path and again.data == first.data
    engine = deserialize_engine(first.data)
    x = np.random.default_rng(0).standard_normal((3, 1, *tile)).astype(np.float32)
    y = run_engine(engine, torch.from_numpy(x).cuda()).cpu().numpy()
    with torch.inference_mode():
        ref = load_checkpoint(ckpt_path).build()(torch.from_numpy(x)).numpy()
    if precision == "fp16":
        r = compare_distance(ref, y, 0.125, FP16_TOLERANCE, "tensorrt-fp16", "random")
        assert r.passed, r.failures
    else:  # TF32 is off: true FP32, so the engine agrees with PyTorch's CPU FP32 closely
        np.testing.assert_allclose(y, ref, atol=1e-3, rtol=1e-3)


@pytest.mark.tensorrt
def test_tensorrt_corrupt_engine_is_rebuilt(exports, engines_dir, tmp_path):
    import shutil

    from deepis_rt.backends.trt import get_engine
    from deepis_rt.checkpoint import load_checkpoint

    ckpt_path, result = exports.get("deepis-lite")
    profile = profile_from_batch((1, 2, 3), load_checkpoint(ckpt_path).tile_zyx)
    shared = get_engine(result.onnx_fp16, engines_dir, "fp16", profile, onnx_fp32_path=result.onnx_fp32)
    # corrupt a copy (with the shared timing cache, so the rebuild is quick), never the shared engine
    for f in [shared.path, shared.manifest_path, *engines_dir.glob("timing-*.cache")]:
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / shared.path.name).write_bytes(b"corrupt")
    with pytest.raises(EngineCacheError, match="checksum mismatch"):
        get_engine(result.onnx_fp16, tmp_path, "fp16", profile, onnx_fp32_path=result.onnx_fp32, rebuild=False)
    rebuilt = get_engine(result.onnx_fp16, tmp_path, "fp16", profile, onnx_fp32_path=result.onnx_fp32)
    assert not rebuilt.cached and load_engine_bytes(rebuilt.path) == rebuilt.data
    assert rebuilt.manifest["timing_cache_status"] == "loaded"


def test_broken_tensorrt_install_is_explained(monkeypatch):
    import deepis_rt._optional as optional

    def broken(name, purpose=None):
        raise OSError("libnvinfer.so.10: cannot open shared object file")

    monkeypatch.setattr(optional, "import_optional", broken)
    reason = tensorrt_unavailable_reason()
    assert "installed but cannot be imported" in reason and "libnvinfer" in reason


def test_engine_build_failure_is_recorded(monkeypatch, exports, fake_onnx_export, tmp_path):
    import deepis_rt.backends.trt as trt_mod
    from deepis_rt.export.pipeline import export_model, read_manifest

    def failing_build(*args, **kwargs):
        raise ExportError("export | TensorRT could not parse model.onnx: unsupported node")

    monkeypatch.setattr(trt_mod, "tensorrt_unavailable_reason", lambda: None)
    monkeypatch.setattr(trt_mod, "get_engine", failing_build)
    ckpt, _ = exports.get("deepis-lite")
    result = export_model(ckpt, out_dir=tmp_path, name="auto", trt=None)  # best effort: ONNX still fine
    assert result.engine is None and result.trt_status.startswith("failed: ")
    assert read_manifest(result.out_dir)["tensorrt"].startswith("failed: ")
    with pytest.raises(ExportError, match="unsupported node"):
        export_model(ckpt, out_dir=tmp_path, name="asked", trt=True)
