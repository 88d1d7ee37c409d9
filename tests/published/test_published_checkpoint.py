"""Checkpoints of the published DeepIS code: recognised by shape, exact output in (Z, Y, X), strict refusals.

The published network is re-implemented independently in ``unet3d_glob_reference.py`` (original
names, original (Y, X, Z) layout) and saved the way ``CNNTrainer.save`` does.
"""

from __future__ import annotations

import argparse
import json
import pickle

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from log_capture import captured_warnings
from unet3d_glob_reference import make_reference, reference_output_zyx, save_like_cnntrainer

from deepis_rt.checkpoint import load_checkpoint
from deepis_rt.cli.main import main
from deepis_rt.errors import CheckpointError, UnsafeCheckpointError
from deepis_rt.model import PRESETS, build_model

FS, TF = 16, 4  # a small published network: widths 4..64, skip width 4
TILE = (16, 32, 32)
MODEL_TILE = (64, 128, 128)  # (Z, Y, X): what a published file is run on until converted with --tile


def _kept_parameters(net) -> int:
    return sum(p.numel() for name, p in net.module.named_parameters()
               if not name.startswith(("ConBR0.", "classifier3.", "classifier4.")))





@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """(DataParallel reference network, its CNNTrainer-style .pth.tar)."""
    folder = tmp_path_factory.mktemp("published")
    net = make_reference(FS, TF, seed=4)
    path = save_like_cnntrainer(net, folder / "epoch[0323]_losssum[0.053456].pth.tar")
    return net, path


def _x(seed=0, shape=TILE, n=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, 1, *shape), generator=g)


def _rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_file_is_what_cnntrainer_saves(published):
    _, path = published
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"model_type", "start_epoch", "network", "optimizer", "best_metric"}
    assert all(k.startswith("module.") for k in payload["network"])
    assert payload["optimizer"]["state"]  # Adam moments of a real step


def test_load_infers_architecture_and_drops_training_parts(published):
    net, path = published
    ckpt = load_checkpoint(path)
    assert ckpt.config == PRESETS["deepis-2020"].replace(feature_scale=FS, trans_feature=TF)
    assert ckpt.config.widths == (4, 8, 16, 32, 64) and ckpt.config.skip_width == TF
    assert not any(k.startswith(("module.", "ConBR0", "classifier")) for k in ckpt.state_dict)
    model = ckpt.build()
    assert sum(p.numel() for p in model.parameters()) == _kept_parameters(net)
    src = ckpt.meta["source"]
    assert (src["epoch"], src["start_epoch"], src["model_type"]) == (323, 324, "unet3d_glob")
    assert src["best_metric"] == pytest.approx(0.053456)
    assert set(ckpt.meta["assumed"]) == {"ri_normalization", "distance_output", "voxel_size_um"}


@pytest.mark.slow
def test_torch_and_onnxruntime_equal_the_published_network(published, tmp_path):
    """Raw output of both runners = the independent network's output on the same voxels (from (Y, X, Z))."""
    from deepis_rt.backends import OnnxRuntimeRunner, TorchRunner
    from deepis_rt.runtime.backends import onnx_for_checkpoint
    from deepis_rt.runtime.source import resolve_source

    net, path = published
    x = _x(1, MODEL_TILE, n=1)  # the tile the published code trained on: 128 x 128 x 64 (Y, X, Z)
    ref = reference_output_zyx(net, x).numpy()
    assert np.abs(ref).max() > 0.05  # a non-trivial output
    with TorchRunner(load_checkpoint(path), device="cpu") as runner:
        out_torch = runner.infer(x.numpy())
    assert _rel_err(out_torch, ref) < 1e-5
    onnx = onnx_for_checkpoint(resolve_source(path), tmp_path / "cache")
    with OnnxRuntimeRunner(onnx, provider="cpu") as runner:
        out_ort = runner.infer(x.numpy())
    assert _rel_err(out_ort, ref) < 1e-5
    # a non-cubic tile checks that no axis was mixed up
    x2 = _x(2, (32, 16, 48), n=1)
    with TorchRunner(load_checkpoint(path), device="cpu") as runner:
        assert _rel_err(runner.infer(x2.numpy()), reference_output_zyx(net, x2).numpy()) < 1e-5


