"""Two kinds of failure: *permanent* (the input or the set-up is bad) and *transient* (try later).

Every place that processes frames (``deepis-rt stream``, ``deepis-rt batch``, the
:class:`~deepis_rt.stream.Stream` API) asks :func:`is_transient` what to do with an exception:

* **permanent** -- the input itself is bad (unreadable, wrong shape, implausible values) or the
  model/server is mis-configured (unknown model, wrong tensor names): the frame is recorded
  ``failed`` at once, as retrying cannot help;
* **transient** -- the backend or its server is unavailable, timed out, is overloaded or ran out
  of memory: the frame waits and is tried again (:mod:`deepis_rt.stream.retry`).

The classification lives here and in the exception types of :mod:`deepis_rt.errors`:
runners raise :class:`~deepis_rt.errors.TransientBackendError` (or its subclasses) for what they
know to be transient (the Triton runner for refused connections, timeouts and HTTP 429/502/503/504);
:func:`classify` recognises what the libraries under the runners raise themselves (PyTorch's
``torch.cuda.OutOfMemoryError``, ONNX Runtime's allocation failures, ``MemoryError``), so a
runner can turn them into typed errors with one call (:meth:`Runner.infer` does).
"""

from __future__ import annotations

import re

from deepis_rt.errors import BackendOutOfMemoryError, DeepisError, TransientBackendError

__all__ = ["classify", "is_transient", "is_out_of_memory"]

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
    return False


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
    out of memory.
    """
    if isinstance(exc, DeepisError):
        return bool(getattr(exc, "transient", False))
    return is_out_of_memory(exc)


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
        PyTorch / ONNX Runtime / Python (raise it ``from exc``), or ``exc`` itself.
    """
    if isinstance(exc, (DeepisError, TransientBackendError)):
        return exc
    if is_out_of_memory(exc):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return BackendOutOfMemoryError(
            f"{where}: out of memory ({type(exc).__name__}: {first[:300]}); "
            "the batch is split and retried, the frame waits for memory to free up"
        )
    return exc
