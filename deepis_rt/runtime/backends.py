"""Choosing a backend: TensorRT > ONNX Runtime GPU > PyTorch CUDA > OpenVINO CPU > ONNX Runtime CPU > PyTorch CPU.

Every backend in ``auto`` is exact (FP32, or FP16 on GPUs where the export's parity allows it);
BF16 on a CPU changes the numbers, so it runs only when asked for (``precision="bf16"``, OpenVINO
on a CPU that has it) and never comes from ``auto`` alone.

Each candidate has a probe that says whether it can run here and, if not, why; ``auto`` takes the
first that probes well *and* activates, and the report says why every faster one was skipped.
The probes are module-level functions so that tests can make backends unavailable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepis_rt._optional import is_available
from deepis_rt.errors import BackendError, ConfigError, MissingDependencyError
from deepis_rt.backends import OnnxRuntimeRunner, Runner, TensorRTRunner, TorchRunner
from deepis_rt.backends.onnxrt.runner import ort_providers
from deepis_rt.backends.openvino.runner import (
    OpenVINORunner,
    bf16_unavailable_reason,
    openvino_available,
)
from deepis_rt.runtime.source import ModelSource, default_cache_dir

__all__ = ["AUTO_ORDER", "BackendChoice", "select_runner", "cuda_available", "tensorrt_available",
           "onnx_for_checkpoint"]

log = logging.getLogger(__name__)

#: fastest first
AUTO_ORDER = ("tensorrt", "onnxruntime-gpu", "torch-cuda", "openvino-cpu", "onnxruntime-cpu", "torch-cpu")

_ALIASES = {
    "auto": AUTO_ORDER,
    "tensorrt": ("tensorrt",),
    "onnxruntime": ("onnxruntime-gpu", "onnxruntime-cpu"),
    "torch": ("torch-cuda", "torch-cpu"),
    "openvino": ("openvino-cpu",),
    **{name: (name,) for name in AUTO_ORDER},
}


def cuda_available() -> bool:
    """A CUDA GPU usable by PyTorch."""
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def tensorrt_available() -> bool:
    """The TensorRT Python package imports."""
    return is_available("tensorrt")


def _export_can_run() -> tuple[bool, str]:
    for mod in ("onnx", "onnxscript"):
        if not is_available(mod):
            return False, f"exporting the checkpoint to ONNX needs {mod} (not installed)"
    return True, ""


@dataclass
class BackendChoice:
    """One line of the selection report."""

    backend: str
    status: str  # "chosen", "skipped", "failed", "not needed"
    reason: str

    def __str__(self) -> str:
        return f"{self.backend}: {self.status}" + (f" ({self.reason})" if self.reason else "")


def onnx_for_checkpoint(source: ModelSource, cache_dir: str | Path | None = None) -> Path:
    """The FP32 ONNX of a checkpoint, exported once into a cache folder keyed by its sha256."""
    if source.onnx_fp32 is not None:
        return source.onnx_fp32
    if source.checkpoint is None:
        raise BackendError(f"load | {source.path}: no ONNX file and no checkpoint to export one from")
    from deepis_rt.export import export_onnx

    key = (source.sha256 or "unknown")[:16]
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "onnx"
    path = folder / key / "model.onnx"
    if not path.is_file():
        ckpt = source.checkpoint
        log.info("load | exporting %s to ONNX (cached at %s)", source.path, path)
        meta = {"meta": dict(source.meta), "config": ckpt.config.to_dict(), "preset": ckpt.preset,
                "checkpoint_sha256": source.sha256}
        export_onnx(ckpt.build(), path, tuple(ckpt.tile_zyx), meta=meta)
    else:
        log.info("load | using the cached ONNX export %s", path)
    source.onnx_fp32 = path
    return path


def gpu_onnx_for_checkpoint(source: ModelSource, cache_dir: str | Path | None = None) -> None:
    """FP32 and FP16 ONNX of a checkpoint for the GPU backends, via the export pipeline (cached).

    ``deepis_rt.export.export_model`` writes both graphs with a parity check into
    ``<cache>/export/<sha256[:16]>/``; when it fails, the FP32 graph alone is used.
    """
    if source.onnx_fp16 is not None or source.checkpoint is None:
        return
    key = (source.sha256 or "unknown")[:16]
    folder = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "export"
    try:
        from deepis_rt.export.pipeline import export_model, read_manifest

        if (folder / key / "manifest.json").is_file():
            read_manifest(folder / key)  # verifies the checksums of the cached files
            fp32, fp16 = folder / key / f"{key}.fp32.onnx", folder / key / f"{key}.fp16.onnx"
        else:
            result = export_model(source.checkpoint, out_dir=folder, name=key, trt=False)
            fp32, fp16 = result.onnx_fp32, result.onnx_fp16
        source.onnx_fp32 = fp32 if fp32 and Path(fp32).is_file() else source.onnx_fp32
        source.onnx_fp16 = fp16 if fp16 and Path(fp16).is_file() else None
    except Exception as exc:  # the FP32 graph still works
        log.warning("load | FP16 export failed (%s: %s); using FP32", type(exc).__name__, exc)
        onnx_for_checkpoint(source, cache_dir)


def _tensorrt_engine_loader(source: ModelSource, engines_dir: Path, batch_size: int = 1,
                            precision: str | None = None, device: str = "cuda:0") -> Callable[[], bytes]:
    """A lazy loader of verified engine bytes for ``device``, through the export's engine cache.

    An export folder's engine is checked against its manifest (key, TensorRT version, the GPU of
    ``device``, checksum) by ``load_engine_bytes``; otherwise ``get_engine`` finds the engine of this
    ONNX file, TensorRT, GPU, precision and profile in ``engines_dir``, or builds it (minutes). The
    plan is read and hashed once. FP16 comes from the FP16 graph (strongly typed TensorRT) or, on
    TensorRT < 10.12, from the FP32 graph with the FP16 builder flag; ``precision="fp32"`` gives a
    true FP32 engine (TF32 off).
    """
    from deepis_rt.backends.trt import engine as trt_cache

    def load() -> bytes:
        env = trt_cache.current_engine_env(device)
        if source.engine is not None:
            return trt_cache.load_engine_bytes(source.engine, env=env)
        fp16 = precision != "fp32" and (
            source.onnx_fp16 is not None or trt_cache.build_mode(env.trt_version, "fp16") == "builder-flag")
        onnx = source.onnx_fp16 if (fp16 and source.onnx_fp16 is not None) else source.onnx_fp32
        if onnx is None:
            raise BackendError(f"tensorrt: {source.path} has no ONNX file to build an engine from")
        if precision != "fp32" and not fp16:
            log.info("load | TensorRT %s builds FP16 from an FP16 ONNX graph, which %s lacks; building FP32",
                     env.trt_version, source.path)
        tile = tuple(int(v) for v in source.meta.get("tile_zyx", (64, 128, 128)))
        profile = trt_cache.profile_from_batch((1, batch_size, max(4, batch_size)), tile)
        build = trt_cache.get_engine(onnx, engines_dir, "fp16" if fp16 else "fp32", profile,
                                     onnx_fp32_path=source.onnx_fp32, device=device)
        assert build.data is not None  # get_engine returns the verified bytes
        return build.data

    return load


def _probe(name: str, source: ModelSource, device: str | None) -> tuple[bool, str]:
    wants_gpu = name in ("tensorrt", "onnxruntime-gpu", "torch-cuda")
    if wants_gpu and device is not None and not str(device).startswith("cuda"):
        return False, f"device={device!r} asks for the CPU"
    if not wants_gpu and device is not None and str(device).startswith("cuda"):
        return False, f"device={device!r} asks for a GPU"
    if wants_gpu and not cuda_available():
        return False, "no CUDA GPU (torch.cuda.is_available() is False)"
    if name == "tensorrt":
        if not tensorrt_available():
            return False, "TensorRT is not installed (pip install 'deepis-rt[tensorrt]')"
        if source.engine is None and not source.has_onnx and source.checkpoint is None:
            return False, "no engine, ONNX file or checkpoint to build one from"
        return True, ""
    if name == "openvino-cpu":
        if not openvino_available():
            return False, "OpenVINO is not installed (pip install openvino)"
        if not source.has_onnx:
            ok, why = _export_can_run()
            if not ok:
                return False, why
        return True, ""
    if name.startswith("onnxruntime"):
        providers = ort_providers()
        if not providers:
            return False, "onnxruntime is not installed"
        if name == "onnxruntime-gpu" and "CUDAExecutionProvider" not in providers:
            return False, f"onnxruntime has no CUDA execution provider (has {', '.join(providers)}); install onnxruntime-gpu"
        if not source.has_onnx:
            ok, why = _export_can_run()
            if not ok:
                return False, why
        return True, ""
    if source.checkpoint is None:
        return False, f"needs a PyTorch checkpoint; {source.path.name} is a {source.kind} without one"
    return True, ""


def _make_runner(name: str, source: ModelSource, device: str | None, cache_dir: Any, engines_dir: Path,
                 options: dict[str, Any]) -> Runner:
    gpu_device = device if device and str(device).startswith("cuda") else "cuda:0"
    precision = options.get("precision")
    if name == "torch-cpu":
        return TorchRunner(source.checkpoint, device="cpu", num_threads=options.get("num_threads"))
    if name == "torch-cuda":
        return TorchRunner(source.checkpoint, device=gpu_device, precision=precision or "fp16",
                           cuda_graphs=bool(options.get("cuda_graphs", True)),
                           allow_tf32=bool(options.get("allow_tf32", False)))
    if name == "openvino-cpu":
        return _openvino_runner(source, cache_dir, options)
    if name == "onnxruntime-cpu":
        return OnnxRuntimeRunner(lambda: str(onnx_for_checkpoint(source, cache_dir)), provider="cpu",
                                 intra_op_threads=options.get("num_threads"),
                                 execution_mode=options.get("execution_mode", "sequential"))
    if name == "onnxruntime-gpu":
        device_id = int(str(gpu_device).partition(":")[2] or 0)
        provider = "tensorrt" if "TensorrtExecutionProvider" in ort_providers() and options.get("ort_tensorrt") else "cuda"

        def onnx_path() -> str:
            if precision != "fp32":
                gpu_onnx_for_checkpoint(source, cache_dir)
            if precision != "fp32" and source.onnx_fp16 is not None:
                return str(source.onnx_fp16)
            return str(onnx_for_checkpoint(source, cache_dir))

        profile = None
        if provider == "tensorrt":
            from deepis_rt.backends.trt.engine import profile_from_batch

            # the profile the native TensorRT backend builds, so the EP never rebuilds for a new batch size
            tile = tuple(int(v) for v in source.meta.get("tile_zyx", (64, 128, 128)))
            batch = int(options.get("batch_size", 1))
            profile = profile_from_batch((1, batch, max(4, batch)), tile)
        return OnnxRuntimeRunner(onnx_path, provider=provider, engines_dir=engines_dir, device_id=device_id,
                                 fp16=precision != "fp32", allow_tf32=bool(options.get("allow_tf32", False)),
                                 trt_profile=profile)
    if name == "tensorrt":
        if source.engine is None and precision != "fp32":
            gpu_onnx_for_checkpoint(source, cache_dir)
        if source.engine is None and not source.has_onnx:
            onnx_for_checkpoint(source, cache_dir)
        loader = _tensorrt_engine_loader(source, engines_dir, int(options.get("batch_size", 1)), precision,
                                         device=gpu_device)
        return TensorRTRunner(loader, device=gpu_device)
    raise ConfigError(f"unknown backend {name!r}")


def _precision_unsupported(name: str, precision: str | None) -> str | None:
    """Why ``name`` cannot run ``precision`` (None when it can, or when no precision was asked for)."""
    if precision == "bf16" and name != "openvino-cpu":
        return "precision 'bf16' runs on OpenVINO (openvino-cpu) only"
    if name == "openvino-cpu" and precision not in (None, "fp32", "bf16"):
        return f"OpenVINO runs 'fp32' or 'bf16' on a CPU, not {precision!r}"
    return None


def _openvino_runner(source: ModelSource, cache_dir: Any, options: dict[str, Any]) -> Runner:
    """OpenVINO on the CPU from the FP32 ONNX; compiled models cached in ``<cache>/openvino``."""
    precision = options.get("precision") or "fp32"
    if precision == "bf16" and bf16_unavailable_reason() is None:  # else the runner refuses it
        from deepis_rt.export.precision_parity import warn_if_bf16_disagrees

        warn_if_bf16_disagrees(source, cache_dir)
    ov_cache = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "openvino"
    return OpenVINORunner(lambda: str(onnx_for_checkpoint(source, cache_dir)), precision=precision,
                          num_threads=options.get("num_threads"), hint=options.get("performance_hint", "latency"),
                          num_requests=options.get("num_requests"), cache_dir=ov_cache)


def select_runner(
    source: ModelSource,
    backend: str = "auto",
    device: str | None = None,
    cache_dir: str | Path | None = None,
    engines_dir: str | Path = "engines",
    **options: Any,
) -> tuple[Runner, list[BackendChoice]]:
    """The first backend of ``backend``'s candidates that probes well and activates.

    Returns
    -------
    runner : Runner
        Active.
    report : list of BackendChoice
        Every candidate considered, in order, with why it was skipped or failed.

    Raises
    ------
    ConfigError
        Unknown backend name.
    BackendError
        No candidate works here (the message lists why each was rejected).
    """
    if backend not in _ALIASES:
        raise ConfigError(f"load | unknown backend {backend!r}; choose one of {sorted(_ALIASES)}")
    report: list[BackendChoice] = []
    engines_dir = Path(engines_dir)
    for name in _ALIASES[backend]:
        precision_why = _precision_unsupported(name, options.get("precision"))
        ok, why = (False, precision_why) if precision_why else _probe(name, source, device)
        if not ok:
            report.append(BackendChoice(name, "skipped", why))
            continue
        try:
            runner = _make_runner(name, source, device, cache_dir, engines_dir, options)
            runner.activate()
        except (BackendError, MissingDependencyError, ConfigError, OSError) as exc:
            report.append(BackendChoice(name, "failed", str(exc)))
            log.warning("load | backend %s could not start: %s", name, exc)
            continue
        chosen = BackendChoice(name, "chosen", "fastest available" if backend == "auto" else f"backend={backend!r}")
        report.append(chosen)
        log.info("load | backend %s chosen; %s", name,
                 "; ".join(str(c) for c in report[:-1]) or "no faster backend was considered")
        return runner, report
    lines = "\n  ".join(str(c) for c in report)
    raise BackendError(f"load | no backend can run {source.path} here (backend={backend!r}):\n  {lines}")