@pytest.mark.slow
def test_load_api_segments_with_the_published_file(published, caplog):
    import deepis_rt

    net, path = published
    with captured_warnings(caplog):
        seg = deepis_rt.load(path, backend="torch", analyze=False)
        deepis_rt.load(path, backend="torch", analyze=False)
    notices = [r for r in caplog.records if "ASSUMED" in r.getMessage() and str(path) in r.getMessage()]
    assert len(notices) <= 1  # once per process (an earlier test may already have shown it)
    vol = np.random.default_rng(0).normal(1.36, 0.01, MODEL_TILE).astype(np.float32)
    result = seg.segment(vol, voxel_size_um=(0.5, 0.25, 0.25))
    ref = reference_output_zyx(net, torch.from_numpy(vol)[None, None]).numpy()[0, 0]
    assert _rel_err(result.distance, ref) < 1e-5  # assumed: input = RI as is, output in um


def test_assumptions_announced_once(tmp_path, caplog):
    net = make_reference(FS, TF, seed=9)
    path = save_like_cnntrainer(net, tmp_path / "m.pth.tar", train_step=False)
    with captured_warnings(caplog):
        load_checkpoint(path)
        load_checkpoint(path)
    notices = [r.getMessage() for r in caplog.records if "ASSUMED" in r.getMessage()]
    assert len(notices) == 1
    assert "(RI - 0.0) / 1.0" in notices[0] and "deepis-rt convert m.pth.tar" in notices[0]
    assert "--output-unit" in notices[0] and "--voxel-size" in notices[0]


def test_info_names_published_checkpoint(published):
    net, path = published
    res = CliRunner().invoke(main, ["info", "--json", str(path)])
    assert res.exit_code == 0, res.output
    desc = json.loads(res.output[res.output.index("{"):])
    assert desc["kind"].startswith("published-DeepIS checkpoint")
    assert f"feature_scale={FS}, trans_feature={TF}" in desc["architecture"]
    assert desc["parameters"] == _kept_parameters(net)
    assert desc["gflops_per_tile"] > 0 and desc["tile_zyx"] == [64, 128, 128]
    assert desc["epoch"] == 323 and desc["best_metric"] == pytest.approx(0.053456)
    assert set(desc["unknown"]) == {"input scaling", "output unit", "voxel size"}
    assert desc["not_used"] == ["ConBR0", "classifier3", "classifier4", "optimizer"]
    human = CliRunner().invoke(main, ["info", str(path)])
    assert "published-DeepIS checkpoint" in human.output and "epoch: 323" in human.output


