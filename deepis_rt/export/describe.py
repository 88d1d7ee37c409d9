"""``deepis-rt info`` describers for ONNX files, export folders, engines and engine folders.

Imported by :func:`deepis_rt.info.describe`, which adds the ``DESCRIBERS`` table below. Describing
never needs TensorRT: engines are described from their manifests, and their checksums are verified.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from deepis_rt.backends.trt.cache import load_engine_bytes, read_engine_manifest
from deepis_rt.core.files import file_sha256
from deepis_rt.core.meta import EXPORT_FORMAT
from deepis_rt.errors import EngineCacheError, ExportError, FileFormatError
from deepis_rt.export.onnx_export import read_onnx_meta
from deepis_rt.export.pipeline import MANIFEST_NAME, load_manifest

__all__ = ["describe_onnx", "describe_export", "describe_engine", "describe_engines_dir", "describe_exports_dir"]

_META_FIELDS = ("preset", "precision", "voxel_size_um", "tile_zyx", "ri_normalization", "medium_ri",
                "checkpoint_sha256", "dynamic_shape", "description")


def _json_format(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data.get("format") if isinstance(data, dict) else None


def describe_onnx(path: Path) -> dict[str, Any]:
    """Inputs, outputs, opset, precision, operator counts and the embedded deepis-rt metadata."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise FileFormatError(f"info | {path}: not a readable ONNX model ({type(exc).__name__}: {exc}); "
                              "check that the file is complete") from None
    if not proto.graph.node:  # an empty file, or bytes that happen to parse as an empty message
        raise FileFormatError(f"info | {path}: not a readable ONNX model (no graph); check that the file is complete")
    names = {v: k.lower() for k, v in onnx.TensorProto.DataType.items()}

    def tensors(values: Any) -> list[dict[str, Any]]:
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append({"name": v.name, "dtype": names.get(t.elem_type, "?"), "shape": shape})
        return out

    weights = Counter(names.get(i.data_type, "?") for i in proto.graph.initializer
                      if i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16))
    meta = read_onnx_meta(path)
    desc: dict[str, Any] = {
        "kind": "onnx",
        "path": str(path),
        "sha256": file_sha256(path),
        "bytes": path.stat().st_size,
        "opset": max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "producer": f"{proto.producer_name} {proto.producer_version}".strip(),
        "inputs": tensors(proto.graph.input),
        "outputs": tensors(proto.graph.output),
        "weights_dtype": dict(weights),
        "operators": dict(Counter(n.op_type for n in proto.graph.node).most_common()),
        "deepis_rt_meta": {k: meta[k] for k in _META_FIELDS if k in meta} if meta else "none (not a deepis-rt export)",
    }
    manifest = path.parent / MANIFEST_NAME
    if manifest.is_file() and _json_format(manifest) == EXPORT_FORMAT:
        desc["export_manifest"] = str(manifest)
    return desc


def describe_export(path: Path) -> dict[str, Any]:
    """An export folder (or its manifest.json): files with verified checksums, parity, engine."""
    manifest = load_manifest(path, verify=False)
    try:
        load_manifest(path, verify=True)
        integrity = "ok (every ONNX file matches its sha256)"
    except ExportError as exc:
        integrity = f"FAILED: {exc}"
    parity = manifest.parity or {}
    worst: dict[str, dict[str, Any]] = {}
    for r in parity.get("results", []):
        w = worst.setdefault(r["model"], {"max_abs_um": 0.0, "p99_abs_um": 0.0, "min_mask_agreement": 1.0,
                                          "passed": True})
        w["max_abs_um"] = max(w["max_abs_um"], r["max_abs_um"])
        w["p99_abs_um"] = max(w["p99_abs_um"], r["p99_abs_um"])
        w["min_mask_agreement"] = min(w["min_mask_agreement"], r["cart_agreement"], r["target_agreement"])
        w["passed"] = w["passed"] and r["passed"]
    ckpt = manifest.checkpoint or {}
    ckpt_meta = ckpt.get("meta") or {}
    return {
        "kind": "export",
        "path": str(path),
        "name": manifest.name,
        "created_at": manifest.created_at,
        "checkpoint": {"path": ckpt.get("path"), "sha256": ckpt.get("sha256"), "preset": ckpt.get("preset")},
        "voxel_size_um": ckpt_meta.get("voxel_size_um"),
        "tile_zyx": ckpt_meta.get("tile_zyx"),
        "opset": manifest.opset,
        "dynamic_shape": manifest.dynamic_shape,
        "files": [{"path": f.path, "precision": f.precision, "bytes": f.bytes, "sha256": f.sha256,
                   "simplified": f.simplified} for f in manifest.files],
        "integrity": integrity,
        "parity": worst,
        "tensorrt": manifest.tensorrt,
        "engine": manifest.engine or "-",
        "tools": manifest.tools,
    }


