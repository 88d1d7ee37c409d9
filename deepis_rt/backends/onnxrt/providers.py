"""ONNX Runtime execution providers: the options the runner passes, and proof that they were taken.

Two facts of ONNX Runtime shape this module:

* ``onnxruntime.get_available_providers()`` lists the CUDA and TensorRT providers of an
  ``onnxruntime-gpu`` wheel even when their libraries (CUDA, cuDNN, TensorRT) cannot be loaded.
  The session is then created on the CPU, with only a warning on the native log, and the
  Python wrapper additionally retries a failed GPU session on the CPU (``enable_fallback``).
  :func:`check_registered` compares what the session really registered with what was asked
  and turns a silent fallback into a :class:`~deepis_rt.errors.BackendError` that carries
  ONNX Runtime's own reason (captured by :class:`NativeStderr`).
* Provider options are strings. The CUDA provider parses integers (``"0"`` / ``"1"``), the
  Python binding of the TensorRT provider parses booleans as ``"True"`` / ``"False"``; the
  builders below write each in its provider's syntax (checked against the documented option
  names in ``tests/runtime/test_ort_provider_options.py``).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepis_rt.errors import BackendError

__all__ = ["PROVIDER_NAMES", "cuda_provider_options", "tensorrt_provider_options", "profile_shapes",
           "NativeStderr", "check_registered"]

log = logging.getLogger(__name__)

#: runner provider name -> ONNX Runtime execution provider
PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


def cuda_provider_options(device_id: int, stream_handle: int | None, allow_tf32: bool = False) -> dict[str, str]:
    """Options of the CUDA execution provider.

    Parameters
    ----------
    device_id : int
        GPU index.
    stream_handle : int, optional
        ``torch.cuda.Stream.cuda_stream`` of the runner's own (non-default) stream: the provider
        then enqueues its kernels there, so that copies on other streams overlap them. ONNX
        Runtime ignores 0 (the legacy default stream), so 0 is refused here.
    allow_tf32 : bool
        ``use_tf32``: let cuDNN / cuBLAS compute FP32 convolutions in TF32 (ONNX Runtime's default
        is on). Off by default so that "fp32" means FP32.
    """
    options = {"device_id": str(int(device_id)), "use_tf32": "1" if allow_tf32 else "0"}
    if stream_handle is not None:
        if int(stream_handle) == 0:
            raise BackendError("onnxruntime-cuda: the runner's stream is the legacy default stream (handle 0), "
                               "which ONNX Runtime does not accept as a user compute stream")
        options["has_user_compute_stream"] = "1"
        options["user_compute_stream"] = str(int(stream_handle))
    return options


def profile_shapes(input_name: str, shape: Sequence[int]) -> str:
    """One ``trt_profile_*_shapes`` value: ``"input:1x1x64x128x128"``."""
    if not input_name or any(c in input_name for c in ":,"):
        raise BackendError(f"onnxruntime-tensorrt: input name {input_name!r} cannot be written in a TensorRT profile")
    return f"{input_name}:" + "x".join(str(int(d)) for d in shape)


def tensorrt_provider_options(
    device_id: int,
    input_name: str,
    profile: Any,
    cache_dir: str | os.PathLike,
    fp16: bool,
) -> dict[str, str]:
    """Options of the TensorRT execution provider: an explicit profile and caches under ``cache_dir``.

    Parameters
    ----------
    device_id : int
        GPU index.
    input_name : str
        The graph's input tensor.
    profile : EngineProfile or (min, opt, max)
        Input shapes ``(N, 1, Z, Y, X)``; the same profile the native TensorRT backend builds
        (:func:`deepis_rt.backends.trt.profile.profile_from_batch`), so a new batch size inside it
        never triggers a rebuild (minutes).
    cache_dir : path
        Engine and timing caches (created if missing).
    fp16 : bool
        ``trt_fp16_enable``.
    """
    if hasattr(profile, "min_shape"):
        lo, opt, hi = profile.min_shape, profile.opt_shape, profile.max_shape
    else:
        lo, opt, hi = profile
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    return {
        "device_id": str(int(device_id)),
        "trt_fp16_enable": "True" if fp16 else "False",
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache),
        "trt_profile_min_shapes": profile_shapes(input_name, lo),
        "trt_profile_opt_shapes": profile_shapes(input_name, opt),
        "trt_profile_max_shapes": profile_shapes(input_name, hi),
    }


class NativeStderr:
    """Capture what native code writes to file descriptor 2 (ONNX Runtime's default log) in a block.

    The text is written back to the real stderr afterwards, so nothing is hidden from the user;
    :attr:`text` keeps it for error messages.
    """

    def __init__(self) -> None:
        self.text = ""
        self._saved: int | None = None
        self._file: Any = None

    def __enter__(self) -> NativeStderr:
        try:
            self._file = tempfile.TemporaryFile(mode="w+b")
            self._saved = os.dup(2)
            os.dup2(self._file.fileno(), 2)
        except OSError:  # no fd 2 (embedded interpreter): capture nothing
            self._saved = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is None:
            return
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        data = self._file.read()
        self._file.close()
        self.text = data.decode("utf-8", errors="replace")
        if data:
            try:
                os.write(2, data)
            except OSError:
                pass


_REASON = re.compile(r"(fail|error|cannot|could not|unable|not found|no such|mismatch|require)", re.IGNORECASE)


def _reason_lines(text: str, limit: int = 4) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and _REASON.search(ln)]
    return " | ".join(lines[-limit:])


def check_registered(runner_name: str, session: Any, requested: Sequence[str], native_log: str = "") -> None:
    """Raise when ``session`` did not register every provider of ``requested``.

    Parameters
    ----------
    runner_name : str
        For the message, e.g. ``"onnxruntime-cuda"``.
    session : onnxruntime.InferenceSession
        A created session.
    requested : sequence of str
        Execution providers that must be registered (the CPU provider, always present as the
        fallback for a few shape operators, is not listed).
    native_log : str
        What ONNX Runtime wrote to stderr while the session was created (its reason, if any).

    Raises
    ------
    BackendError
        With the missing providers, the ones registered, and ONNX Runtime's reason.
    """
    registered = list(session.get_providers())
    missing = [p for p in requested if p not in registered]
    if not missing:
        return
    reason = _reason_lines(native_log) or "ONNX Runtime gave no reason on its log"
    raise BackendError(
        f"{runner_name}: ONNX Runtime did not register {', '.join(missing)} (the session would run on "
        f"{', '.join(registered) or 'nothing'}): {reason}. Check that the CUDA 12 / cuDNN 9 (and, for the "
        "TensorRT provider, TensorRT) libraries of this onnxruntime-gpu build can be loaded, e.g. by "
        "importing a CUDA build of torch first; refusing to run on the CPU while claiming the GPU"
    )