@pytest.mark.parametrize("fs, tf", [(2, 32), (16, 32), (8, 16)])
def test_variants_inferred_from_shapes(tmp_path, fs, tf):
    net = make_reference(fs, tf, seed=fs)
    path = save_like_cnntrainer(net, tmp_path / "v.pth.tar", train_step=False)
    ckpt = load_checkpoint(path)
    assert (ckpt.config.feature_scale, ckpt.config.trans_feature) == (fs, tf)
    assert ckpt.config.widths == tuple(w // fs for w in (64, 128, 256, 512, 1024))
    if fs >= 8:  # the full-width variant's output check is left to the smaller ones (time)
        x = _x(3, n=1)
        out = ckpt.build()(x).detach().numpy()
        assert _rel_err(out, reference_output_zyx(net, x).numpy()) < 1e-5


def test_legacy_serialisation_and_bare_state_dict_accepted(tmp_path):
    """Files written by PyTorch < 1.6 (no zip) and a bare ``network`` state dict (.pth) load the same."""
    net = make_reference(FS, TF, seed=5)
    legacy = save_like_cnntrainer(net, tmp_path / "old.pth.tar", train_step=False,
                                  _use_new_zipfile_serialization=False)
    bare = tmp_path / "net.pth"
    torch.save(net.state_dict(), bare)
    x = _x(4, n=1)
    ref = reference_output_zyx(net, x).numpy()
    for path in (legacy, bare):
        ckpt = load_checkpoint(path)
        assert _rel_err(ckpt.build()(x).detach().numpy(), ref) < 1e-5
    assert load_checkpoint(bare).meta["source"]["epoch"] is None


@pytest.mark.parametrize("prefix", ["module._orig_mod.", "_orig_mod.module.", "_orig_mod."])
def test_torch_compile_prefix_accepted(published, tmp_path, prefix):
    """The published code trained under torch.compile (with or without DataParallel) saves '_orig_mod.' keys."""
    net, path = published
    payload = torch.load(path, weights_only=True)
    payload["network"] = {prefix + k[len("module."):]: v for k, v in payload["network"].items()}
    torch.save(payload, tmp_path / "compiled.pth.tar")
    ckpt = load_checkpoint(tmp_path / "compiled.pth.tar")
    assert ckpt.config == load_checkpoint(path).config
    x = _x(6, n=1)
    assert _rel_err(ckpt.build()(x).detach().numpy(), reference_output_zyx(net, x).numpy()) < 1e-5


def test_truncated_file_refused(published, tmp_path):
    _, path = published
    cut = tmp_path / "cut.pth.tar"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(cut)


def test_renamed_key_refused_naming_it(published, tmp_path):
    _, path = published
    payload = torch.load(path, weights_only=True)
    net = payload["network"]
    payload["network"] = {k.replace("gcn3.conv_l2", "gcn3.conv_lx"): v for k, v in net.items()}
    torch.save(payload, tmp_path / "renamed.pth.tar")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "renamed.pth.tar")
    msg = str(err.value)
    assert "'module.gcn3.conv_l2.weight' is missing" in msg
    assert "expected shape (4, 4, 1, 1, 7)" in msg  # (Y, X, Z) layout: the Z-wide convolution


def test_wrong_shape_refused_with_expected_and_found(published, tmp_path):
    _, path = published
    payload = torch.load(path, weights_only=True)
    payload["network"]["module.layer2.blocks.1.conv3.0.weight"] = torch.zeros(8, 8, 3, 3, 3)
    torch.save(payload, tmp_path / "shape.pth.tar")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "shape.pth.tar")
    msg = str(err.value)
    assert "'module.layer2.blocks.1.conv3.0.weight' has shape (8, 8, 3, 3, 3)" in msg
    assert "expected shape (4, 4, 3, 3, 3)" in msg and "feature_scale=16, trans_feature=4" in msg
    # neither format: a tensor dict of other keys names the first key it lacks
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="'module.conv1.conv1.0.weight' missing"):
        load_checkpoint(tmp_path / "other.pth")


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("legacy", [False, True])
def test_pickled_object_in_published_file_refused_and_nothing_runs(published, tmp_path, legacy):
    _, path = published
    payload = torch.load(path, weights_only=True)
    target = tmp_path / "pwned.txt"
    payload["optimizer"]["param_groups"][0]["hook"] = _Evil(str(target))
    evil = tmp_path / "evil.pth.tar"
    torch.save(payload, evil, _use_new_zipfile_serialization=not legacy)
    assert not target.exists()
    with pytest.raises(UnsafeCheckpointError, match="weights_only"):
        load_checkpoint(evil)
    assert not target.exists()
    with open(tmp_path / "plain.pth.tar", "wb") as f:
        pickle.dump({"network": _Evil(str(target))}, f)
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "plain.pth.tar")
    assert not target.exists()


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("extra, named", [
    ({"best_metric": np.float64(0.053456)}, "multiarray.scalar"),  # a loss computed with numpy
    ({"history": np.zeros(3)}, "multiarray._reconstruct"),
    ({"args": argparse.Namespace(lr=1e-4, feature_scale=16)}, "argparse.Namespace"),
])
def test_refusal_names_the_blocking_object_and_what_to_do(published, tmp_path, legacy, extra, named):
    """weights_only refuses the whole file for one numpy value or Namespace: the message says which and how to re-save."""
    _, path = published
    payload = torch.load(path, weights_only=True)
    payload.update(extra)
    blocked = tmp_path / "extra.pth.tar"
    torch.save(payload, blocked, _use_new_zipfile_serialization=not legacy)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_checkpoint(blocked)
    msg = str(err.value)
    assert named in msg and "weights_only=True" in msg and "nothing in it was run" in msg
    assert "torch.save(" in msg and "'network'" in msg  # how to re-save only the weights
    assert "\x1b" not in msg and "Weights only load failed" not in msg  # not torch's terminal text


