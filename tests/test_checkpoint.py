import os
import pickle
import zipfile

import pytest
import torch

from deepis_rt.checkpoint import load_checkpoint, save_checkpoint
from deepis_rt.errors import CheckpointError, UnsafeCheckpointError
from deepis_rt.model import build_model


@pytest.fixture
def tiny_model(tiny_overrides):
    torch.manual_seed(1)
    model = build_model("deepis-lite", **tiny_overrides)
    # make BN running stats non-trivial so that they must round-trip too
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 1, 16, 16, 16))
    return model.eval()


def test_round_trip_bit_identical(tmp_path, tiny_model):
    path = save_checkpoint(tmp_path / "c.pt", tiny_model, meta={"voxel_size_um": (0.4, 0.2, 0.2)})
    ckpt = load_checkpoint(path)
    assert ckpt.config == tiny_model.config
    assert ckpt.voxel_size_um == (0.4, 0.2, 0.2)
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.no_grad():
        a = tiny_model(x)
        b = ckpt.build()(x)
    assert torch.equal(a, b)


def test_dataparallel_prefix_accepted(tmp_path, tiny_model):
    sd = {f"module.{k}": v for k, v in tiny_model.state_dict().items()}
    path = save_checkpoint(tmp_path / "dp.pt", sd, config=tiny_model.config)
    # also a file whose stored state dict still has the prefix (written by other code)
    payload = torch.load(path, weights_only=True)
    payload["state_dict"] = sd
    payload.pop("checksum")
    torch.save(payload, tmp_path / "raw.pt")
    for p in (path, tmp_path / "raw.pt"):
        model = load_checkpoint(p).build()
        x = torch.randn(1, 1, 16, 16, 16)
        with torch.no_grad():
            assert torch.equal(model(x), tiny_model(x))
    wrapped = torch.nn.DataParallel(tiny_model)
    load_checkpoint(save_checkpoint(tmp_path / "w.pt", wrapped))


def test_torch_compile_prefix_accepted(tmp_path, tiny_model):
    """torch.compile wraps the network (state dict keys '_orig_mod.'), alone or with DataParallel."""
    compiled = torch.compile(tiny_model)  # not run: wrapping is enough to rename the keys
    assert next(iter(compiled.state_dict())).startswith("_orig_mod.")
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.no_grad():
        ref = tiny_model(x)
    sd = compiled.state_dict()
    paths = [save_checkpoint(tmp_path / "c.pt", compiled),
             save_checkpoint(tmp_path / "sd.pt", sd, config=tiny_model.config),
             save_checkpoint(tmp_path / "dp.pt", torch.nn.DataParallel(compiled))]
    raw = torch.load(paths[0], weights_only=True)  # a file whose stored state dict still has the prefixes
    raw["state_dict"] = {f"module._orig_mod.{k}": v for k, v in raw["state_dict"].items()}
    raw.pop("checksum")
    torch.save(raw, tmp_path / "raw.pt")
    for path in paths + [tmp_path / "raw.pt"]:
        with torch.no_grad():
            assert torch.equal(load_checkpoint(path).build()(x), ref), path


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        # unpickling this would create a file
        return (open, (self.target, "w"))


def test_malicious_pickle_refused_and_nothing_runs(tmp_path, tiny_model):
    target = tmp_path / "pwned.txt"
    payload = {
        "format": "deepis-rt-checkpoint",
        "format_version": 1,
        "config": tiny_model.config.to_dict(),
        "state_dict": tiny_model.state_dict(),
        "meta": {"evil": _Evil(str(target))},
    }
    path = tmp_path / "evil.pt"
    torch.save(payload, path)
    assert not target.exists()
    with pytest.raises(UnsafeCheckpointError, match="weights_only"):
        load_checkpoint(path)
    assert not target.exists()


def test_plain_pickle_file_refused(tmp_path):
    target = tmp_path / "pwned2.txt"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump(_Evil(str(target)), f)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not target.exists()


def test_tampered_weights_detected(tmp_path, tiny_model):
    path = save_checkpoint(tmp_path / "c.pt", tiny_model)
    payload = torch.load(path, weights_only=True)
    name = next(iter(payload["state_dict"]))
    payload["state_dict"][name] = payload["state_dict"][name] + 1.0
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path)


