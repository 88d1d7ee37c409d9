"""Safe DeepIS checkpoints.

A checkpoint is a plain dict saved with :func:`torch.save` and loaded **only**
with ``torch.load(weights_only=True)``, so loading never unpickles arbitrary
objects: a file that holds anything else is refused and nothing in it runs.

Layout (format version 1)::

    {
      "format": "deepis-rt-checkpoint",
      "format_version": 1,
      "config": {...},            # ModelConfig.to_dict()
      "preset": "deepis-lite",    # or None for a custom architecture
      "state_dict": {...},        # tensors only
      "meta": {...},              # ModelMeta.to_dict(): voxel_size_um, ri_normalization, tile_zyx, ...
      "checksum": "sha256:...",   # over config, preset, meta and every tensor's bytes
    }

``meta`` holds only JSON-like values (str, int, float, bool, None, lists, dicts); in memory it is a
:class:`~deepis_rt.core.meta.ModelMeta`. Fields that this version does not know (files of earlier
versions) are kept and written back unchanged, with a warning; a caller's ``meta`` must name known
fields only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deepis_rt import published
from deepis_rt.core.files import file_sha256
from deepis_rt.core.jsonable import json_safe
from deepis_rt.core.meta import ModelMeta
from deepis_rt.errors import CheckpointError, ConfigError, UnsafeCheckpointError
from deepis_rt.model import PRESETS, DeepISNetwork, ModelConfig, build_model
from deepis_rt.model.state_dict import strip_wrapper_prefixes

__all__ = [
    "Checkpoint",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_FORMAT_VERSION",
    "DEFAULT_META",
    "load_checkpoint",
    "save_checkpoint",
    "file_sha256",
    "bundled_checkpoint_path",
    "BUNDLED_CHECKPOINT_NAME",
]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "deepis-rt-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1

#: Metadata every checkpoint carries, as stored (the defaults of :class:`~deepis_rt.core.meta.ModelMeta`).
DEFAULT_META: dict[str, Any] = ModelMeta().to_dict()

_MAX_CHECKPOINT_BYTES = 4 * 1024**3  # absurdly large files are refused before reading

#: File name of the demo checkpoint shipped in ``deepis_rt/data/`` (see docs/model_card.md).
BUNDLED_CHECKPOINT_NAME = "deepis-lite-synthetic.pt"


def bundled_checkpoint_path() -> Path:
    """Path of the bundled demo checkpoint (``deepis-lite`` trained on synthetic data).

    It is for demos and tests, not for real microscope data (docs/model_card.md).

    Raises
    ------
    CheckpointError
        The file is not in the installed package.
    """
    path = Path(__file__).resolve().parent / "data" / BUNDLED_CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint | {path}: the bundled demo checkpoint is missing from this installation; "
            "reinstall deepis-rt, or train one with 'deepis-rt train --synthetic --out ckpt.pt' "
            "and pass its path"
        )
    return path


@dataclass
class Checkpoint:
    """A loaded checkpoint: architecture, weights and metadata."""

    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    #: Voxel size, input normalisation, tile, training record, ... (a dict is validated into one).
    meta: ModelMeta = field(default_factory=ModelMeta)
    preset: str | None = None
    path: Path | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.meta, ModelMeta):
            self.meta = ModelMeta.from_dict(self.meta, "Checkpoint meta")

    def build(self) -> DeepISNetwork:
        """The network with these weights, in eval mode on the CPU."""
        model = build_model(self.config)
        model.load_state_dict(self.state_dict, strict=True)
        return model.eval()

    @property
    def voxel_size_um(self) -> tuple[float, float, float]:
        return self.meta.voxel_size_um

    @property
    def tile_zyx(self) -> tuple[int, int, int]:
        return self.meta.tile_zyx


def _check_plain(value: Any, where: str) -> None:
    """Meta must be JSON-like so that it survives ``weights_only`` loading and JSON export."""
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CheckpointError(f"checkpoint meta {where}: non-finite float {value!r}")
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise CheckpointError(f"checkpoint meta {where}: key {k!r} is not a string")
            _check_plain(v, f"{where}.{k}")
        return
    raise CheckpointError(
        f"checkpoint meta {where}: {type(value).__name__} is not a plain value "
        "(use str, int, float, bool, None, lists and dicts)"
    )


def _checksum(config: dict, preset: str | None, meta: dict, state_dict: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"config": config, "preset": preset, "meta": meta}, sort_keys=True).encode())
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        # view as bytes: works for every dtype, including bfloat16
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()


def save_checkpoint(
    path: str | os.PathLike,
    model: DeepISNetwork | Mapping[str, torch.Tensor],
    config: ModelConfig | None = None,
    meta: Mapping[str, Any] | None = None,
    preset: str | None = None,
) -> Path:
    """Write a checkpoint atomically.

    Parameters
    ----------
    path : path-like
        Destination (``.pt``); parent folders are created.
    model : DeepISNetwork or state dict
        The network (its config is used) or a bare state dict (then give ``config``).
        ``nn.DataParallel``-wrapped and ``torch.compile``-d models are unwrapped.
    config : ModelConfig, optional
        Required when ``model`` is a state dict.
    meta : ModelMeta or mapping, optional
        Metadata; missing fields take the defaults of :class:`~deepis_rt.core.meta.ModelMeta`. A
        mapping may hold only the fields ModelMeta declares (free-form records go under
        ``training`` or ``metrics``).
    preset : str, optional
        Preset name; inferred when the config equals a preset.

    Returns
    -------
    Path
        The written file.
    """
    while not isinstance(model, DeepISNetwork):  # DataParallel / DDP (.module), torch.compile (._orig_mod)
        if isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        else:
            break
    if isinstance(model, DeepISNetwork):
        config = model.config if config is None else config
        state_dict = model.state_dict()
    else:
        if config is None:
            raise ConfigError("save_checkpoint: give config= when saving a bare state dict")
        state_dict = dict(model)
    state_dict = {k: v.detach().cpu().clone() for k, v in strip_wrapper_prefixes(state_dict).items()}
    if preset is None:
        preset = next((name for name, cfg in PRESETS.items() if cfg == config), None)
    if not isinstance(meta, ModelMeta):
        given = json_safe(dict(meta or {}), nonfinite_to_none=False)
        _check_plain(given, "meta")
        try:
            meta = ModelMeta.from_dict(given, "save_checkpoint | meta")
        except ConfigError as exc:
            raise ConfigError(f"{exc} (free-form records go under 'training' or 'metrics')") from None
    full_meta = json_safe(meta.to_dict(), nonfinite_to_none=False)
    _check_plain(full_meta, "meta")
    cfg = config.to_dict()
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "config": cfg,
        "preset": preset,
        "state_dict": state_dict,
        "meta": full_meta,
        "checksum": _checksum(cfg, preset, full_meta, state_dict),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    log.info("checkpoint: wrote %s", path)
    return path


def _migrate(payload: dict, where: str) -> dict:
    """Bring older formats up to the current one (only version 1 exists so far)."""
    version = payload.get("format_version")
    if version == CHECKPOINT_FORMAT_VERSION:
        return payload
    raise CheckpointError(
        f"{where}: checkpoint format version {version!r} is not supported by this deepis-rt "
        f"(supports {CHECKPOINT_FORMAT_VERSION}); upgrade deepis-rt or re-save the checkpoint"
    )


def load_checkpoint(path: str | os.PathLike, verify: bool = True, announce: bool = True) -> Checkpoint:
    """Load a checkpoint safely (``torch.load(weights_only=True)`` only).

    Parameters
    ----------
    path : path-like
        A file written by :func:`save_checkpoint` (or of the same layout), or a checkpoint of the
        published DeepIS training code (``CNNTrainer.save``'s ``.pth.tar``, or its bare
        ``network`` state dict), recognised by its tensor shapes (:mod:`deepis_rt.published`).
    verify : bool
        Check the stored checksum against the content (default True).
    announce : bool
        Log, once per file and process, what is only assumed about the model (``meta["assumed"]``:
        input scaling, output unit or voxel size a published-DeepIS file does not record).

    Raises
    ------
    UnsafeCheckpointError
        The file holds objects other than tensors and plain containers; nothing ran.
    CheckpointError
        Missing, truncated, tampered, of an unknown format, or not matching its config.
    """
    path = Path(path)
    where = f"checkpoint | {path}"
    if not path.is_file():
        raise CheckpointError(f"{where}: no such file")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{where}: empty file")
    if size > _MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{where}: {size / 1e9:.1f} GB is too large for a DeepIS checkpoint")
    if zipfile.is_zipfile(path):
        _check_torch_zip(path, where)
    else:
        with open(path, "rb") as f:
            head = f.read(16)
        if head.startswith(b"PK\x03\x04"):
            raise CheckpointError(f"{where}: corrupt or truncated file (a zip archive without its directory)")
        if not _is_legacy_torch_file(head):
            raise CheckpointError(
                f"{where}: not a PyTorch checkpoint (expected a file written by torch.save: the zip format, "
                "or the format of PyTorch before 1.6)"
            )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        blocking = _blocking_globals(path, exc)
        if blocking:
            found = f" ({', '.join(blocking)})"
        else:  # no object named: a damaged pickle fails the same way
            detail = re.search(r"WeightsUnpickler error:\s*(\S.*)", str(exc))
            found = ", or is corrupt" + (f" ({detail.group(1)[:80]})" if detail else "")
        numpy_hint = " (numpy values as float(x) / int(x))" if any(n.startswith("numpy") for n in blocking) else ""
        raise UnsafeCheckpointError(
            f"{where}: refused — it holds objects other than tensors and plain containers{found}, and "
            f"checkpoints are only loaded with torch.load(weights_only=True); nothing in it was run. If you "
            f"trust the file, re-save just its weights where it was made, leaving out the other "
            f"entries{numpy_hint}: torch.save({{'network': ckpt['network']}}, 'weights.pth') for a "
            f"published-DeepIS file, deepis_rt.save_checkpoint('model.pt', ckpt['state_dict'], config=...) "
            f"for a deepis-rt one; then load that file"
        ) from None
    except Exception as exc:  # truncated / corrupt zip, bad records, ...
        raise CheckpointError(f"{where}: corrupt or truncated file ({type(exc).__name__}: {exc})") from None

    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        bare = isinstance(payload, dict) and payload and all(isinstance(v, torch.Tensor) for v in payload.values())
        if bare and "stem.0.weight" in strip_wrapper_prefixes(payload):
            raise CheckpointError(
                f"{where}: a bare state dict without architecture or metadata; wrap it with "
                "deepis_rt.save_checkpoint(path, state_dict, config=...)"
            )
        if published.looks_published(payload) or bare:
            weights = published.read_published(payload, path, where)
            ckpt = Checkpoint(config=weights.config, state_dict=weights.state_dict, meta=weights.meta,
                              preset=weights.preset, path=path, sha256=file_sha256(path))
            if announce:
                _notice(ckpt.meta, where)
            return ckpt
        raise CheckpointError(
            f"{where}: not a deepis-rt checkpoint (format field missing or wrong) and not a "
            "published-DeepIS one (no 'network' state dict)"
        )
    payload = _migrate(payload, where)
    for key in ("config", "state_dict", "meta"):
        if key not in payload:
            raise CheckpointError(f"{where}: missing required field {key!r}")
    try:
        config = ModelConfig.from_dict(payload["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{where}: invalid config: {exc}") from None
    state_dict = payload["state_dict"]
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise CheckpointError(f"{where}: state_dict must map names to tensors")
    state_dict = strip_wrapper_prefixes(state_dict)
    try:
        if not isinstance(payload["meta"] or {}, Mapping):
            raise CheckpointError(f"checkpoint meta: a {type(payload['meta']).__name__}, expected a dict")
        _check_plain(payload["meta"] or {}, "meta")
    except CheckpointError as exc:
        raise CheckpointError(
            f"{where}: {exc}; write it with deepis_rt.save_checkpoint(path, state_dict, config=..., meta=...)"
        ) from None
    try:  # files of earlier versions may hold fields this one does not know: kept, with a warning
        meta = ModelMeta.from_dict(payload["meta"] or {}, f"{where}: meta", unknown="keep")
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    preset = payload.get("preset")

    stored = payload.get("checksum")
    if verify:
        if stored is None:
            log.warning("%s: no checksum stored; content cannot be verified", where)
        elif stored != _checksum(payload["config"], preset, payload["meta"], state_dict):
            raise CheckpointError(
                f"{where}: checksum mismatch — the file was modified after it was written "
                "(tampered or corrupted); refusing to use it"
            )
    ckpt = Checkpoint(config=config, state_dict=state_dict, meta=meta, preset=preset, path=path,
                      sha256=file_sha256(path))
    # Fail now, with a clear message, if weights and architecture disagree.
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in build_model(config).state_dict().items()}
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = sorted(k for k in expected if k in state_dict and tuple(state_dict[k].shape) != expected[k])
    if missing or unexpected or wrong:
        first = next(k for k in list(expected) + list(state_dict) if k in missing or k in wrong or k in unexpected)
        detail = (f"key {first!r} is missing (expected shape {expected[first]})" if first in missing else
                  f"key {first!r} has shape {tuple(state_dict[first].shape)}, expected {expected[first]}"
                  if first in wrong else f"key {first!r} (shape {tuple(state_dict[first].shape)}) is not in the network")
        raise CheckpointError(
            f"{where}: weights do not match the config: {detail} (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, wrong shape {wrong[:3]})"
        )
    if announce:
        _notice(ckpt.meta, where)
    return ckpt


def _check_torch_zip(path: Path, where: str) -> None:
    """Refuse, by the archive's directory alone, a zip that is a TorchScript model or not from ``torch.save``."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # torch.load reports it
    if any(n.endswith("constants.pkl") for n in names):
        raise CheckpointError(
            f"{where}: a TorchScript model (torch.jit.save), not a checkpoint; loading TorchScript runs its "
            "code, so it is not read here. Save the weights where the model was made, "
            "torch.save(model.state_dict(), 'weights.pth'), and load that file (or an ONNX export)"
        )
    if not any(n.endswith("data.pkl") for n in names):
        raise CheckpointError(
            f"{where}: a zip archive, but not a PyTorch checkpoint (no data.pkl; e.g. a .npz or a zipped "
            "folder); give the file written by torch.save"
        )


def _blocking_globals(path: Path, exc: Exception) -> list[str]:
    """The objects (``module.name``) that made ``weights_only`` loading refuse ``path``.

    Zip-format files are disassembled statically (nothing is run) and every such object is listed;
    for the format of PyTorch before 1.6, the one torch's error names.
    """
    try:
        names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # the legacy format, or opcodes the disassembler does not know
        names = []
    return names or re.findall(r"GLOBAL (\S+) was not an allowed global", str(exc))[:1]


def _is_legacy_torch_file(head: bytes) -> bool:
    """The format of ``torch.save`` before PyTorch 1.6 (``_use_new_zipfile_serialization=False``).

    Such files (most published-DeepIS checkpoints are) start with a pickled magic number; they are
    still loaded with ``weights_only=True`` only.
    """
    return head[:1] == b"\x80" and head[2:14] == b"\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"


def _notice(meta: Mapping[str, Any], where: str) -> None:
    """Warn once per file and process when the model's input scaling or output unit is only assumed."""
    text = published.assumption_notice(meta, where)
    if text:
        log.warning("%s", text)
