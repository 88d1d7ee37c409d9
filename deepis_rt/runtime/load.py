"""``load()``: the one place a :class:`~deepis_rt.runtime.segmenter.Segmenter` is assembled.

A model (:class:`~deepis_rt.runtime.source.ModelSource`: a checkpoint, an ONNX file, an export
folder, a published DeepIS checkpoint, a Triton model, or metadata for a runner the caller made)
meets a runner (chosen from :mod:`deepis_rt.backends.registry`, or given), and the Segmenter gets
the model's metadata and one description of the model (:func:`model_info`). Ray workers, the
benchmark's pipeline runs and Triton clients all come through here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt.backends import registry
from deepis_rt.backends.base import Runner
from deepis_rt.backends.triton.protocol import META_PARAMETER
from deepis_rt.core.meta import ModelMeta
from deepis_rt.errors import BackendError
from deepis_rt.runtime.backends import BackendChoice, select_runner
from deepis_rt.runtime.segmenter import Segmenter
from deepis_rt.runtime.source import ModelSource, resolve_source

__all__ = ["load", "model_info"]

log = logging.getLogger(__name__)

#: what a served model and a local copy of it must agree on
_SHARED_META_KEYS = ("voxel_size_um", "ri_normalization", "tile_zyx")


def model_info(source: ModelSource) -> dict[str, Any]:
    """What ``Segmenter.describe()["model"]`` says about the model (and ``summary.json`` records)."""
    return {
        "name": source.name,
        "path": str(source.path),
        "kind": source.kind,
        "sha256": source.sha256,
        "preset": getattr(source.checkpoint, "preset", None) or source.meta.get("preset"),
        "voxel_size_um": list(source.meta.get("voxel_size_um", [])),
        "tile_zyx": list(source.meta.get("tile_zyx", [])),
    }


def load(
    path: str | os.PathLike | ModelSource | None = None,
    backend: str = "auto",
    device: str | None = None,
    *,
    runner: Runner | None = None,
    meta: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    engines_dir: str | Path = "engines",
    overlap: float = 0.25,
    batch_size: int = 1,
    blend: str = "cosine",
    analyze: bool = True,
    stitch_on_disk: bool | str | Path = False,
    tta: bool = False,
    **runner_options: Any,
) -> Segmenter:
    """Load a model and pick the fastest backend that works here.

    Parameters
    ----------
    path : path or ModelSource, optional
        A checkpoint (``.pt``, or a published DeepIS ``.pth.tar``), an ONNX file, an export folder,
        or a resolved :class:`~deepis_rt.runtime.source.ModelSource`; None: the bundled checkpoint
        (with ``backend="triton"``: the server's model alone; with ``meta``: that metadata alone).
    backend : str
        ``"auto"``, a family (``"tensorrt"``, ``"onnxruntime"``, ``"openvino"``, ``"torch"``,
        ``"triton"``) or a registered backend (``"onnxruntime-cuda"``, ``"torch-cpu"``, ...; see
        :func:`deepis_rt.backends.registry.choices`). ``"auto"`` tries TensorRT > ONNX Runtime CUDA >
        PyTorch CUDA > OpenVINO CPU > ONNX Runtime CPU > PyTorch CPU (the registry's ``auto`` order);
        why each faster one was skipped is logged and kept in :attr:`Segmenter.backend_report`.
        ``"triton"``: the network runs on a Triton Inference Server (``url="host:8000"``,
        ``model_name="deepis"``; the model's metadata comes from the server, and must agree with
        the local copy at ``path`` when one is given).
    device : str, optional
        ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; None: any.
    runner : Runner, optional
        Use this runner (active or not) instead of choosing one: a custom or test backend. Its
        model's metadata comes from ``path`` or ``meta``.
    meta : dict, optional
        With ``runner`` and no ``path``: the model's metadata (voxel size, normalisation, tile).
    cache_dir : path, optional
        Where ONNX exports of checkpoints are cached (keyed by the checkpoint's sha256); default
        ``$DEEPIS_RT_CACHE`` or ``~/.cache/deepis-rt/onnx``.
    engines_dir : path
        TensorRT engines and timing caches.
    overlap, batch_size, blend, analyze, stitch_on_disk, tta
        See :class:`Segmenter`; ``tta``: test-time augmentation on every frame (see
        :meth:`Segmenter.segment`; 4x the inference).
    **runner_options
        Backend options: ``precision`` ("fp32"/"fp16" on GPUs; "bf16" on CPUs that have it, OpenVINO
        only, never chosen by ``auto`` alone), ``performance_hint`` ("latency"/"throughput") and
        ``num_requests`` (OpenVINO), ``cuda_graphs``, ``num_threads``, ``execution_mode`` (ONNX
        Runtime), ``ort_tensorrt`` (use ONNX Runtime's TensorRT EP), ``allow_tf32`` (PyTorch CUDA and
        ONNX Runtime CUDA: let "fp32" use TF32; off by default); Triton's ``url``, ``model_name``,
        ``model_version`` and connection settings.

    Raises
    ------
    CheckpointError
        No usable model at ``path`` (or no bundled checkpoint when ``path`` is None).
    ConfigError
        Unknown backend name.
    BackendError
        No requested backend can run here; the message lists why each was rejected.
    """
    remote = backend in registry.choices() and all(
        registry.get(name).device == "remote" for name in registry.candidates(backend))
    if isinstance(path, ModelSource):
        source: ModelSource | None = path
    elif path is None and meta is not None:
        source = ModelSource.from_meta(meta)
    elif path is None and remote:
        source = None  # the server's model describes itself
    else:
        source = resolve_source(path)
    if runner is not None:
        report = [BackendChoice(runner.name, "chosen", "runner given")]
    else:
        runner, report = select_runner(source or ModelSource.from_meta({}, "served model"), backend, device,
                                       cache_dir, engines_dir, batch_size=batch_size, **runner_options)
    try:
        if remote:
            source = _served_source(runner, source)
        assert source is not None
        return Segmenter(runner, source.meta, report, overlap=overlap, batch_size=batch_size, blend=blend,
                         analyze=analyze, stitch_on_disk=stitch_on_disk, size_multiple=source.size_multiple,
                         model_info=model_info(source), tta=tta)
    except BaseException:
        runner.deactivate()
        raise


# -- a model served elsewhere (Triton) ---------------------------------------------------------
def _served_source(runner: Any, local: ModelSource | None) -> ModelSource:
    """The model an active remote runner serves: the server's metadata, checked against a local copy."""
    from deepis_rt.model import ModelConfig

    server_meta, config = _flat_meta(getattr(runner, "model_meta", None) or {}, ModelMeta().to_dict(), ModelConfig)
    local_meta = dict(local.meta) if local is not None else {}
    where = getattr(runner, "where", runner.name)
    if server_meta and local_meta:
        differ = [k for k in _SHARED_META_KEYS if k in local_meta and not _same(server_meta.get(k), local_meta[k])]
        if differ:
            raise BackendError(
                f"{where}: the server's model and the local model {local.path} differ in {differ} "  # type: ignore[union-attr]
                f"(server {[server_meta.get(k) for k in differ]}, local {[local_meta[k] for k in differ]}); "
                "write the repository again from this export (deepis-rt export --triton REPO)")
    meta = server_meta or local_meta
    if not meta:
        raise BackendError(
            f"{where}: the server's model config has no {META_PARAMETER!r} parameter (was the repository "
            "written by `deepis-rt export --triton`?); pass the local model too: load(path, backend='triton', url=...)")
    if runner.fixed_spatial_zyx is not None and "tile_zyx" in meta:
        meta["tile_zyx"] = list(runner.fixed_spatial_zyx)
    name = str(getattr(runner, "model_name", "served model"))
    return ModelSource(path=local.path if local is not None else Path(name), kind="triton", meta=meta,
                       config=config or (local.config if local is not None else None),
                       sha256=local.sha256 if local is not None else meta.get("checkpoint_sha256"))


def _flat_meta(raw: dict[str, Any], defaults: dict[str, Any], config_type: Any) -> tuple[dict[str, Any], Any]:
    """(meta with the defaults filled in, ModelConfig or None) from an ONNX-style meta dict ({} for {})."""
    if not raw:
        return {}, None
    inner = raw.get("meta") if isinstance(raw.get("meta"), dict) else raw
    meta = {**defaults, **{k: v for k, v in inner.items() if k != "meta"}}
    config = None
    cfg = raw.get("config") if isinstance(raw.get("config"), dict) else inner.get("config")
    if isinstance(cfg, dict):
        try:
            config = config_type.from_dict(cfg)
        except Exception as exc:
            log.debug("triton | embedded model config not understood: %s", exc)
    return meta, config


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=1e-6))
    except (TypeError, ValueError):
        if isinstance(a, dict) and isinstance(b, dict) and set(a) == set(b):
            return all(_same(a[k], b[k]) for k in a)
        return a == b
