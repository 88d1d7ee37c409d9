import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from deepis_rt.cli import main


def test_help_and_version_without_heavy_imports():
    # --help must not need TensorRT/CUDA; it should not even import torch
    code = (
        "import sys; sys.modules['tensorrt'] = None;"
        "from deepis_rt.cli import main;"
        "import pytest;"
        "\ntry:\n  main(['--help'])\nexcept SystemExit as e:\n  assert e.code == 0\n"
        "assert 'torch' not in sys.modules, 'torch imported by --help'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    res = CliRunner().invoke(main, ["--version"])
    assert res.exit_code == 0 and "deepis-rt" in res.output


@pytest.mark.parametrize("preset, params_m, gflops", [("deepis-lite", 0.64, 89.2), ("deepis", 4.41, 1206.2)])
def test_info_describes_fresh_checkpoint(tmp_path, preset, params_m, gflops):
    runner = CliRunner()
    out = tmp_path / f"{preset}.pt"
    res = runner.invoke(main, ["init", "--preset", preset, str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["info", "--json", str(out)])
    assert res.exit_code == 0, res.output
    desc = json.loads(res.output)
    assert desc["preset"] == preset
    assert round(desc["parameters"] / 1e6, 2) == params_m
    assert desc["gflops_per_tile"] == pytest.approx(gflops, abs=0.1)
    assert desc["voxel_size_um"] == [0.5, 0.25, 0.25]
    assert desc["training"]["status"] == "untrained"
    res = runner.invoke(main, ["info", str(out)])
    assert "parameters:" in res.output and "gflops_per_tile" in res.output


def test_info_on_missing_or_unknown_path_is_one_clear_line(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["info", str(tmp_path / "nope.pt")])
    assert res.exit_code == 2
    assert "no such file" in res.output and "Traceback" not in res.output
    (tmp_path / "x.txt").write_text("hi")
    res = runner.invoke(main, ["info", str(tmp_path / "x.txt")])
    assert res.exit_code == 2 and "not a file deepis-rt can describe" in res.output


def test_missing_dependency_names_extra(monkeypatch):
    from deepis_rt._optional import import_optional
    from deepis_rt.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'deepis-rt\[tensorrt\]'"):
        import_optional("tensorrt")


@pytest.mark.parametrize("module", ["onnx", "onnxruntime", "matplotlib"])
def test_missing_core_dependency_names_no_extra(monkeypatch, module):
    # a core dependency comes with deepis-rt itself: no extra would bring it back
    from deepis_rt._optional import import_optional
    from deepis_rt.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingDependencyError, match=rf"pip install {module} \(a dependency of deepis-rt") as info:
        import_optional(module)
    assert "deepis-rt[" not in str(info.value)


def test_missing_onnxslim_names_the_simplify_extra(monkeypatch):
    from deepis_rt._optional import import_optional
    from deepis_rt.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "onnxslim", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'deepis-rt\[simplify\]'"):
        import_optional("onnxslim")


def test_output_path_that_cannot_be_created_is_one_clear_line(tmp_path):
    # e.g. a typo in a parent folder, a read-only share, a file where a folder should be
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    res = CliRunner().invoke(main, ["synth", str(blocker / "video"), "--frames", "1", "--shape", "16", "32", "32",
                                    "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and not isinstance(res.exception, OSError)
    line = res.output.strip().splitlines()[-1]
    assert line.startswith("deepis-rt: error: ") and str(blocker) in line


@pytest.mark.parametrize("voxel", [["nan", "0.25", "0.25"], ["inf", "0.25", "0.25"]])
def test_synth_refuses_a_voxel_size_that_is_not_a_number(tmp_path, voxel):
    res = CliRunner().invoke(main, ["synth", str(tmp_path / "v"), "--frames", "1", "--shape", "16", "32", "32",
                                    "--voxel-size", *voxel, "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "voxel size must be three positive numbers" in res.output


@pytest.mark.parametrize("content", [b"", b"hello\n", b"II*\x00" + bytes(range(256)) * 4])
def test_info_on_an_onnx_file_that_is_not_a_model_is_one_clear_line(tmp_path, content):
    path = tmp_path / "model.onnx"  # empty, text, a TIFF renamed
    path.write_bytes(content)
    res = CliRunner().invoke(main, ["info", str(path)])
    assert res.exit_code == 2, res.output
    assert "not a readable ONNX model" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("option, message", [
    (["--lr", "nan"], "lr"), (["--lr", "0"], "lr"), (["--lr", "-0.001"], "lr"),
    (["--max-minutes", "-1"], "max_minutes"), (["--max-minutes", "0"], "max_minutes"),
])
def test_train_refuses_options_out_of_range(tmp_path, option, message):
    out = tmp_path / "ckpt.pt"
    res = CliRunner().invoke(main, ["train", "--synthetic", "--out", str(out), "--steps", "1", "--val-frames", "0",
                                    "--no-progress", *option])
    assert res.exit_code == 2, res.output
    assert f"deepis-rt: error: train: {message}" in res.output and not out.exists()


def test_serve_triton_refuses_a_folder_without_models(tmp_path):
    """tritonserver would start on an empty repository and serve nothing: said at once instead."""
    from click.testing import CliRunner

    from deepis_rt.cli import main

    res = CliRunner().invoke(main, ["serve-triton", str(tmp_path)])
    assert res.exit_code == 2 and "no model here" in res.output and "--triton" in res.output
