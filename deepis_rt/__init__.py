"""deepis-rt: a fast, dependable runtime for DeepIS immunological-synapse segmentation.

Heavy modules (PyTorch, ONNX, ...) are imported on first use, so that
``import deepis_rt`` and ``deepis-rt --help`` stay fast.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from deepis_rt._version import __version__
from deepis_rt.errors import (
    BackendError,
    BackendOutOfMemoryError,
    BackendUnavailableError,
    CheckpointError,
    ConfigError,
    DeepisError,
    EngineCacheError,
    ExportError,
    FileFormatError,
    InputDtypeError,
    InputError,
    MissingDependencyError,
    NonFiniteInputError,
    ParityError,
    ShapeError,
    TransientBackendError,
    UnsafeCheckpointError,
    VolumeTooLargeError,
)

logging.getLogger(__name__).addHandler(logging.NullHandler())

# public name -> module that defines it (imported lazily)
_LAZY: dict[str, str] = {
    "build_model": "deepis_rt.model",
    "ModelConfig": "deepis_rt.model",
    "PRESETS": "deepis_rt.model",
    "complexity": "deepis_rt.model",
    "Checkpoint": "deepis_rt.checkpoint",
    "load_checkpoint": "deepis_rt.checkpoint",
    "save_checkpoint": "deepis_rt.checkpoint",
    "SynapseTracker": "deepis_rt.analysis",
    "load": "deepis_rt.runtime",
    "Segmenter": "deepis_rt.runtime",
    "FrameResult": "deepis_rt.runtime",
}

__all__ = [
    "__version__",
    # model and checkpoints
    "build_model",
    "ModelConfig",
    "PRESETS",
    "complexity",
    "Checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    # analysis
    "SynapseTracker",
    # runtime
    "load",
    "Segmenter",
    "FrameResult",
    # errors
    "DeepisError",
    "ConfigError",
    "InputError",
    "ShapeError",
    "FileFormatError",
    "InputDtypeError",
    "NonFiniteInputError",
    "VolumeTooLargeError",
    "CheckpointError",
    "UnsafeCheckpointError",
    "MissingDependencyError",
    "BackendError",
    "TransientBackendError",
    "BackendUnavailableError",
    "BackendOutOfMemoryError",
    "ExportError",
    "ParityError",
    "EngineCacheError",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'deepis_rt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
