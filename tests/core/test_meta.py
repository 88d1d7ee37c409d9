"""ModelMeta and ExportManifest: defaults defined once, unknown fields refused or kept by who wrote them."""

import json
import logging

import pytest
import torch

from deepis_rt.checkpoint import DEFAULT_META, load_checkpoint, save_checkpoint
from deepis_rt.core.meta import MEDIUM_RI, TILE_ZYX, ExportManifest, ModelMeta, RINormalization
from deepis_rt.errors import CheckpointError, ConfigError, ExportError
from deepis_rt.model import build_model


@pytest.fixture(scope="module")
def tiny(tiny_overrides):
    torch.manual_seed(0)
    return build_model("deepis-lite", **tiny_overrides).eval()


def test_defaults_are_the_stored_defaults():
    meta = ModelMeta()
    assert meta.to_dict() == DEFAULT_META
    assert meta.tile_zyx == TILE_ZYX and meta.ri_normalization == RINormalization(MEDIUM_RI, 0.02)
    # read like the dicts of earlier versions
    assert meta["tile_zyx"] == list(TILE_ZYX) and meta.get("assumed") is None and "assumed" not in meta
    assert dict(meta) == DEFAULT_META and meta == DEFAULT_META


def test_round_trip_keeps_every_field():
    stored = {**DEFAULT_META, "voxel_size_um": [0.4, 0.2, 0.2], "assumed": [],
              "distance_output": {"unit": "voxel", "scale": 2.0, "folded_factor_um": 0.4, "folded_into": "head"},
              "source": {"format": "x"}, "converted_from": {"file": "a.pth.tar", "sha256": "0" * 64},
              "uncertainty": {"network": {"rel": 0.1, "resolution_voxels": 0.0, "noise_gain": 1.0, "ambiguity": 2.0,
                                          "fitted_on": "x"}}}
    assert ModelMeta.from_dict(stored).to_dict() == stored


@pytest.mark.parametrize("bad, field", [
    ({"tile_zyx": [64, 128]}, "tile_zyx"),
    ({"voxel_size_um": [0.5, -0.25, 0.25]}, "voxel_size_um"),
    ({"ri_normalization": {"offset": 1.337, "scale": 0}}, "ri_normalization.scale"),
    ({"medium_ri": "water"}, "medium_ri"),
    ({"distance_output": {"unit": "mm"}}, "distance_output.unit"),
])
def test_wrong_values_are_named(bad, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        ModelMeta.from_dict(bad)


def test_unknown_field_refused_from_a_caller(tmp_path, tiny):
    with pytest.raises(ConfigError, match=r"unknown field 'voxel_size'.*voxel_size_um.*'training' or 'metrics'"):
        save_checkpoint(tmp_path / "c.pt", tiny, meta={"voxel_size": [0.5, 0.25, 0.25]})
    assert not (tmp_path / "c.pt").exists()
    with pytest.raises(ConfigError, match=r"ri_normalization: unknown field 'offest'"):
        ModelMeta.from_dict({"ri_normalization": {"offest": 1.33, "scale": 0.02}})


def test_unknown_field_of_an_earlier_version_kept_with_a_warning(tmp_path, tiny, caplog):
    path = save_checkpoint(tmp_path / "c.pt", tiny, meta={"tile_zyx": [16, 32, 32]})
    payload = torch.load(path, weights_only=True)
    payload["meta"]["calibration"] = {"lamp": "old"}  # written by an earlier version; checksum over it
    from deepis_rt.checkpoint import _checksum

    payload["checksum"] = _checksum(payload["config"], payload["preset"], payload["meta"], payload["state_dict"])
    torch.save(payload, path)
    with caplog.at_level(logging.WARNING, logger="deepis_rt.core.meta"):
        ckpt = load_checkpoint(path)
    assert "'calibration'" in caplog.text and "kept" in caplog.text
    assert ckpt.meta.extra == {"calibration": {"lamp": "old"}} and ckpt.meta["calibration"] == {"lamp": "old"}
    # and written back unchanged
    again = load_checkpoint(save_checkpoint(tmp_path / "d.pt", ckpt.state_dict, config=ckpt.config, meta=ckpt.meta))
    assert again.meta.extra == {"calibration": {"lamp": "old"}}


def test_bad_field_of_a_file_is_a_checkpoint_error(tmp_path, tiny):
    path = save_checkpoint(tmp_path / "c.pt", tiny)
    payload = torch.load(path, weights_only=True)
    payload["meta"]["tile_zyx"] = [0, 32, 32]
    payload.pop("checksum")
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"c\.pt: meta: tile_zyx must be three positive integers"):
        load_checkpoint(path)


def test_bools_stay_bools(tmp_path, tiny):
    path = save_checkpoint(tmp_path / "c.pt", tiny, meta={"training": {"stopped_early": False}})
    assert load_checkpoint(path).meta.training["stopped_early"] is False


MINIMAL = {"format": "deepis-rt-export", "format_version": 1, "name": "tiny",
           "files": [{"path": "tiny.fp32.onnx", "precision": "fp32", "sha256": "0" * 64}], "engine": None}


def test_manifest_round_trip_and_lookup():
    manifest = ExportManifest.from_dict(MINIMAL)
    assert manifest.file("fp32").path == "tiny.fp32.onnx" and manifest.file("fp16") is None
    assert manifest.tensorrt == "not requested" and manifest.model_meta == ModelMeta()
    assert ExportManifest.from_dict(manifest.to_dict()) == manifest


def test_edited_manifest_with_an_unknown_field_is_refused(tmp_path):
    from deepis_rt.export.pipeline import load_manifest

    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({**MINIMAL, "enigne": None}))
    with pytest.raises(ExportError, match=r"manifest\.json: unknown field 'enigne'; the fields are"):
        load_manifest(folder, verify=False)
    files = [{**MINIMAL["files"][0], "sha": "x"}]
    (folder / "manifest.json").write_text(json.dumps({**MINIMAL, "files": files}))
    with pytest.raises(ExportError, match=r"files\[\]: unknown field 'sha'"):
        load_manifest(folder, verify=False)