def test_truncated_file_detected(tmp_path, tiny_model):
    path = save_checkpoint(tmp_path / "c.pt", tiny_model)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_byte_flip_in_tensor_data_detected(tmp_path, tiny_model):
    path = save_checkpoint(tmp_path / "c.pt", tiny_model)
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if "/data/" in n and not n.endswith(".pkl")]
        largest = max(names, key=lambda n: zf.getinfo(n).file_size)
        info = zf.getinfo(largest)
        offset = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw = bytearray(path.read_bytes())
    raw[offset + info.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_byte_flip_in_pickle_reported_as_possibly_corrupt(tmp_path, tiny_model):
    """A damaged data.pkl fails weights_only like a foreign object does; the message must not only blame objects."""
    path = save_checkpoint(tmp_path / "c.pt", tiny_model)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    raw = bytearray(path.read_bytes())
    local = info.header_offset  # name and extra-field lengths of the local header (its padding differs)
    offset = local + 30 + int.from_bytes(raw[local + 26:local + 28], "little") + int.from_bytes(
        raw[local + 28:local + 30], "little")
    assert raw[offset + 2] == ord("}")  # the payload dict's opcode, after PROTO 2
    raw[offset + 2] ^= 0xFF  # an opcode weights_only does not know
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert "corrupt" in str(err.value)


def test_wrong_format_and_versions(tmp_path, tiny_model):
    torch.save({"hello": 1}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="not a deepis-rt checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    torch.save(tiny_model.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="bare state dict"):
        load_checkpoint(tmp_path / "sd.pt")
    path = save_checkpoint(tmp_path / "c.pt", tiny_model)
    payload = torch.load(path, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="zip"):
        load_checkpoint(tmp_path / "text.pt")


def test_weights_not_matching_config(tmp_path, tiny_model):
    path = save_checkpoint(tmp_path / "c.pt", tiny_model)
    payload = torch.load(path, weights_only=True)
    payload["config"]["skip_width"] = 8
    payload.pop("checksum")
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="do not match the config"):
        load_checkpoint(path)


def test_meta_must_be_plain(tmp_path, tiny_model):
    with pytest.raises(CheckpointError, match="not a plain value"):
        save_checkpoint(tmp_path / "c.pt", tiny_model, meta={"bad": object()})
    assert not os.path.exists(tmp_path / "c.pt")


def test_meta_with_str_subclass_round_trips(tmp_path, tiny_model):
    path = save_checkpoint(tmp_path / "c.pt", tiny_model, meta={"training": {"torch": torch.__version__}})
    assert load_checkpoint(path).meta["training"]["torch"] == str(torch.__version__)


class _Scripted(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 1, 1)

    def forward(self, x):
        return self.conv(x)


def test_zip_files_that_are_not_checkpoints_named_as_what_they_are(tmp_path):
    """A TorchScript model (.pt of torch.jit.save) or a .npz is not 'corrupt', and weights_only=False is never advised."""
    scripted = tmp_path / "model.pt"
    torch.jit.script(_Scripted()).save(str(scripted))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(scripted)
    msg = str(err.value)
    assert "TorchScript" in msg and "state_dict()" in msg
    assert "corrupt" not in msg and "weights_only=False" not in msg and "weights_only` set to `False" not in msg
    np = pytest.importorskip("numpy")
    np.savez(tmp_path / "weights.npz", w=np.zeros(3))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "weights.npz")
    assert "not a PyTorch checkpoint" in str(err.value) and "corrupt" not in str(err.value)


@pytest.mark.parametrize("meta", [{"metrics": {"dice": torch.tensor(0.91)}}, {"tags": {"a", "b"}}, [1, 2]])
@pytest.mark.parametrize("keep_checksum", [True, False])
def test_meta_edited_with_non_plain_values_refused(tmp_path, tiny_model, meta, keep_checksum):
    """A file whose meta was edited by hand (a tensor metric, a set) is refused, not a TypeError (load or info)."""
    path = save_checkpoint(tmp_path / "c.pt", tiny_model)
    payload = torch.load(path, weights_only=True)
    payload["meta"] = dict(payload["meta"], **meta) if isinstance(meta, dict) else meta
    if not keep_checksum:
        payload.pop("checksum")
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"c\.pt: .*meta.*save_checkpoint"):
        load_checkpoint(path)
