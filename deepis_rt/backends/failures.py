"""Two kinds of failure: *permanent* (the input or the set-up is bad) and *transient* (try later).

Every place that processes frames (``deepis-rt stream``, ``deepis-rt batch``, the
:class:`~deepis_rt.stream.Stream` API) asks :func:`is_transient` what to do with an exception:

* **permanent** -- the input itself is bad (unreadable, wrong shape, implausible values) or the
  model/server is mis-configured (unknown model, wrong tensor names): the frame is recorded
  ``failed`` at once, as retrying cannot help;
* **transient** -- the backend or its server is unavailable, timed out, is overloaded or ran out
  of memory: the frame waits and is tried again (:mod:`deepis_rt.stream.retry`).

Out of memory is classified by its cause. An allocation larger than the whole memory of the
machine (host RAM for NumPy / Python, the GPU's total capacity as PyTorch reports it) can never
succeed: the frame is ``failed`` (a :class:`~deepis_rt.errors.VolumeTooLargeError`), and a restart
does not read it again. Only an allocation that would fit an idle machine -- memory taken by other
work, a GPU temporarily full -- is transient. (Frames are bounded before any allocation, see
:func:`deepis_rt.runtime.preprocess.check_frame_memory`; this is the net under that bound.)

The classification lives here and in the exception types of :mod:`deepis_rt.errors`:
runners raise :class:`~deepis_rt.errors.TransientBackendError` (or its subclasses) for what they
know to be transient (the Triton runner for refused connections, timeouts and HTTP 429/502/503/504);
:func:`classify` recognises what the libraries under the runners raise themselves (PyTorch's
``torch.cuda.OutOfMemoryError``, its CPU allocator's failure, ONNX Runtime's allocation failures,
``MemoryError``), so a
runner can turn them into typed errors with one call (:meth:`Runner.infer` does).
"""

from __future__ import annotations

import os
import re

from deepis_rt.errors import BackendOutOfMemoryError, DeepisError, TransientBackendError, VolumeTooLargeError

__all__ = ["classify", "is_transient", "is_out_of_memory", "never_fits", "host_memory_bytes"]

# ONNX Runtime (CPU arena, CUDA / cuDNN / cuBLAS / TensorRT execution providers) reports an
# allocation failure only in the text of its RuntimeException / Fail / EPFail
_ORT_OOM = re.compile(
    r"failed to allocate memory|out of memory|bad_alloc|bad allocation|cudaErrorMemoryAllocation|"
    r"CUDNN_STATUS_ALLOC_FAILED|CUBLAS_STATUS_ALLOC_FAILED|CUDA failure 2\b",
    re.IGNORECASE,
)


def _is_library_oom(exc: BaseException) -> bool:
    """An out-of-memory error raised by PyTorch, ONNX Runtime or Python itself."""
    if isinstance(exc, MemoryError):
        return True
    cls = type(exc)
    module = cls.__module__ or ""
    if module.startswith("torch") and cls.__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
        return True
    if module.startswith("onnxruntime"):
        return bool(_ORT_OOM.search(str(exc)))
    if isinstance(exc, RuntimeError) and "DefaultCPUAllocator: can't allocate memory" in str(exc):  # PyTorch, CPU
        return True
    return False


# PyTorch on the CPU: "DefaultCPUAllocator: can't allocate memory: you tried to allocate 40000000000 bytes"
_TORCH_CPU_REQUEST = re.compile(r"DefaultCPUAllocator: can't allocate memory: you tried to allocate (\d+) bytes")
# PyTorch: "Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.11 GiB of which ..."
_TORCH_REQUEST = re.compile(r"Tried to allocate ([\d.]+) ?([KMGTP]i?B|B|bytes)", re.IGNORECASE)
_TORCH_TOTAL = re.compile(r"total capacity of ([\d.]+) ?([KMGTP]i?B|B|bytes)", re.IGNORECASE)
_UNITS = {"b": 1, "bytes": 1, "kb": 1024, "kib": 1024, "mb": 1024**2, "mib": 1024**2, "gb": 1024**3, "gib": 1024**3,
          "tb": 1024**4, "tib": 1024**4, "pb": 1024**5, "pib": 1024**5}


