"""Triton model repository: layout, config.pbtxt contents and validation against Triton's schema."""

from __future__ import annotations

import json
import sys

import pytest
from cluster_helpers import TILE, pointwise_onnx

from deepis_rt.cluster import triton_repo
from deepis_rt.cluster.triton_repo import (
    META_PARAMETER,
    load_model_config,
    parse_model_config,
    write_triton_repository,
)
from deepis_rt.errors import ConfigError, ExportError, MissingDependencyError

pytest.importorskip("tritonclient", reason="needs tritonclient (pip install 'deepis-rt[cluster]')")


def test_layout_and_config(export_dir, tmp_path):
    repo = tmp_path / "repo"
    out = write_triton_repository(export_dir, repo, instance_kind="cpu", preferred_batch_sizes=(2, 4))
    assert out.model_name == "tiny" and out.platform == "onnxruntime_onnx"
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*")) == [
        "tiny", "tiny/1", "tiny/1/model.onnx", "tiny/config.pbtxt"]
    assert (repo / "tiny/1/model.onnx").read_bytes() == (export_dir / "tiny.fp32.onnx").read_bytes()
    cfg = load_model_config(repo / "tiny")  # parsed by Triton's own ModelConfig message
    assert cfg.name == "tiny" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 8
    (inp,), (outp,) = cfg.input, cfg.output
    assert (inp.name, outp.name) == ("tomogram", "distance")
    assert list(inp.dims) == [1, *TILE] == list(outp.dims)
    pb2 = triton_repo.model_config_pb2()
    assert inp.data_type == pb2.TYPE_FP32
    assert cfg.HasField("dynamic_batching")
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 4]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 1000
    (group,) = cfg.instance_group
    assert group.kind == pb2.ModelInstanceGroup.KIND_CPU and group.count == 1
    meta = json.loads(cfg.parameters[META_PARAMETER].string_value)
    assert meta["voxel_size_um"] == [0.5, 0.25, 0.25] and meta["tile_zyx"] == list(TILE)
    # no staging folders left beside the repository
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_gpu_kind_fp16_dynamic_and_replace(export_dir, tmp_path):
    repo = tmp_path / "repo"
    write_triton_repository(export_dir, repo, instance_kind="cpu")
    out = write_triton_repository(export_dir, repo, model_name="deepis", precision="fp16", instance_kind="gpu",
                                  instance_count=2, ort_tensorrt_fp16=True, max_batch_size=2)
    assert (repo / "deepis/1/model.onnx").read_bytes() == (export_dir / "tiny.fp16.onnx").read_bytes()
    cfg = out.config
    pb2 = triton_repo.model_config_pb2()
    assert cfg.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_GPU and cfg.instance_group[0].count == 2
    assert cfg.max_batch_size == 2
    accel = cfg.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP16"
    # a dynamic-shape graph gets -1 dims; writing again replaces the model folder whole
    dyn = pointwise_onnx(tmp_path / "dyn.onnx", dynamic=True)
    out = write_triton_repository(dyn, repo, model_name="deepis", instance_kind="cpu")
    assert list(out.config.input[0].dims) == [1, -1, -1, -1]
    assert not out.config.HasField("optimization")
    assert sorted(p.name for p in repo.iterdir()) == ["deepis", "tiny"]


def test_tensorrt_plan(export_dir, tmp_path):
    plan = tmp_path / "engines" / "abc.plan"
    plan.parent.mkdir()
    plan.write_bytes(b"not really an engine")
    manifest = json.loads((export_dir / "manifest.json").read_text())
    manifest["engine"] = {"path": str(plan)}
    (export_dir / "manifest.json").write_text(json.dumps(manifest))
    out = write_triton_repository(export_dir, tmp_path / "repo")
    assert out.platform == "tensorrt_plan" and out.instance_kind == "KIND_GPU"
    assert out.plan_path.read_bytes() == plan.read_bytes() and out.onnx_path.is_file()
    assert out.config.max_batch_size == 4  # the engine profile's maximum
    with pytest.raises(ConfigError, match="profile"):
        write_triton_repository(export_dir, tmp_path / "repo", max_batch_size=16)
    with pytest.raises(ConfigError, match="GPUs only"):
        write_triton_repository(export_dir, tmp_path / "repo", instance_kind="cpu")
    onnx_only = write_triton_repository(export_dir, tmp_path / "repo2", platform="onnxruntime", instance_kind="cpu")
    assert onnx_only.plan_path is None and onnx_only.platform == "onnxruntime_onnx"


