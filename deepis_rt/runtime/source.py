"""What ``load()`` was given, as one :class:`ModelSource`: a checkpoint (deepis-rt's or the published
DeepIS code's), an ONNX file, an export folder, a model served by Triton, or bare metadata for a
runner the caller made."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepis_rt.backends.files import default_cache_dir
from deepis_rt.core.meta import TILE_ZYX, ModelMeta
from deepis_rt.errors import CheckpointError

__all__ = ["ModelSource", "resolve_source", "default_cache_dir", "bundled_checkpoint"]

log = logging.getLogger(__name__)


@dataclass
class ModelSource:
    """A resolved model: where it lives, which forms exist (checkpoint, ONNX FP32/FP16, engine), its meta."""

    path: Path
    kind: str  # "checkpoint" | "onnx" | "export" | "triton" | "meta"
    meta: dict[str, Any]
    checkpoint: Any = None  # deepis_rt.checkpoint.Checkpoint
    onnx_fp32: Path | None = None
    onnx_fp16: Path | None = None
    engine: Path | None = None
    config: Any = None  # ModelConfig
    sha256: str | None = None
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def has_onnx(self) -> bool:
        return self.onnx_fp32 is not None or self.onnx_fp16 is not None

    @property
    def size_multiple(self) -> int:
        return int(getattr(self.config, "size_multiple", 16))

    @property
    def tile_zyx(self) -> tuple[int, int, int]:
        """The model's tile (Z, Y, X); the default tile when the meta does not say."""
        return tuple(int(v) for v in self.meta.get("tile_zyx", TILE_ZYX))  # type: ignore[return-value]

    @property
    def name(self) -> str:
        return self.path.name if self.kind == "export" else self.path.stem

    @classmethod
    def from_checkpoint(cls, checkpoint: Any, path: str | os.PathLike | None = None) -> ModelSource:
        """A loaded :class:`~deepis_rt.checkpoint.Checkpoint` (``path``: where it came from, for messages)."""
        where = Path(path) if path is not None else Path(getattr(checkpoint, "path", None) or "checkpoint.pt")
        return cls(path=where, kind="checkpoint", meta=dict(checkpoint.meta), checkpoint=checkpoint,
                   config=checkpoint.config, sha256=getattr(checkpoint, "sha256", None))

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], name: str = "model", config: Any = None) -> ModelSource:
        """Metadata alone, for a runner made by the caller (its model is wherever the runner has it)."""
        return cls(path=Path(name), kind="meta", meta=dict(meta), config=config)


def bundled_checkpoint() -> Path:
    """The checkpoint shipped with the package, or :class:`CheckpointError` saying what to do."""
    try:
        from deepis_rt import checkpoint as _ckpt

        finder = getattr(_ckpt, "bundled_checkpoint_path", None)
        path = finder() if finder is not None else None
    except CheckpointError:
        raise
    except Exception as exc:  # a missing data file may surface as several error types
        log.debug("bundled checkpoint lookup failed: %s", exc)
        path = None
    if path is None or not Path(path).is_file():
        raise CheckpointError(
            "load | no path given and this install has no bundled checkpoint; pass a checkpoint "
            "(.pt), an ONNX file or an export folder, e.g. deepis_rt.load('model.pt') "
            "(make one with: deepis-rt init --preset deepis-lite model.pt)"
        )
    return Path(path)


def _meta_from_onnx(path: Path) -> tuple[dict[str, Any], Any]:
    """(meta, ModelConfig or None) from an ONNX file's embedded JSON (flat or {"meta", "config"})."""
    from deepis_rt.export import read_onnx_meta
    from deepis_rt.model import ModelConfig

    try:
        raw = read_onnx_meta(path)
    except Exception as exc:
        raise CheckpointError(f"load | {path}: not a readable ONNX file ({type(exc).__name__}: {exc})") from None
    inner = raw.get("meta") if isinstance(raw.get("meta"), dict) else raw
    defaults = ModelMeta().to_dict()
    meta = dict(defaults)
    meta.update({k: v for k, v in inner.items() if k in defaults or k not in ("config", "meta")})
    if not raw:
        log.warning("load | %s: no deepis-rt metadata in the ONNX file; using the default voxel size, "
                    "normalisation and tile", path)
    config = None
    cfg = raw.get("config") if isinstance(raw.get("config"), dict) else inner.get("config")
    if isinstance(cfg, dict):
        try:
            config = ModelConfig.from_dict(cfg)
        except Exception as exc:
            log.warning("load | %s: embedded config not understood (%s)", path, exc)
    return meta, config


