"""The one place where optional, heavy dependencies are imported.

TensorRT, CUDA helpers and other extras are imported lazily through
:func:`import_optional`, which raises :class:`~deepis_rt.errors.MissingDependencyError`
naming the pip extra to install. ``deepis-rt --help`` and every CPU path work
without them.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

from deepis_rt.errors import MissingDependencyError

log = logging.getLogger(__name__)

#: ``_EXTRAS`` value of a core dependency: installed with deepis-rt itself, so no extra names it; when it
#: is missing the installation is broken, and installing the package alone mends it.
CORE = "core"

#: module name -> (pip extra, :data:`CORE`, or None for a package no extra brings; what it is for)
_EXTRAS: dict[str, tuple[str | None, str]] = {
    "tensorrt": ("tensorrt", "building and running TensorRT engines"),
    "onnx": (CORE, "exporting ONNX models"),
    "onnxruntime": (CORE, "the ONNX Runtime backend"),
    # a core dependency only where OpenVINO publishes wheels (pyproject.toml)
    "openvino": (None, "the OpenVINO backend"),
    "onnxslim": ("simplify", "simplifying exported ONNX graphs"),
    "ray": ("cluster", "running archives on a Ray cluster"),
    "tritonclient": ("cluster", "serving from Triton Inference Server"),
    "hdf5plugin": ("formats", "reading compressed Tomocube TCF files"),
    "matplotlib": (CORE, "plots"),
    "napari": ("napari", "the napari plugin"),
    "magicgui": ("napari", "the napari plugin's widgets"),
    "dask": ("napari", "reading volumes lazily in the napari plugin"),
}


def import_optional(name: str, purpose: str | None = None) -> ModuleType:
    """Import ``name`` or raise an error that says how to install it.

    Parameters
    ----------
    name : str
        Module to import, e.g. ``"tensorrt"``.
    purpose : str, optional
        What the module is needed for; used in the error message.

    Raises
    ------
    MissingDependencyError
        If the module (or its top-level package) cannot be imported.
    """
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        top = name.split(".")[0]
        extra, default_purpose = _EXTRAS.get(top, (None, None))
        what = purpose or default_purpose or "this feature"
        if extra == CORE:
            hint = f"pip install {top} (a dependency of deepis-rt itself: the installation is incomplete)"
        elif extra:
            hint = f"pip install 'deepis-rt[{extra}]'"
        else:
            hint = f"pip install {top}"
        raise MissingDependencyError(
            f"{top} is not installed (needed for {what}); install it with: {hint}"
            f" [{type(exc).__name__}: {exc}]"
        ) from exc


def is_available(name: str) -> bool:
    """True when ``name`` can be imported (without raising)."""
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    except Exception as exc:  # a broken install is 'not available', with the reason logged
        log.debug("importing %s failed: %s", name, exc)
        return False
    return True