@pytest.mark.parametrize(
    "bad, match",
    [
        ('name: "m"\nmax_batch_sizes: 4\n', "max_batch_sizes"),  # unknown field
        ('name: "m"\nmax_batch_size: "eight"\n', "max_batch_size"),  # wrong type
        ('name: "m"\ninstance_group [ { kind: KIND_TPU } ]\n', "KIND_TPU"),  # unknown enum value
        ('name: "m"\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 1.5 ] } ]\n', "dims"),  # float dim
    ],
)
def test_schema_rejects(bad, match):
    with pytest.raises(ConfigError, match=match):
        parse_model_config(bad)


def test_rejects_foreign_graph_and_options(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 16, 32, 32])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1, 16, 32, 32])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["input"], ["output"])], "g", [x], [y]))
    onnx.save(model, str(tmp_path / "foreign.onnx"))
    with pytest.raises(ExportError, match="tomogram"):
        write_triton_repository(tmp_path / "foreign.onnx", tmp_path / "repo")
    good = pointwise_onnx(tmp_path / "good.onnx")
    with pytest.raises(ConfigError, match="model name"):
        write_triton_repository(good, tmp_path / "repo", model_name="../evil")
    with pytest.raises(ExportError, match="no TensorRT engine"):
        write_triton_repository(good, tmp_path / "repo", platform="tensorrt")
    with pytest.raises(ExportError, match="not an export folder"):
        write_triton_repository(tmp_path / "missing", tmp_path / "repo")


def test_without_tritonclient(tmp_path, monkeypatch):
    good = pointwise_onnx(tmp_path / "good.onnx")
    monkeypatch.setattr(triton_repo, "_pb2", None)
    monkeypatch.setitem(sys.modules, "tritonclient", None)
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)
    monkeypatch.setitem(sys.modules, "tritonclient.grpc.model_config_pb2", None)
    out = write_triton_repository(good, tmp_path / "repo", instance_kind="cpu")  # written, not validated
    assert out.config is None and out.config_path.is_file()
    with pytest.raises(MissingDependencyError, match=r"deepis-rt\[cluster\]"):
        write_triton_repository(good, tmp_path / "repo", instance_kind="cpu", validate=True)


def test_export_cli_writes_repository(export_dir, tmp_path, monkeypatch):
    """`deepis-rt export CKPT --triton REPO` hands the export's result to write_triton_repository."""
    from click.testing import CliRunner

    from deepis_rt.cli.main import main
    from deepis_rt.core.meta import ExportManifest
    from deepis_rt.export import pipeline

    manifest = json.loads((export_dir / "manifest.json").read_text())
    for entry in manifest["files"]:
        entry.update(bytes=1, simplified=False)
    manifest["parity"] = {"reference": "PyTorch FP32 (CPU)", "half_pitch_um": 0.125, "results": []}
    result = pipeline.ExportResult("tiny", export_dir, export_dir / "tiny.fp32.onnx", export_dir / "tiny.fp16.onnx",
                                   export_dir / "manifest.json", ExportManifest.from_dict(manifest), [])
    monkeypatch.setattr(pipeline, "export_model", lambda *a, **k: result)
    ckpt = tmp_path / "tiny.pt"
    ckpt.write_bytes(b"")
    res = CliRunner().invoke(main, ["export", str(ckpt), "--out", str(tmp_path / "export"), "--triton",
                                    str(tmp_path / "repo"), "--triton-kind", "gpu"])
    assert res.exit_code == 0, res.output
    assert "tritonserver --model-repository" in res.output
    cfg = load_model_config(tmp_path / "repo" / "tiny")
    assert cfg.instance_group[0].kind == triton_repo.model_config_pb2().ModelInstanceGroup.KIND_GPU


def test_python_backend_flavour(export_dir, tmp_path):
    """backend "python": model.py (ONNX Runtime inside tritonserver's Python backend) next to model.onnx."""
    import ast

    repo = write_triton_repository(export_dir, tmp_path / "repo", model_name="deepis", platform="python",
                                   instance_kind="cpu", max_batch_size=4)
    assert repo.platform == "python" and repo.plan_path is None
    text = repo.config_path.read_text()
    assert 'backend: "python"' in text and "platform:" not in text and "dynamic_batching" in text
    config = triton_repo.model_config_to_dict(repo.config)
    assert config["backend"] == "python" and config["max_batch_size"] == 4
    assert json.loads(config["parameters"]["deepis_rt.meta"]["string_value"])["tile_zyx"] == list(TILE)
    source = (repo.model_dir / "1" / "model.py").read_text()
    assert "class TritonPythonModel" in source and (repo.model_dir / "1" / "model.onnx").is_file()
    tree = ast.parse(source)  # runs inside the server: must not import deepis_rt
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | {
        n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(str(m).startswith("deepis_rt") for m in imported)
    with pytest.raises(ConfigError, match="platform"):
        write_triton_repository(export_dir, tmp_path / "r2", platform="pytorch")
