"""Describe deepis-rt artefacts (checkpoints, and more as they are added) as plain dicts.

:func:`describe` picks a describer by what the path is. Other modules list theirs in a
``DESCRIBERS`` table that :func:`describe` adds on first use (ONNX files, export folders,
engines), or call :func:`register`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deepis_rt.core.meta import ModelMeta
from deepis_rt.errors import InputError

__all__ = ["describe", "register", "describe_checkpoint", "describe_tcf"]

# (predicate, describer) in priority order
_DESCRIBERS: list[tuple[str, Callable[[Path], bool], Callable[[Path], dict[str, Any]]]] = []


def register(kind: str, matches: Callable[[Path], bool], describer: Callable[[Path], dict[str, Any]]) -> None:
    """Add a describer for paths where ``matches(path)`` is true (checked in order of registration)."""
    _DESCRIBERS.append((kind, matches, describer))


def describe_checkpoint(path: Path) -> dict[str, Any]:
    """Preset, config, parameters, FLOPs per tile, voxel size and training metadata."""
    from deepis_rt.checkpoint import load_checkpoint
    from deepis_rt.model import complexity

    ckpt = load_checkpoint(path, announce=False)
    cx = complexity(ckpt.config, ckpt.tile_zyx)
    meta = ckpt.meta
    source = meta.source or {}
    if source.get("format") == "deepis-2020-cnntrainer" and ckpt.path is not None and ckpt.path.name == source.get("file"):
        return _describe_published(ckpt, cx)
    desc = {
        "kind": "checkpoint",
        "path": str(path),
        "sha256": ckpt.sha256,
        "preset": ckpt.preset or "custom",
        "config": ckpt.config.to_dict(),
        "parameters": cx.parameters,
        "tile_zyx": list(ckpt.tile_zyx),
        "gflops_per_tile": round(cx.gflops_per_tile, 1),
        "voxel_size_um": list(ckpt.voxel_size_um),
        "ri_normalization": meta.ri_normalization.to_dict(),
        "medium_ri": meta.medium_ri,
        "description": meta.description,
        "training": meta.training,
        "metrics": meta.metrics,
    }
    if meta.distance_output is not None:
        desc["distance_output"] = meta.distance_output.to_dict()
    if meta.assumed:
        desc["assumed"] = _assumed(meta)
    return desc


def _assumed(meta: ModelMeta) -> dict[str, Any]:
    return {k: meta.get(k) for k in meta.assumed or ()}


def _describe_published(ckpt: Any, cx: Any) -> dict[str, Any]:
    """A checkpoint of the published DeepIS training code, as read (not yet converted)."""
    source = ckpt.meta["source"]
    return {
        "kind": "published-DeepIS checkpoint (Unet3D_glob, saved by CNNTrainer)",
        "path": str(ckpt.path),
        "sha256": ckpt.sha256,
        "architecture": (f"deepis-2020: Unet3D_glob(feature_scale={source['feature_scale']}, "
                         f"trans_feature={source['trans_feature']}), inferred from tensor shapes"),
        "preset": ckpt.preset or "custom (deepis-2020 family)",
        "config": ckpt.config.to_dict(),
        "parameters": cx.parameters,
        "tile_zyx": list(ckpt.tile_zyx),
        "gflops_per_tile": round(cx.gflops_per_tile, 1),
        "model_type": source.get("model_type"),
        "epoch": source.get("epoch"),
        "best_metric": source.get("best_metric"),
        "layout": source.get("layout"),
        "not_used": source.get("dropped"),
        "unknown": {
            "input scaling": "not recorded; assumed network input = RI as is (ri_normalization offset 0, scale 1)",
            "output unit": "not recorded; assumed signed distance in um (x 1)",
            "voxel size": f"not recorded; assumed {list(ckpt.voxel_size_um)} um (Z, Y, X)",
        },
        "to state them": (f"deepis-rt convert {ckpt.path.name} NEW.pt --ri-normalization OFFSET SCALE "
                          "--output-unit um|voxel --output-scale S --voxel-size Z Y X"),
    }


register("checkpoint", lambda p: p.is_file() and (p.suffix in {".pt", ".pth", ".ckpt"} or p.name.endswith(".pth.tar")),
         describe_checkpoint)


def describe_results(path: Path) -> dict[str, Any]:
    """A stream's results folder: frames, failures, backend, latency, synapse kinetics."""
    import csv
    import json

    summary: dict[str, Any] = {}
    if (path / "summary.json").is_file():
        summary = json.loads((path / "summary.json").read_text())
    with open(path / "frames.csv", newline="") as f:
        frames = list(csv.DictReader(f))
    n_cells = n_syn = 0
    for name in ("cells.csv", "synapses.csv"):
        if (path / name).is_file():
            with open(path / name, newline="") as f:
                rows = sum(1 for _ in csv.DictReader(f))
            n_cells, n_syn = (rows, n_syn) if name == "cells.csv" else (n_cells, rows)
    return {
        "kind": "results",
        "path": str(path),
        "frames_ok": sum(1 for r in frames if r["status"] == "ok"),
        "frames_failed": sum(1 for r in frames if r["status"] == "failed"),
        # backend unavailable for longer than --retry-for: the next stream / batch run processes them
        "frames_retry": sum(1 for r in frames if r["status"] == "retry"),
        # passed over for newer frames (stream --live newest) and not processed before the run stopped
        "frames_pending": sum(1 for r in frames if r["status"] == "pending"),
        "cell_rows": n_cells,
        "synapse_rows": n_syn,
        "backend": summary.get("backend"),
        "model": summary.get("model", {}),
        "last_run": summary.get("run", {}),
        "synapses": [
            {k: s.get(k) for k in ("synapse_id", "tcell_track", "target_track", "onset_s", "n_frames",
                                   "max_is_area_um2", "A_max_um2", "tau_half_s", "r_squared")}
            for s in summary.get("synapses", [])
        ],
    }


register("results", lambda p: p.is_dir() and (p / "frames.csv").is_file(), describe_results)


def describe_tcf(path: Path) -> dict[str, Any]:
    """A Tomocube TCF: layout, format version, device, time points, size, voxel size, medium RI,
    compression (:func:`deepis_rt.io.tcf.describe_tcf`; reads no voxels)."""
    from deepis_rt.io.tcf import describe_tcf as _describe

    return _describe(path)


register("tcf", lambda p: p.is_file() and p.suffix.lower() in {".tcf", ".h5", ".hdf5"}, describe_tcf)


def describe(path: str | Path) -> dict[str, Any]:
    """Describe ``path``; raises :class:`InputError` for paths nothing recognises."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"info | {path}: no such file or folder")
    # Import modules that register describers of their own (optional parts are skipped).
    for module in _EXTRA_DESCRIBER_MODULES:
        try:
            extra = importlib.import_module(module).DESCRIBERS
        except ImportError:
            continue
        for kind, matches, describer in extra:
            if kind not in {k for k, _, _ in _DESCRIBERS}:
                register(kind, matches, describer)
    for _kind, matches, describer in _DESCRIBERS:
        if matches(path):
            return describer(path)
    raise InputError(
        f"info | {path}: not a file deepis-rt can describe (checkpoint .pt, ONNX .onnx, "
        "export folder, engine .plan, results folder or Tomocube .tcf)"
    )


#: Modules whose ``DESCRIBERS`` (kind, matches, describer) are added on first use.
_EXTRA_DESCRIBER_MODULES: list[str] = ["deepis_rt.export.describe"]
