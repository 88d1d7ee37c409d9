"""ONNX export: parity with PyTorch, FP16 really in half, align_corners, metadata and manifest."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from deepis_rt.checkpoint import load_checkpoint
from deepis_rt.errors import ExportError, ParityError
from deepis_rt.export import INPUT_NAME, OUTPUT_NAME, read_onnx_meta
from deepis_rt.export.parity import (
    FP16_TOLERANCE,
    FP32_TOLERANCE,
    check_parity,
    compare_distance,
    run_onnxruntime,
    two_cell_tomogram,
)
from deepis_rt.export.pipeline import export_model, read_manifest

HALF_PITCH_UM = 0.125
TINY_TILE = [16, 32, 32]  # as in conftest.py
PRESETS = ["deepis-lite", "deepis"]


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_matches_pytorch(exports, preset, batch):
    ckpt_path, result = exports.get(preset)
    model = load_checkpoint(ckpt_path).build()
    x = np.random.default_rng(batch).standard_normal((batch, 1, *TINY_TILE)).astype(np.float32)
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(ref).max() > 0.01  # a model whose output is not ~0
    y32 = run_onnxruntime(result.onnx_fp32, x)
    y16 = run_onnxruntime(result.onnx_fp16, x, basic_optimizations=True)
    assert y32.shape == y16.shape == (batch, 1, *TINY_TILE)
    assert y32.dtype == y16.dtype == np.float32
    r32 = compare_distance(ref, y32, HALF_PITCH_UM, FP32_TOLERANCE, "fp32", "random")
    r16 = compare_distance(ref, y16, HALF_PITCH_UM, FP16_TOLERANCE, "fp16", "random")
    assert r32.passed, r32.failures
    assert r16.passed, r16.failures
    assert r32.max_abs_um < 1e-4
    # FP16 is visibly less exact than FP32: the half-precision path really ran
    assert r16.max_abs_um > 10 * r32.max_abs_um


def test_export_report_and_manifest(exports):
    ckpt_path, result = exports.get("deepis-lite")
    assert [(r.model, r.inputs) for r in result.parity] == [
        ("fp32", "random"), ("fp32", "synthetic"), ("fp16", "random"), ("fp16", "synthetic")]
    assert all(r.passed for r in result.parity)
    manifest = read_manifest(result.out_dir)
    ckpt = load_checkpoint(ckpt_path)
    assert manifest["checkpoint"]["sha256"] == ckpt.sha256
    assert manifest["checkpoint"]["meta"]["voxel_size_um"] == [0.5, 0.25, 0.25]
    assert manifest["checkpoint"]["meta"]["tile_zyx"] == TINY_TILE
    assert manifest["config"] == ckpt.config.to_dict()
    assert manifest["opset"] == 18
    assert {f["precision"] for f in manifest["files"]} == {"fp32", "fp16"}
    assert len(manifest["parity"]["results"]) == 4
    assert manifest["tools"]["onnxruntime"] != "not installed"
    assert manifest["tensorrt"] == "not requested"
    for path, precision in ((result.onnx_fp32, "fp32"), (result.onnx_fp16, "fp16")):
        meta = read_onnx_meta(path)
        assert meta["precision"] == precision
        assert meta["config"] == ckpt.config.to_dict()
        assert meta["ri_normalization"] == ckpt.meta["ri_normalization"]
        assert meta["voxel_size_um"] == [0.5, 0.25, 0.25] and meta["tile_zyx"] == TINY_TILE
        assert meta["medium_ri"] == 1.337
        assert meta["checkpoint_sha256"] == ckpt.sha256


def test_manifest_detects_modified_onnx(exports, tmp_path):
    _, result = exports.get("deepis-lite")
    copy = tmp_path / "copy"
    shutil.copytree(result.out_dir, copy)
    read_manifest(copy)
    fp16 = copy / result.onnx_fp16.name
    data = bytearray(fp16.read_bytes())
    data[-10] ^= 0xFF
    fp16.write_bytes(bytes(data))
    with pytest.raises(ExportError, match="does not match its sha256"):
        read_manifest(copy)
    fp16.unlink()
    with pytest.raises(ExportError, match="missing"):
        read_manifest(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(ExportError, match="corrupt manifest"):
        read_manifest(copy)


def test_fp16_graph_computes_in_half(exports):
    import onnx

    from deepis_rt.export.fp16 import float16_summary

    _, result = exports.get("deepis")
    proto = onnx.load(str(result.onnx_fp16))
    summary = float16_summary(proto)
    n_conv = sum(1 for n in proto.graph.node if n.op_type == "Conv")
    # every Conv's data and weight are FP16, except the output head's (kept in FP32 on purpose)
    assert summary["conv_inputs"] == {"float16": 2 * (n_conv - 1), "float": 2}
    assert summary["initializers"]["float16"] > 10 * summary["initializers"].get("float", 0)
    assert summary["io"] == {"inputs": ["float"], "outputs": ["float"]}
    head = read_onnx_meta(result.onnx_fp16)["fp16_keep_fp32_nodes"]
    assert len(head) == 1
    (head_node,) = [n for n in proto.graph.node if n.name == head[0]]
    assert head_node.op_type == "Conv" and head_node.output[0] == OUTPUT_NAME
    casts = [n for n in proto.graph.node if n.op_type == "Cast"]
    assert len(casts) == 2  # the input to FP16, the head's input back to FP32
    assert proto.graph.input[0].name == INPUT_NAME and proto.graph.output[0].name == OUTPUT_NAME
    # the FP32 file is untouched float32
    fp32 = float16_summary(onnx.load(str(result.onnx_fp32)))
    assert fp32["conv_inputs"] == {"float": 2 * n_conv}


def test_fp16_keep_fp32_ops_computes_those_in_float32(exports):
    import onnx

    from deepis_rt.export.fp16 import convert_to_fp16

    _, result = exports.get("deepis-lite")
    proto = onnx.load(str(result.onnx_fp32))
    half = convert_to_fp16(proto, keep_fp32_ops=("Resize",))
    x = np.random.default_rng(0).standard_normal((1, 1, *TINY_TILE)).astype(np.float32)
    y32 = run_onnxruntime(result.onnx_fp32, x)
    y = run_onnxruntime(half.SerializeToString(), x, basic_optimizations=True)
    assert np.abs(y - y32).max() < 0.05 * np.abs(y32).max()
    resize_inputs = {n.input[0] for n in half.graph.node if n.op_type == "Resize"}
    producers = {o: n for n in half.graph.node for o in n.output}
    assert all(producers[name].op_type == "Cast" for name in resize_inputs)


def test_trilinear_align_corners_agrees(tmp_path):
    """The classic export pitfall: trilinear up-sampling with align_corners=True."""
    import onnx

    from deepis_rt.export import export_onnx

    class Up(torch.nn.Module):
        def forward(self, x):
            # non-integer ratios, where align_corners=True and False differ most
            return torch.nn.functional.interpolate(x, size=(16, 48, 80), mode="trilinear", align_corners=True)

    path = export_onnx(Up(), tmp_path / "up.onnx", (16, 32, 32))
    x = np.random.default_rng(0).standard_normal((2, 1, 16, 32, 32)).astype(np.float32)
    y = run_onnxruntime(path, x)
    xt = torch.from_numpy(x)
    ref = torch.nn.functional.interpolate(xt, size=(16, 48, 80), mode="trilinear", align_corners=True).numpy()
    wrong = torch.nn.functional.interpolate(xt, size=(16, 48, 80), mode="trilinear", align_corners=False).numpy()
    assert np.abs(y - ref).max() < 1e-5
    assert np.abs(y - wrong).max() > 0.1  # the test can tell the two conventions apart
    modes = [a.s for n in onnx.load(str(path)).graph.node if n.op_type == "Resize" for a in n.attribute
             if a.name == "coordinate_transformation_mode"]
    assert modes == [b"align_corners"]


def test_network_graph_uses_align_corners(exports):
    import onnx

    _, result = exports.get("deepis")
    proto = onnx.load(str(result.onnx_fp32))
    resizes = [n for n in proto.graph.node if n.op_type == "Resize"]
    assert len(resizes) == 4  # one per decoder level
    for node in resizes:
        attrs = {a.name: a for a in node.attribute}
        assert attrs["coordinate_transformation_mode"].s == b"align_corners"
        assert attrs["mode"].s == b"linear"


def test_parity_errors_are_detected():
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 2, (1, 1, 8, 16, 16)).astype(np.float32)
    ok = compare_distance(ref, ref + 1e-6, HALF_PITCH_UM, FP32_TOLERANCE, "fp32", "x")
    assert ok.passed and ok.cart_agreement == 1.0
    bad = compare_distance(ref, ref + 0.3, HALF_PITCH_UM, FP16_TOLERANCE, "fp16", "x")
    assert not bad.passed and bad.cart_agreement < 0.995
    assert any("max |error|" in f for f in bad.failures)
    nan = ref.copy()
    nan[0, 0, 0, 0, 0] = np.nan
    assert not compare_distance(ref, nan, HALF_PITCH_UM, FP32_TOLERANCE).passed
    check_parity([ok])
    with pytest.raises(ParityError, match="fp16 on x"):
        check_parity([ok, bad])


def test_export_refuses_a_graph_without_parity(exports, fake_onnx_export, tmp_path):
    # the exported graph computes another model (the other structure's weights): parity must fail
    fake_onnx_export("deepis")
    ckpt_path, _ = exports.get("deepis-lite")
    with pytest.raises(ParityError, match="parity outside the documented tolerance"):
        export_model(ckpt_path, out_dir=tmp_path, name="wrong", trt=False)
    assert not list((tmp_path / "wrong").glob("*.onnx"))
    assert not (tmp_path / "wrong" / "manifest.json").exists()


def test_two_cell_tomogram_is_plausible():
    ri = two_cell_tomogram((32, 64, 64), (0.5, 0.25, 0.25), medium_ri=1.337)
    assert ri.shape == (32, 64, 64) and ri.dtype == np.float32
    assert abs(float(np.median(ri[:, :4, :4])) - 1.337) < 0.003  # corners: medium
    centre = ri[16, 32]
    assert centre.max() > 1.37 and centre.min() < 1.34
    # two cells along X: the RI profile rises, stays high over both, and falls again
    inside = centre > 1.35
    assert inside[20] and inside[42] and not inside[0] and not inside[-1]


def test_export_result_is_json_clean(exports):
    _, result = exports.get("deepis-lite")
    text = result.manifest_path.read_text()
    assert json.loads(text) == result.manifest.to_dict()


def test_default_export_name_drops_checkpoint_suffixes():
    from deepis_rt.export.pipeline import default_export_name

    assert default_export_name("runs/epoch[0324]_losssum[0.053456].pth.tar") == "epoch[0324]_losssum[0.053456]"
    assert default_export_name("model.pth") == "model"
    assert default_export_name("model.pt") == "model"
    assert default_export_name("deepis.v2.pt") == "deepis.v2"
    assert default_export_name("model.onnx") == "model"
