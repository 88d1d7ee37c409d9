"""Exceptions raised by deepis-rt.

Every error the package raises on purpose derives from :class:`DeepisError`
and also from the matching built-in exception, so callers may catch either
``DeepisError`` (everything from this package) or e.g. ``ValueError``.

Messages say where, what, and what to do, e.g.::

    stream | frame_0042.tif: 2-D image, expected a 3-D volume (Z, Y, X); skipped
"""

from __future__ import annotations

__all__ = [
    "DeepisError",
    "ConfigError",
    "InputError",
    "ShapeError",
    "FileFormatError",
    "InputDtypeError",
    "NonFiniteInputError",
    "VolumeTooLargeError",
    "ImplausibleRIError",
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
    "ClusterError",
    "ClusterAuthError",
    "ResultsWriteError",
]


class DeepisError(Exception):
    """Root of every error raised on purpose by deepis-rt."""


class ConfigError(DeepisError, ValueError):
    """A configuration object or option has an invalid or unknown value."""


class InputError(DeepisError, ValueError):
    """An input volume or file is not usable (dimensions, dtype, NaN/Inf, size)."""


class FileFormatError(InputError):
    """A file cannot be read: unsupported type, corrupt, truncated or of an unexpected layout."""


class ShapeError(InputError):
    """A spatial size the network cannot process (e.g. not a multiple of 16)."""


class InputDtypeError(InputError, TypeError):
    """An input volume of a non-numeric dtype (bool, complex, object, strings)."""


class NonFiniteInputError(InputError):
    """An input volume holding NaN or infinite values."""


class VolumeTooLargeError(InputError):
    """An input volume too large to process (over the runtime's voxel limit)."""


class ImplausibleRIError(InputError):
    """A volume whose values cannot be refractive indices (outside about 1.0-2.0 after decoding).

    Raised instead of passing such a volume to the network; the message gives the observed
    range and how to state the file's scaling (``--ri-scale`` / ``--ri-offset``).
    """


class CheckpointError(DeepisError, ValueError):
    """A checkpoint file is missing, malformed, tampered with or of an unknown format."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds something other than tensors and plain containers.

    Such a file is refused without running any of its content.
    """


class MissingDependencyError(DeepisError, ImportError):
    """An optional dependency (TensorRT, CUDA, ...) is not installed."""


class BackendError(DeepisError, RuntimeError):
    """An inference backend cannot be used or failed at run time.

    The ``transient`` class attribute tells the two kinds of failure apart: False (here) for a
    failure that will happen again with the same input and set-up (bad model, wrong tensor
    names, bad input), True (:class:`TransientBackendError`) for one that may pass by itself.
    """

    #: whether trying again later may succeed (see :func:`deepis_rt.backends.failures.is_transient`)
    transient: bool = False


class TransientBackendError(BackendError):
    """A backend failure that may pass by itself: server unavailable, timed out, overloaded,
    out of memory. Streams and batches retry such frames (``retry_for_s``) instead of failing them.
    """

    transient = True


class BackendUnavailableError(TransientBackendError, ConnectionError):
    """The inference server cannot be reached, is restarting, overloaded or timed out."""


class BackendOutOfMemoryError(TransientBackendError, MemoryError):
    """The device (GPU) or host ran out of memory for a batch; a smaller batch may fit."""


class ExportError(DeepisError, RuntimeError):
    """Export to ONNX or TensorRT failed."""


class ParityError(ExportError):
    """An exported model disagrees with PyTorch beyond the documented tolerance."""


class EngineCacheError(DeepisError, RuntimeError):
    """A cached TensorRT engine or its manifest does not match or is corrupt."""


class ClusterError(DeepisError, ConnectionError):
    """A Ray cluster cannot be used from here: none running, wrong address, other Ray version."""


class ClusterAuthError(ClusterError):
    """A Ray cluster requires token authentication and no token it accepts is available here."""


class ResultsWriteError(DeepisError, OSError):
    """A stream's results folder cannot be written (disk full, permissions, folder removed).

    The stream stops: frames in flight are not committed, and the next run on the same folder
    processes every frame that was not committed.
    """
