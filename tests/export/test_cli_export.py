"""``deepis-rt export`` and ``deepis-rt info`` on exports (the dynamo export replaced by a copy)."""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from deepis_rt.cli import main


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)


def test_export_prints_parity_table(exports, fake_onnx_export, tmp_path):
    ckpt, _ = exports.get("deepis-lite")
    res = CliRunner().invoke(main, ["export", str(ckpt), "--out", str(tmp_path), "--name", "m", "--no-trt",
                                    "--batch", "1:2:4", "--opset", "18"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert any(line.split()[:3] == ["model", "inputs", "N"] for line in lines if line.strip())
    rows = [line.split() for line in lines if line.startswith(("fp32", "fp16"))]
    assert [(r[0], r[1]) for r in rows] == [("fp32", "random"), ("fp32", "synthetic"),
                                            ("fp16", "random"), ("fp16", "synthetic")]
    assert all(r[-1] == "yes" for r in rows)
    assert "TensorRT: not requested" in res.output
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["batch_profile"]["opt"][0] == 2


def test_export_trt_explicit_without_tensorrt_fails_after_writing_onnx(exports, fake_onnx_export, no_tensorrt,
                                                                      tmp_path):
    ckpt, _ = exports.get("deepis-lite")
    res = CliRunner().invoke(main, ["export", str(ckpt), "--out", str(tmp_path), "--name", "m", "--trt"])
    assert res.exit_code == 2
    assert "pip install 'deepis-rt[tensorrt]'" in res.output
    assert "TensorRT Python package is not installed" in res.output
    assert "Traceback" not in res.output
    assert "fp16" in res.output  # the parity table was still printed
    assert (tmp_path / "m" / "m.fp32.onnx").is_file() and (tmp_path / "m" / "m.fp16.onnx").is_file()


def test_export_auto_without_tensorrt_succeeds(exports, fake_onnx_export, no_tensorrt, tmp_path):
    ckpt, _ = exports.get("deepis-lite")
    res = CliRunner().invoke(main, ["export", str(ckpt), "--out", str(tmp_path), "--no-fp16"])
    assert res.exit_code == 0, res.output
    assert "TensorRT: skipped" in res.output and "deepis-rt[tensorrt]" in res.output
    folder = tmp_path / ckpt.stem
    assert not list(folder.glob("*.fp16.onnx"))
    assert "fp16" not in [line.split()[0] for line in res.output.splitlines() if line.strip()]


def test_export_rejects_bad_batch(tmp_path):
    res = CliRunner().invoke(main, ["export", str(tmp_path / "x.pt"), "--batch", "4:1:2"])
    assert res.exit_code == 2 and "MIN:OPT:MAX" in res.output


def test_info_describes_onnx_and_export_folder(exports, tmp_path):
    _, result = exports.get("deepis-lite")
    runner = CliRunner()
    res = runner.invoke(main, ["info", "--json", str(result.onnx_fp16)])
    assert res.exit_code == 0, res.output
    desc = json.loads(res.output)
    assert desc["kind"] == "onnx"
    assert desc["weights_dtype"]["float16"] > 10 * desc["weights_dtype"].get("float", 0)
    assert desc["inputs"][0]["name"] == "tomogram" and desc["inputs"][0]["dtype"] == "float"
    assert desc["deepis_rt_meta"]["precision"] == "fp16"
    assert desc["deepis_rt_meta"]["voxel_size_um"] == [0.5, 0.25, 0.25]
    res = runner.invoke(main, ["info", "--json", str(result.out_dir)])
    desc = json.loads(res.output)
    assert desc["kind"] == "export" and desc["integrity"].startswith("ok")
    assert set(desc["parity"]) == {"fp32", "fp16"} and desc["parity"]["fp16"]["passed"]
    res = runner.invoke(main, ["info", str(result.out_dir / "manifest.json")])
    assert res.exit_code == 0 and "integrity: ok" in res.output
    res = runner.invoke(main, ["info", "--json", str(result.out_dir.parent)])
    desc = json.loads(res.output)
    assert desc["kind"] == "exports" and result.name in [e["name"] for e in desc["exports"]]
