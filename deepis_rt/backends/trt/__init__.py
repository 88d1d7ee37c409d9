"""TensorRT: engine description (:mod:`.profile`), machine facts (:mod:`.env`), cache key and verified
cache (:mod:`.cache`), build (:mod:`.build`), lazy loaders and the registered backend (:mod:`.loader`),
and the runner (:mod:`.runner`)."""

from deepis_rt.backends.trt.build import build_engine, get_engine
from deepis_rt.backends.trt.cache import (
    DEFAULT_WORKSPACE_GIB,
    ENGINE_FORMAT,
    EngineBuild,
    TimingCache,
    cache_key,
    load_engine_bytes,
    read_engine_manifest,
)
from deepis_rt.backends.trt.env import TRT_INSTALL_HINT, EngineEnv, current_engine_env, tensorrt_unavailable_reason
from deepis_rt.backends.trt.loader import EngineFromCache, EngineFromOnnx, deserialize_engine, engine_for_model
from deepis_rt.backends.trt.profile import EngineProfile, build_mode, profile_from_batch
from deepis_rt.backends.trt.runner import TensorRTRunner, run_engine

__all__ = [
    "TRT_INSTALL_HINT", "ENGINE_FORMAT", "DEFAULT_WORKSPACE_GIB", "EngineEnv", "EngineProfile", "EngineBuild",
    "TimingCache", "tensorrt_unavailable_reason", "current_engine_env", "profile_from_batch", "build_mode",
    "cache_key", "build_engine", "get_engine", "load_engine_bytes", "read_engine_manifest", "EngineFromCache",
    "EngineFromOnnx", "engine_for_model", "deserialize_engine", "TensorRTRunner", "run_engine",
]
