"""Pin the public API: additions are deliberate, removals are breaking changes."""

import deepis_rt

EXPECTED = {
    "__version__",
    "build_model",
    "ModelConfig",
    "PRESETS",
    "complexity",
    "Checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "SynapseTracker",
    "load",
    "Segmenter",
    "FrameResult",
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
}


def test_all_pinned():
    assert set(deepis_rt.__all__) == EXPECTED
    assert len(deepis_rt.__all__) == len(set(deepis_rt.__all__))


def test_every_exported_name_resolves():
    for name in deepis_rt.__all__:
        assert getattr(deepis_rt, name) is not None, name


def test_errors_inherit_builtins():
    assert issubclass(deepis_rt.InputError, ValueError)
    assert issubclass(deepis_rt.ShapeError, deepis_rt.InputError)
    assert issubclass(deepis_rt.MissingDependencyError, ImportError)
    assert issubclass(deepis_rt.BackendError, RuntimeError)
    for name in deepis_rt.__all__:
        obj = getattr(deepis_rt, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, deepis_rt.DeepisError)
