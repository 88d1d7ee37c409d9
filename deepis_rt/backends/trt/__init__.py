"""TensorRT: engine description (:mod:`.profile`), machine facts (:mod:`.env`), cache key and verified
cache (:mod:`.cache`), build (:mod:`.build`), lazy loaders and the registered backend (:mod:`.loader`),
and the runner (:mod:`.runner`).

The names below are importable from here; each module is imported on first use, so that choosing a
backend does not import the build machinery.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_LAZY: dict[str, str] = {
    **dict.fromkeys(("build_engine", "get_engine"), "build"),
    **dict.fromkeys(("DEFAULT_WORKSPACE_GIB", "ENGINE_FORMAT", "EngineBuild", "TimingCache", "cache_key",
                     "load_engine_bytes", "read_engine_manifest"), "cache"),
    **dict.fromkeys(("TRT_INSTALL_HINT", "EngineEnv", "current_engine_env", "tensorrt_unavailable_reason"), "env"),
    **dict.fromkeys(("EngineFromCache", "EngineFromOnnx", "engine_for_model", "deserialize_engine"), "loader"),
    **dict.fromkeys(("EngineProfile", "build_mode", "profile_from_batch"), "profile"),
    **dict.fromkeys(("TensorRTRunner", "run_engine"), "runner"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