def host_memory_bytes() -> int | None:
    """Physical memory of this machine in bytes, or None where the system does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None


def _bytes(match: re.Match | None) -> float | None:
    return None if match is None else float(match.group(1)) * _UNITS[match.group(2).lower()]


def _gib(n: float) -> str:
    return f"{n / 1024**3:,.3g} GiB"


def never_fits(exc: BaseException) -> str | None:
    """Why the allocation that failed in ``exc`` can never succeed on this machine, or None.

    Recognised: NumPy's allocation error (it carries the requested size) and PyTorch's CPU allocator
    error asking for more than the host's physical memory, and PyTorch's CUDA out-of-memory asking
    for more than the GPU's total capacity. Anything else (no size known, or a size that fits an idle machine) is None: transient.
    """
    for e in _chain(exc):
        requested = getattr(e, "_total_size", None) if isinstance(e, MemoryError) else None
        cpu = _TORCH_CPU_REQUEST.search(str(e)) if isinstance(e, RuntimeError) else None
        if cpu is not None:
            requested = int(cpu.group(1))
        if isinstance(requested, int):
            total = host_memory_bytes()
            if total is not None and requested > total:
                return f"an array of {_gib(requested)} is asked for; this machine has {_gib(total)} of memory in all"
        if type(e).__name__ == "OutOfMemoryError" and (type(e).__module__ or "").startswith("torch"):
            text = str(e)
            requested_f, total_f = _bytes(_TORCH_REQUEST.search(text)), _bytes(_TORCH_TOTAL.search(text))
            if requested_f is not None and total_f is not None and requested_f > total_f:
                return (f"{_gib(requested_f)} is asked for at once; the GPU has {_gib(total_f)} in all")
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen and len(seen) < 16:
        seen.append(cur)
        cur = cur.__cause__ or cur.__context__
    return seen


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a :class:`~deepis_rt.errors.BackendOutOfMemoryError` or a library's out-of-memory error
    (anywhere in the ``__cause__`` chain)."""
    return any(isinstance(e, BackendOutOfMemoryError) or _is_library_oom(e) for e in _chain(exc))


def is_transient(exc: BaseException) -> bool:
    """Whether trying ``exc``'s frame again later may succeed.

    A DeepisError's own ``transient`` attribute decides (False unless it is a
    :class:`~deepis_rt.errors.TransientBackendError`): a permanent error of this package wrapping a
    transient cause stays permanent. Library errors count as transient when they report running
    out of memory, unless the allocation can never succeed here (:func:`never_fits`).
    """
    if isinstance(exc, DeepisError):
        return bool(getattr(exc, "transient", False))
    return is_out_of_memory(exc) and never_fits(exc) is None


def classify(exc: BaseException, where: str) -> BaseException:
    """``exc`` as a typed error of this package where it is a library's transient failure, else ``exc``.

    Parameters
    ----------
    exc : BaseException
        What a backend raised.
    where : str
        Prefix of the message (e.g. the runner's name).

    Returns
    -------
    BaseException
        A :class:`~deepis_rt.errors.BackendOutOfMemoryError` for an out-of-memory error of
        PyTorch / ONNX Runtime / Python (raise it ``from exc``); a permanent
        :class:`~deepis_rt.errors.VolumeTooLargeError` when that allocation can never succeed
        here (:func:`never_fits`); or ``exc`` itself.
    """
    if isinstance(exc, (DeepisError, TransientBackendError)):
        return exc
    if is_out_of_memory(exc):
        reason = never_fits(exc)
        if reason is not None:
            return VolumeTooLargeError(f"{where}: out of memory that waiting cannot cure: {reason}; "
                                       "the frame is failed: crop or bin it, or use a smaller tile batch")
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return BackendOutOfMemoryError(
            f"{where}: out of memory ({type(exc).__name__}: {first[:300]}); "
            "the batch is split and retried, the frame waits for memory to free up"
        )
    return exc