def test_deepis_2020_preset_structure():
    cfg = PRESETS["deepis-2020"]
    assert (cfg.feature_scale, cfg.trans_feature) == (1, 64)
    assert cfg.widths == (64, 128, 256, 512, 1024) and cfg.gcn_kernels == (1, 7, 7, 7, 3)
    with torch.device("meta"):
        model = build_model("deepis-2020")
        reference = make_reference(1, 64).module
    kept = sum(p.numel() for n, p in reference.named_parameters()
               if not n.startswith(("ConBR0.", "classifier3.", "classifier4.")))
    assert sum(p.numel() for p in model.parameters()) == kept == 9_247_681
    assert sum(p.numel() for p in reference.parameters()) == 9_584_071  # "about 9.58 M" with the unused parts
    names = {n for n, _ in model.named_parameters()}
    assert {"conv1.conv2.0.weight", "layer4.blocks.0.proj.0.weight", "gcn5.conv_r3.bias", "ConBR1.conv3.weight",
            "final.0.weight"} <= names
    assert "ConBR0.conv1.weight" not in names
    # GCN kernels run along the same physical axes as in the published (Y, X, Z) code
    gcn = dict(model.gcn2.named_parameters())
    assert tuple(gcn["conv_l1.weight"].shape[2:]) == (1, 7, 1)  # Y
    assert tuple(gcn["conv_l2.weight"].shape[2:]) == (7, 1, 1)  # Z
    assert tuple(gcn["conv_r1.weight"].shape[2:]) == (1, 1, 7)  # X


def test_config_fields_of_deepis_2020():
    from deepis_rt.errors import ConfigError
    from deepis_rt.model import ModelConfig

    cfg = ModelConfig(architecture="deepis-2020", feature_scale=4, trans_feature=32)
    assert cfg.widths == (16, 32, 64, 128, 256) and cfg.skip_width == 32
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert "architecture" not in PRESETS["deepis"].to_dict()  # unchanged dicts for existing checkpoints
    with pytest.raises(ConfigError, match="contradicts"):
        ModelConfig(architecture="deepis-2020", feature_scale=4, trans_feature=32, widths=(8, 16, 32, 64, 128))
    with pytest.raises(ConfigError, match="feature_scale"):
        ModelConfig(architecture="deepis-2020", trans_feature=32)
    with pytest.raises(ConfigError, match="belongs to architecture"):
        ModelConfig(feature_scale=2)
    with pytest.raises(ConfigError, match="fewer than 2 channels"):
        ModelConfig(architecture="deepis-2020", feature_scale=64, trans_feature=4)


def test_deepis_rt_format_mismatch_names_first_key(tmp_path):
    from deepis_rt.checkpoint import save_checkpoint

    model = build_model("deepis-2020", feature_scale=16, trans_feature=4)
    path = save_checkpoint(tmp_path / "c.pt", model)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["gcn2.conv_l1.weight"] = torch.zeros(4, 8, 7, 1, 1)  # Z-wide instead of Y-wide
    payload.pop("checksum")
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"key 'gcn2.conv_l1.weight' has shape \(4, 8, 7, 1, 1\), "
                                              r"expected \(4, 8, 1, 7, 1\)"):
        load_checkpoint(path)
