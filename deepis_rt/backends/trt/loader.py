"""Lazy engine loaders and TensorRT as a registered backend.

Small callables in the shape of Polygraphy's ``backend/trt/loader.py``: each does its expensive
work (reading and verifying a plan, building an engine for minutes, deserialising) only when
called, so a :class:`~deepis_rt.backends.trt.runner.TensorRTRunner` takes one and calls it in
``activate()``, inside its device scope.

* :class:`EngineFromCache` — the verified bytes of a stored engine (an export folder's plan);
* :class:`EngineFromOnnx` — the verified bytes of the engine of an ONNX graph, from the engine cache
  or built into it (:func:`~deepis_rt.backends.trt.build.get_engine`);
* :func:`engine_for_model` — one of the two for a model (its own engine, else its FP16 or FP32 graph);
* :func:`deserialize_engine` — an ``ICudaEngine`` from verified bytes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepis_rt._optional import import_optional
from deepis_rt.backends import facts
from deepis_rt.backends.spec import BackendSpec, ModelFiles, RunnerRequest
from deepis_rt.backends.trt.env import (
    TRT_INSTALL_HINT,
    cuda_device_index,
    current_engine_env,
    device_scope,
    make_logger,
)
from deepis_rt.backends.trt.profile import EngineProfile, build_mode, profile_from_batch
from deepis_rt.backends.trt.runner import TensorRTRunner
from deepis_rt.errors import BackendError, EngineCacheError

__all__ = ["EngineFromCache", "EngineFromOnnx", "engine_for_model", "deserialize_engine", "SPEC"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineFromCache:
    """Verified plan bytes of the stored engine ``path``, for the TensorRT and GPU of ``device``."""

    path: Path
    device: Any = None

    def __call__(self) -> bytes:
        from deepis_rt.backends.trt.cache import load_engine_bytes  # hashing and manifests: only when loading

        return load_engine_bytes(self.path, env=current_engine_env(self.device))


@dataclass(frozen=True)
class EngineFromOnnx:
    """Verified plan bytes of the engine of ``onnx`` (cached under ``engines_dir``, built when absent or stale).

    ``onnx_fp32`` is the FP32 graph that TensorRT < 10.12 parses for FP16 engines (builder flag).
    """

    onnx: Path
    engines_dir: Path
    precision: str
    profile: EngineProfile
    onnx_fp32: Path | None = None
    device: Any = None

    def __call__(self) -> bytes:
        from deepis_rt.backends.trt.build import (
            get_engine,  # the build machinery: only when an engine is needed
        )

        build = get_engine(self.onnx, self.engines_dir, self.precision, self.profile,
                           onnx_fp32_path=self.onnx_fp32, device=self.device)
        assert build.data is not None  # get_engine returns the verified bytes
        return build.data


def engine_for_model(model: ModelFiles, engines_dir: str | Path, batch: tuple[int, int, int],
                     precision: str | None = None, device: str = "cuda:0") -> Callable[[], bytes]:
    """A lazy loader of verified engine bytes of ``model`` for ``device``.

    A model's own engine (an export folder's) is checked against its manifest (key, TensorRT
    version, the GPU of ``device``, checksum); otherwise the engine of this ONNX graph, TensorRT,
    GPU, precision and profile (``batch`` = min, opt, max) comes from ``engines_dir`` or is built
    (minutes). FP16 comes from the FP16 graph (strongly typed TensorRT) or, on TensorRT < 10.12, from
    the FP32 graph with the FP16 builder flag; ``precision="fp32"`` gives a true FP32 engine (TF32 off).
    """

    def load() -> bytes:
        engine = getattr(model, "engine", None)
        if engine is not None:
            return EngineFromCache(Path(engine), device)()
        env = current_engine_env(device)
        fp16_graph = model.onnx_fp16() if precision != "fp32" else None
        fp16 = precision != "fp32" and (fp16_graph is not None or build_mode(env.trt_version, "fp16") == "builder-flag")
        fp32_graph = model.onnx_fp32()
        if precision != "fp32" and not fp16:
            log.info("load | TensorRT %s builds FP16 from an FP16 ONNX graph, which %s lacks; building FP32",
                     env.trt_version, getattr(model, "path", "this model"))
        onnx = fp16_graph if (fp16 and fp16_graph is not None) else fp32_graph
        profile = profile_from_batch(batch, model.tile_zyx)
        return EngineFromOnnx(Path(onnx), Path(engines_dir), "fp16" if fp16 else "fp32", profile,
                              onnx_fp32=Path(fp32_graph), device=device)()

    return load


def deserialize_engine(data: bytes, device: Any = None) -> Any:
    """``trt.ICudaEngine`` from verified plan bytes (see :func:`~deepis_rt.backends.trt.cache.load_engine_bytes`), on ``device``."""
    trt = import_optional("tensorrt", "running TensorRT engines")
    with device_scope(cuda_device_index(device)):
        runtime = trt.Runtime(make_logger(trt))
        engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise EngineCacheError("engine cache | TensorRT could not deserialize the engine (built by "
                               "another TensorRT version or for another GPU?); rebuild it")
    return engine


# -- the registered backend ---------------------------------------------------------------------
def probe(request: RunnerRequest) -> str | None:
    if not facts.tensorrt_available():
        return f"TensorRT is not installed ({TRT_INSTALL_HINT})"
    model = request.model
    if model is not None and getattr(model, "engine", None) is None and not (
            getattr(model, "has_onnx", True) or getattr(model, "has_network", True)):
        return "no engine, ONNX file or checkpoint to build one from"
    return None


def make_runner(request: RunnerRequest) -> TensorRTRunner:
    if request.model is None:
        raise BackendError("tensorrt: needs a model (an engine, an ONNX file or a checkpoint)")
    loader = engine_for_model(request.model, request.engines_dir, request.batch_profile, request.precision,
                              device=request.cuda_device)
    return TensorRTRunner(loader, device=request.cuda_device)


SPEC = BackendSpec(
    name="tensorrt", device="cuda", precisions=("fp16", "fp32"), probe=probe, factory=make_runner,
    family="tensorrt", auto_rank=10,
    summary="a native TensorRT engine (built once per ONNX graph, TensorRT, GPU, precision and profile)")