def _read_manifest(folder: Path) -> dict[str, Any]:
    """The export manifest, its ONNX checksums verified by ``deepis_rt.export.read_manifest``; {} if none."""
    if not (folder / "manifest.json").is_file():
        return {}
    from deepis_rt.export import pipeline

    return dict(pipeline.read_manifest(folder))


def _manifest_paths(folder: Path, manifest: dict[str, Any]) -> list[Path]:
    """The model files a manifest lists: ``files[].path`` (relative to the folder) and ``engine.path``."""
    found: list[Path] = []
    for entry in manifest.get("files", []) or []:
        name = entry.get("path") if isinstance(entry, dict) else entry
        if isinstance(name, str) and (folder / name).is_file():
            found.append(folder / name)
    engine = manifest.get("engine")
    if isinstance(engine, dict) and isinstance(engine.get("path"), str):
        # written relative to the working directory of the export (engines/<key>.plan)
        for candidate in (Path(engine["path"]), folder / engine["path"]):
            if candidate.is_file():
                found.append(candidate)
                break
    return found


def resolve_source(path: str | os.PathLike | None) -> ModelSource:
    """Resolve ``load()``'s path (None: the bundled checkpoint)."""
    path = bundled_checkpoint() if path is None else Path(path)
    if not path.exists():
        raise CheckpointError(f"load | {path}: no such file or folder")
    if path.is_dir():
        manifest = _read_manifest(path)
        files = _manifest_paths(path, manifest) or sorted(path.iterdir())
        onnx = [p for p in files if p.suffix == ".onnx"]
        fp16 = [p for p in onnx if "fp16" in p.name.lower()]
        fp32 = [p for p in onnx if p not in fp16]
        engines = [p for p in files if p.suffix in (".plan", ".engine")]
        ckpts = [p for p in files if p.suffix == ".pt"]
        if not onnx and not ckpts:
            raise CheckpointError(f"load | {path}: folder holds no .onnx or .pt model (is it an export folder?)")
        src = ModelSource(path=path, kind="export", meta={}, manifest=manifest,
                          onnx_fp32=fp32[0] if fp32 else None, onnx_fp16=fp16[0] if fp16 else None,
                          engine=engines[0] if engines else None)
        if ckpts:
            _attach_checkpoint(src, ckpts[0])
        if onnx:
            meta, config = _meta_from_onnx(src.onnx_fp32 or src.onnx_fp16)  # type: ignore[arg-type]
            if src.checkpoint is None:
                src.meta, src.config = meta, config
        ckpt_info = manifest.get("checkpoint") if isinstance(manifest.get("checkpoint"), dict) else {}
        src.sha256 = src.sha256 or ckpt_info.get("sha256") or src.meta.get("checkpoint_sha256")
        if src.checkpoint is None:
            _announce_assumptions(src)
        return src
    if path.suffix == ".onnx":
        from deepis_rt.checkpoint import file_sha256

        meta, config = _meta_from_onnx(path)
        src = ModelSource(path=path, kind="onnx", meta=meta, onnx_fp32=path, config=config,
                          sha256=file_sha256(path))
        _announce_assumptions(src)
        return src
    src = ModelSource(path=path, kind="checkpoint", meta={})
    _attach_checkpoint(src, path)
    return src


def _announce_assumptions(src: ModelSource) -> None:
    """Say once what an exported published-DeepIS model only assumes (checkpoints say it on loading)."""
    from deepis_rt.published import assumption_notice

    text = assumption_notice(src.meta, f"load | {src.path}")
    if text:
        log.warning("%s", text)


def _attach_checkpoint(src: ModelSource, path: Path) -> None:
    from deepis_rt.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    src.checkpoint, src.meta, src.config, src.sha256 = ckpt, dict(ckpt.meta), ckpt.config, ckpt.sha256