def describe_engine(path: Path) -> dict[str, Any]:
    """A TensorRT engine (``.plan`` or its ``.json`` manifest), with key and checksum verified."""
    plan = path.with_suffix(".plan")
    manifest = read_engine_manifest(plan)
    try:
        load_engine_bytes(plan)
        integrity = "ok (key and sha256 match)"
    except EngineCacheError as exc:
        integrity = f"FAILED: {exc}"
    keys = ("cache_key", "precision", "tf32", "workspace_bytes", "build_mode", "trt_version", "gpu_name",
            "compute_capability", "profile", "onnx_path", "onnx_sha256", "build_time_s", "built_at", "engine_bytes", "engine_sha256")
    return {"kind": "engine", "path": str(plan), **{k: manifest.get(k) for k in keys}, "integrity": integrity}


def describe_engines_dir(path: Path) -> dict[str, Any]:
    """A folder of engines: one short entry per engine, and the timing caches."""
    engines = []
    for manifest in sorted(path.glob("*.json")):
        if _json_format(manifest) != "deepis-rt-engine":
            continue
        d = describe_engine(manifest)
        engines.append({k: d[k] for k in ("cache_key", "precision", "trt_version", "gpu_name",
                                          "compute_capability", "built_at", "integrity")})
    orphans = [p.name for p in sorted(path.glob("*.plan")) if not p.with_suffix(".json").is_file()]
    return {
        "kind": "engines",
        "path": str(path),
        "engines": engines or "none",
        "plans_without_manifest": orphans or "none",
        "timing_caches": [p.name for p in sorted(path.glob("timing-*.cache"))] or "none",
    }


def describe_exports_dir(path: Path) -> dict[str, Any]:
    """A parent folder of exports (``export/``): one short entry per export."""
    exports = []
    for manifest in sorted(path.glob(f"*/{MANIFEST_NAME}")):
        if _json_format(manifest) == EXPORT_FORMAT:
            d = describe_export(manifest.parent)
            exports.append({k: d[k] for k in ("name", "created_at", "integrity", "tensorrt")}
                           | {"files": [f["path"] for f in d["files"]]})
    return {"kind": "exports", "path": str(path), "exports": exports or "none"}


def _is_exports_dir(p: Path) -> bool:
    return p.is_dir() and any(_json_format(m) == EXPORT_FORMAT for m in p.glob(f"*/{MANIFEST_NAME}"))


def _is_engines_dir(p: Path) -> bool:
    if not p.is_dir():
        return False
    if p.name == "engines" or any(p.glob("*.plan")) or any(p.glob("timing-*.cache")):
        return True
    return any(_json_format(j) == "deepis-rt-engine" for j in p.glob("*.json"))


#: (kind, matches, describer) of the paths an export leaves, read by :func:`deepis_rt.info.describe`
DESCRIBERS = (
    ("onnx", lambda p: p.is_file() and p.suffix == ".onnx", describe_onnx),
    ("export", lambda p: (p.is_dir() and _json_format(p / MANIFEST_NAME) == EXPORT_FORMAT)
     or (p.is_file() and p.suffix == ".json" and _json_format(p) == EXPORT_FORMAT), describe_export),
    ("engine", lambda p: (p.is_file() and p.suffix == ".plan")
     or (p.is_file() and p.suffix == ".json" and _json_format(p) == "deepis-rt-engine"), describe_engine),
    ("engines", _is_engines_dir, describe_engines_dir),
    ("exports", _is_exports_dir, describe_exports_dir),
)
