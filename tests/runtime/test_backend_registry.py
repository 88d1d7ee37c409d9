"""The backend registry: a backend registered from outside the package (here, from the tests) is seen
by ``load()``, by ``auto``, by the benchmark and by every CLI ``--backend``; names, aliases and
precision rules come from the one table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import deepis_rt
from deepis_rt.backends import FakeRunner, registry
from deepis_rt.backends.spec import BackendSpec, RunnerRequest
from deepis_rt.cli import main
from deepis_rt.cli.backend_option import BackendName
from deepis_rt.errors import BackendError, ConfigError

GAIN = 3.0


def _fake_factory(request: RunnerRequest) -> FakeRunner:
    runner = FakeRunner(gain=GAIN)
    runner.name = "fake-cpu"
    _fake_factory.requests.append(request)  # type: ignore[attr-defined]
    return runner


_fake_factory.requests = []  # type: ignore[attr-defined]


def _spec(probe=lambda request: None) -> BackendSpec:
    # adding a backend: one module with a factory and a probe (here, this test module) plus this entry
    return BackendSpec(name="fake-cpu", device="cpu", precisions=("fp32",), probe=probe, factory=_fake_factory,
                       family="fake", auto_rank=0, aliases=("fake-old",), summary="a point-wise stand-in")


@pytest.fixture
def fake_backend():
    _fake_factory.requests.clear()  # type: ignore[attr-defined]
    spec = registry.register(_spec())
    yield spec
    registry.unregister(spec.name)
    assert "fake-cpu" not in registry.names()


def test_load_and_auto_choose_a_registered_backend(fake_backend, tiny_checkpoint, make_ri):
    assert registry.auto_order()[0] == "fake-cpu"
    seg = deepis_rt.load(tiny_checkpoint, analyze=False, num_threads=1)
    assert seg.backend == "fake-cpu" and str(seg.backend_report[0]) == "fake-cpu: chosen (fastest available)"
    request = _fake_factory.requests[-1]  # type: ignore[attr-defined]
    assert request.options == {"num_threads": 1} and request.model.tile_zyx == tuple(seg.tile_zyx)
    volume = make_ri(tuple(seg.tile_zyx))
    expected = GAIN * np.tanh(seg.normalization.apply(volume))  # what the fake runner computes
    np.testing.assert_allclose(seg.segment(volume).distance, expected, rtol=1e-5, atol=1e-5)
    assert seg.describe()["model"]["sha256"] and seg.describe()["model"]["kind"] == "checkpoint"
    for name in ("fake-cpu", "fake-old", "fake"):  # its name, its alias, its family
        assert deepis_rt.load(tiny_checkpoint, backend=name, analyze=False).backend == "fake-cpu"


def test_an_unavailable_registered_backend_is_skipped_with_its_reason(tiny_checkpoint, monkeypatch):
    from deepis_rt.backends import facts

    for fact in ("cuda_available", "tensorrt_available", "openvino_available"):  # auto falls back to torch-cpu
        monkeypatch.setattr(facts, fact, lambda: False)
    monkeypatch.setattr(facts, "ort_providers", lambda: [])
    registry.register(_spec(probe=lambda request: "needs the fake accelerator (pip install fake)"))
    try:
        with pytest.raises(BackendError, match=r"fake-cpu: skipped \(needs the fake accelerator"):
            deepis_rt.load(tiny_checkpoint, backend="fake-cpu")
        seg = deepis_rt.load(tiny_checkpoint, backend="auto", analyze=False)
        assert seg.backend == "torch-cpu" and "fake-cpu: skipped" in str(seg.backend_report[0])
        seg.close()
    finally:
        registry.unregister("fake-cpu")


def test_cli_backend_choices_follow_the_registry(fake_backend):
    for command in ("stream", "batch", "demo"):
        help_text = CliRunner().invoke(main, [command, "--help"]).output
        assert "fake-cpu" in help_text and "onnxruntime-cuda" in help_text, command
        assert ("triton" in help_text) == (command != "demo"), command
    assert BackendName().convert("fake-old", None, None) == "fake-old"
    result = CliRunner().invoke(main, ["stream", "--source", ".", "--backend", "tpu"])
    assert result.exit_code == 2 and "'tpu' is not one of" in result.output and "fake-cpu" in result.output


@pytest.mark.slow  # a few seconds: the CPU peak, the PyTorch baseline and the fake backend
def test_bench_measures_a_registered_backend(fake_backend, tmp_path, tiny_overrides):
    import torch

    from deepis_rt.checkpoint import save_checkpoint
    from deepis_rt.model import build_model

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "tiny.pt", build_model("deepis-lite", **tiny_overrides), preset="deepis-lite")
    out = tmp_path / "r.json"
    args = ["bench", "--model", str(ckpt), "--backends", "fake-old", "--batch", "1", "--frames", "1", "--warmup", "0",
            "--quick", "--threads", "1", "--tile", "16", "32", "32", "--cache-dir", str(tmp_path / "c"), "--json", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    rows = {r["backend"]: r for r in json.loads(out.read_text())["models"][0]["rows"]}
    assert set(rows) == {"torch-cpu", "fake-cpu"}  # the baseline is always measured
    assert rows["fake-cpu"]["status"] == "ok" and rows["fake-cpu"]["throughput_fps"] > 0


def test_names_aliases_and_families():
    assert registry.candidates("onnxruntime-gpu") == ("onnxruntime-cuda",)  # the old name still works
    assert registry.candidates("torch") == ("torch-cuda", "torch-cpu")
    assert registry.candidates("auto") == registry.auto_order()
    assert "triton" not in registry.auto_order() and "triton" in registry.choices()
    assert "triton" not in registry.choices(remote=False)
    with pytest.raises(ConfigError, match="unknown backend 'tpu'"):
        registry.candidates("tpu")
    for taken in ("torch", "onnxruntime-gpu", "tensorrt", "auto"):  # a family, an alias, a backend, auto
        with pytest.raises(ConfigError, match="is taken"):
            registry.register(_spec().__class__(**{**_spec().__dict__, "name": taken, "aliases": ()}))
    with pytest.raises(ValueError, match="device must be one of"):
        BackendSpec(name="x", device="tpu", precisions=("fp32",), probe=lambda r: None, factory=_fake_factory)


def test_precision_rules_come_from_the_specs():
    assert registry.precision_refusal("openvino-cpu", "bf16") is None
    assert "runs on openvino-cpu only" in registry.precision_refusal("torch-cpu", "bf16")
    assert "not 'fp16'" in registry.precision_refusal("torch-cpu", "fp16")
    assert "not 'fp16'" in registry.precision_refusal("openvino-cpu", "fp16")
    assert registry.precision_refusal("onnxruntime-cpu", "fp16") is None  # its CPU provider computes FP32
    assert registry.precision_refusal("tensorrt", None) is None


def test_the_backend_layer_imports_nothing_above_it():
    """Runners get what they need passed in: no import (top-level or inside a function) from the
    backend layer into checkpoints, models, export, runtime, stream, cluster, bench or the CLI."""
    import ast
    from pathlib import Path

    import deepis_rt.backends

    above = ("deepis_rt.checkpoint", "deepis_rt.published", "deepis_rt.model", "deepis_rt.export",
             "deepis_rt.runtime", "deepis_rt.stream", "deepis_rt.cluster", "deepis_rt.bench", "deepis_rt.cli",
             "deepis_rt.train", "deepis_rt.napari")
    root = Path(deepis_rt.backends.__file__).parent
    upward = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom)
                     else [])
            upward += [f"{path.relative_to(root)}:{node.lineno} {n}" for n in names
                       if any(n == a or n.startswith(a + ".") for a in above)]
    assert len(list(root.rglob("*.py"))) > 20 and upward == []
