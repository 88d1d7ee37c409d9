"""``export_model``: checkpoint -> FP32 and FP16 ONNX with a parity report -> TensorRT engine.

Writes ``<out_dir>/<name>/<name>.fp32.onnx``, ``<name>.fp16.onnx`` and ``manifest.json``; the
engine (where TensorRT and a GPU exist) goes to ``<engines_dir>/<key>.plan``. Files appear only
after their parity was checked: a graph outside tolerance is never written under its final name.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepis_rt._optional import import_optional
from deepis_rt._version import __version__

# the engine code and the ONNX exporter are called through their modules, so that a replaced builder
# (a test's failing build, a fake export) is the one used
from deepis_rt.backends import trt as trt_engine
from deepis_rt.checkpoint import Checkpoint, load_checkpoint
from deepis_rt.core.files import file_sha256
from deepis_rt.core.meta import EXPORT_FORMAT, EXPORT_FORMAT_VERSION, ExportFile, ExportManifest
from deepis_rt.errors import ConfigError, EngineCacheError, ExportError, MissingDependencyError
from deepis_rt.export import onnx_export
from deepis_rt.export.fp16 import convert_to_fp16, float16_summary
from deepis_rt.export.onnx_export import INPUT_NAME, OUTPUT_NAME, set_onnx_meta
from deepis_rt.export.parity import (
    FP16_TOLERANCE,
    FP32_TOLERANCE,
    ParityResult,
    check_parity,
    compare_distance,
    parity_inputs,
    run_onnxruntime,
)

__all__ = ["ExportResult", "export_model", "load_manifest", "read_manifest", "EXPORT_FORMAT", "EXPORT_FORMAT_VERSION",
           "MANIFEST_NAME"]

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
#: Op types the FP16 graph computes in FP32 (none; Resize in FP32 made no measurable difference).
FP16_KEEP_FP32_OPS: tuple[str, ...] = ()
#: The output head (the 1x1x1 Conv that writes the distance map) is computed in FP32: it sums every
#: channel into the value whose sign near +/- half a voxel pitch decides the masks (docs/export.md).
FP16_HEAD_IN_FP32 = True
#: Fields of the model's meta the manifest records under ``checkpoint.meta``.
MANIFEST_META_FIELDS = ("voxel_size_um", "ri_normalization", "tile_zyx", "medium_ri", "description", "training",
                        "metrics")


def _output_head_nodes(proto: Any) -> list[str]:
    """Names of the nodes that write the graph outputs (given a name when they have none)."""
    outputs = {o.name for o in proto.graph.output}
    names = []
    for i, node in enumerate(proto.graph.node):
        if outputs.intersection(node.output):
            if not node.name:
                node.name = f"deepis_output_head_{i}"
            names.append(node.name)
    return names


@dataclass
class ExportResult:
    """What :func:`export_model` produced."""

    name: str
    out_dir: Path
    onnx_fp32: Path
    onnx_fp16: Path | None
    manifest_path: Path
    manifest: ExportManifest
    parity: list[ParityResult] = field(default_factory=list)
    engine: Any = None  # deepis_rt.backends.trt.cache.EngineBuild when an engine was built or found
    trt_status: str = "not requested"


def _tool_versions(with_tensorrt: bool = False) -> dict[str, str]:
    versions = {"deepis_rt": __version__, "python": platform.python_version()}
    names = ["torch", "onnx", "onnxruntime", "onnxscript", "onnxslim", "numpy"]
    if with_tensorrt:
        names.append("tensorrt")
    for name in names:
        try:
            versions[name] = str(importlib.import_module(name).__version__)
        except Exception:
            versions[name] = "not installed"
    return versions


def default_export_name(checkpoint_path: str | os.PathLike) -> str:
    """The export folder's name for a checkpoint file: its name without ``.pt``, ``.pth`` or ``.pth.tar``
    (the published DeepIS code saves ``epoch[0324]_losssum[0.053456].pth.tar``)."""
    name = Path(checkpoint_path).name
    for suffix in (".pth.tar", ".pth", ".pt", ".tar"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _parse_batch(batch: Sequence[int]) -> tuple[int, int, int]:
    try:
        bmin, bopt, bmax = (int(b) for b in batch)
    except (TypeError, ValueError):
        raise ExportError(f"export | batch {batch!r}: give three integers MIN, OPT, MAX") from None
    if not 1 <= bmin <= bopt <= bmax:
        raise ExportError(f"export | batch {bmin}:{bopt}:{bmax}: need 1 <= MIN <= OPT <= MAX")
    return bmin, bopt, bmax


def _compare_sets(
    y: np.ndarray, ref: np.ndarray, splits: list[tuple[str, int, int]], half_pitch: float, tol, model: str
) -> list[ParityResult]:
    return [compare_distance(ref[a:b], y[a:b], half_pitch, tol, model=model, inputs=name) for name, a, b in splits]


def export_model(
    checkpoint: Any,
    out_dir: str | os.PathLike = "export",
    name: str | None = None,
    opset: int = 18,
    batch: Sequence[int] = (1, 1, 4),
    fp16: bool = True,
    trt: bool | None = None,
    engines_dir: str | os.PathLike = "engines",
    dynamic_shape: bool = False,
    simplify: bool = True,
) -> ExportResult:
    """Export a checkpoint to ONNX (FP32, FP16) with a parity report, and build a TensorRT engine.

    Parameters
    ----------
    checkpoint : path-like or Checkpoint
        The checkpoint to export.
    out_dir : path-like
        Parent folder; files go to ``out_dir/<name>/``.
    name : str, optional
        Export name (default: the checkpoint's file stem, else its preset).
    opset : int
        ONNX opset.
    batch : (min, opt, max)
        Batch sizes of the TensorRT optimisation profile (the ONNX batch axis is dynamic anyway).
    fp16 : bool
        Also write the FP16 graph (weights and compute in half, float32 I/O).
    trt : bool or None
        ``None``: build an engine when TensorRT and a GPU exist, else say why not and go on.
        ``True``: an engine is required; :class:`MissingDependencyError` (after the ONNX files are
        written) when it cannot be built here. ``False``: no engine.
    engines_dir : path-like
        Folder of engines and the timing cache.
    dynamic_shape : bool
        Make Z, Y, X dynamic too (multiples of the model's size multiple).
    simplify : bool
        Simplify the FP32 graph with onnxslim, kept only when the simplified graph keeps parity.

    Returns
    -------
    ExportResult

    Raises
    ------
    ParityError
        An exported graph disagrees with PyTorch beyond the documented tolerance (no file written).
    """
    import onnx

    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    bmin, bopt, bmax = _parse_batch(batch)
    if name is None:
        name = default_export_name(ckpt.path) if ckpt.path is not None else (ckpt.preset or "deepis")
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ExportError(f"export | name {name!r}: use a plain file name")
    folder = Path(out_dir) / name
    folder.mkdir(parents=True, exist_ok=True)
    tile = ckpt.tile_zyx
    model = ckpt.build()
    voxel = ckpt.voxel_size_um
    half_pitch = 0.5 * min(voxel)
    ckpt_sha = ckpt.sha256 or "unknown"
    meta = {
        **ckpt.meta,
        "config": ckpt.config.to_dict(),
        "preset": ckpt.preset,
        "checkpoint_sha256": ckpt_sha,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "dynamic_shape": bool(dynamic_shape),
    }

    sets = parity_inputs(tile, ckpt.meta, random_batch=1)
    splits, start = [], 0
    for set_name, arr in sets.items():
        splits.append((set_name, start, start + arr.shape[0]))
        start += arr.shape[0]
    x = np.concatenate(list(sets.values()), axis=0)  # one run per backend, batch > 1 on purpose
    with torch.inference_mode():
        ref = model(torch.from_numpy(x)).numpy()

    fp32_path = folder / f"{name}.fp32.onnx"
    fp16_path = folder / f"{name}.fp16.onnx"
    with tempfile.TemporaryDirectory(prefix=".export-", dir=folder) as tmpdir:
        raw_path = Path(tmpdir) / "raw.onnx"
        log.info("export | %s: exporting the FP32 graph (opset %d, tile %s)", name, opset, tile)
        onnx_export.export_onnx(model, raw_path, tile, opset=opset, dynamic_shape=dynamic_shape,
                    meta={**meta, "precision": "fp32"})
        proto = onnx.load(str(raw_path))
        # Try the simplified graph first; the unsimplified one is the fallback when it loses parity.
        candidates = [(proto, False)]
        slim = _simplify(proto) if simplify else None
        if slim is not None:
            candidates.insert(0, (slim, True))
        for candidate, is_slim in candidates:
            y32 = run_onnxruntime(candidate.SerializeToString(), x)
            parity = _compare_sets(y32, ref, splits, half_pitch, FP32_TOLERANCE, "fp32")
            if all(r.passed for r in parity):
                proto, simplified = candidate, is_slim
                break
            if is_slim:
                log.warning("export | simplified graph lost parity (%s); trying the unsimplified one",
                            "; ".join(f for r in parity for f in r.failures))
        else:
            simplified = False
        check_parity(parity)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(raw_path))
        fp16_summary = None
        if fp16:
            head = _output_head_nodes(proto) if FP16_HEAD_IN_FP32 else []
            proto16 = convert_to_fp16(proto, FP16_KEEP_FP32_OPS, keep_fp32_nodes=head)
            fp32_parts = {"fp16_keep_fp32_ops": list(FP16_KEEP_FP32_OPS), "fp16_keep_fp32_nodes": head}
            set_onnx_meta(proto16, {**meta, "precision": "fp16", **fp32_parts})
            tmp16 = Path(tmpdir) / "fp16.onnx"
            onnx.save(proto16, str(tmp16))
            y16 = run_onnxruntime(tmp16, x, basic_optimizations=True)
            parity16 = _compare_sets(y16, ref, splits, half_pitch, FP16_TOLERANCE, "fp16")
            parity += parity16
            check_parity(parity16)
            fp16_summary = float16_summary(proto16)
            shutil.move(str(tmp16), fp16_path)
        elif fp16_path.exists():
            fp16_path.unlink()  # an FP16 file of an earlier export would not match this manifest
        shutil.move(str(raw_path), fp32_path)

    files = [ExportFile(path=fp32_path.name, precision="fp32", sha256=file_sha256(fp32_path),
                        bytes=fp32_path.stat().st_size, simplified=simplified)]
    if fp16:
        files.append(ExportFile(path=fp16_path.name, precision="fp16", sha256=file_sha256(fp16_path),
                                bytes=fp16_path.stat().st_size, simplified=simplified, **fp32_parts,
                                float16_summary=fp16_summary))
    profile = trt_engine.profile_from_batch((bmin, bopt, bmax), tile, dynamic_shape, ckpt.config.size_multiple)
    stored_meta = ckpt.meta.to_dict()
    shape = ["N", 1, *(["Z", "Y", "X"] if dynamic_shape else tile)]
    manifest = ExportManifest(
        name=name,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        checkpoint={
            "path": str(ckpt.path) if ckpt.path is not None else None,
            "sha256": ckpt_sha,
            "preset": ckpt.preset,
            "meta": {k: stored_meta[k] for k in MANIFEST_META_FIELDS},
        },
        config=ckpt.config.to_dict(),
        opset=opset,
        input={"name": INPUT_NAME, "shape": shape, "dtype": "float32",
               "normalization": ckpt.meta.ri_normalization.to_dict()},
        output={"name": OUTPUT_NAME, "shape": shape, "dtype": "float32", "unit": "um"},
        dynamic_shape=bool(dynamic_shape),
        batch_profile=profile.to_dict(),
        files=tuple(files),
        parity={
            "reference": "PyTorch FP32 (CPU)",
            "runtime": "ONNX Runtime CPU",
            "half_pitch_um": half_pitch,
            "tolerances": {"fp32": FP32_TOLERANCE.__dict__, "fp16": FP16_TOLERANCE.__dict__},
            "results": [r.to_dict() for r in parity],
        },
        tools=_tool_versions(),
    )
    result = ExportResult(name, folder, fp32_path, fp16_path if fp16 else None, folder / MANIFEST_NAME,
                          manifest, parity)
    _write_manifest(result)

    if trt is False:
        return result
    reason = trt_engine.tensorrt_unavailable_reason()
    if reason is not None:
        result.trt_status = f"skipped: {reason}"
        _write_manifest(result, tensorrt=result.trt_status)
        if trt:
            raise MissingDependencyError(
                f"export | {reason}. The ONNX files and manifest are in {folder}; run the export "
                "again with --trt where TensorRT and an NVIDIA GPU are available"
            )
        log.info("export | %s (ONNX files written; pass --trt to require an engine)", reason)
        return result
    try:
        engine = trt_engine.get_engine(fp16_path if fp16 else fp32_path, engines_dir, "fp16" if fp16 else "fp32",
                            profile, onnx_fp32_path=fp32_path)
    except (ExportError, EngineCacheError) as exc:
        result.trt_status = f"failed: {exc}"
        _write_manifest(result, tensorrt=result.trt_status)
        if trt:
            raise
        log.error("%s (the ONNX files are fine; pass --no-trt to skip the engine)", exc)
        return result
    result.engine = engine
    result.trt_status = "cached" if engine.cached else "built"
    _write_manifest(result, tensorrt=result.trt_status, tools=_tool_versions(with_tensorrt=True), engine={
        "path": str(engine.path), **{k: engine.manifest[k] for k in (
            "cache_key", "trt_version", "gpu_name", "compute_capability", "precision", "build_mode",
            "build_time_s", "engine_sha256")}})
    return result


def _simplify(proto: Any) -> Any:
    try:
        onnxslim = import_optional("onnxslim", "simplifying exported ONNX graphs")
    except MissingDependencyError as exc:
        log.info("export | not simplifying: %s", exc)
        return None
    try:
        return onnxslim.slim(proto)
    except Exception as exc:  # a simplifier failure must not fail the export
        log.warning("export | onnxslim failed (%s: %s); keeping the unsimplified graph", type(exc).__name__, exc)
        return None


def _write_manifest(result: ExportResult, **changes: Any) -> None:
    """Write ``result.manifest`` with ``changes`` (fields of :class:`ExportManifest`) atomically."""
    result.manifest = replace(result.manifest, **changes)
    tmp = result.manifest_path.with_name(result.manifest_path.name + ".tmp")
    tmp.write_text(json.dumps(result.manifest.to_dict(), indent=2))
    os.replace(tmp, result.manifest_path)


def read_manifest(export_dir: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """The manifest of an export folder as a dict (:func:`load_manifest`, in its stored layout)."""
    return load_manifest(export_dir, verify).to_dict()


def load_manifest(export_dir: str | os.PathLike, verify: bool = True) -> ExportManifest:
    """The manifest of an export folder, with every listed ONNX file's sha256 verified.

    Every field must be one :class:`~deepis_rt.core.meta.ExportManifest` declares: a field added by
    hand is refused, naming it.

    Raises
    ------
    ExportError
        No manifest, not an export manifest, an unknown or malformed field, a listed file missing,
        or a checksum mismatch.
    """
    folder = Path(export_dir)
    path = folder / MANIFEST_NAME if folder.is_dir() else folder
    folder = path.parent
    where = f"export | {path}"
    if not path.is_file():
        raise ExportError(f"{where}: no manifest; export the checkpoint with `deepis-rt export CKPT`")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{where}: corrupt manifest ({exc}); export again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise ExportError(f"{where}: not a deepis-rt export manifest")
    try:
        typed = ExportManifest.from_dict(manifest, where)
    except ConfigError as exc:
        raise ExportError(f"{exc}; export again, or correct the file") from None
    if verify:
        for entry in typed.files:
            onnx_path = folder / entry.path
            if not onnx_path.is_file():
                raise ExportError(f"{where}: listed file {entry.path} is missing; export again")
            if file_sha256(onnx_path) != entry.sha256:
                raise ExportError(f"{where}: {entry.path} does not match its sha256 in the manifest "
                                  "(modified or corrupt); export again")
    return typed
