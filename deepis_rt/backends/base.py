"""The runner contract every backend follows (after NVIDIA Polygraphy's ``BaseRunner``).

A runner turns a batch of normalised tomogram tiles ``(N, 1, Z, Y, X)`` float32 into the
signed distance map ``(N, 1, Z, Y, X)`` float32 (um) as a NumPy array. Public methods check
state and inputs; subclasses override the small ``*_impl`` methods only::

    with TorchRunner(checkpoint) as runner:       # activate() ... deactivate()
        distance = runner.infer(batch)

Expensive work (building a network, creating a session, deserialising an engine) happens in
:meth:`Runner.activate`, never in ``__init__``: a runner takes an object *or* a callable that
makes one (a lazy loader).

Thread-safety: :meth:`Runner.infer` holds a per-runner lock, so one runner may be shared by
several threads (calls are serialised). For concurrency on a GPU use one runner per thread
(or per CUDA stream).
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from deepis_rt.backends.failures import classify
from deepis_rt.errors import BackendError, InputError, ShapeError

__all__ = ["Runner", "as_numpy_batch"]

log = logging.getLogger(__name__)


def as_numpy_batch(batch: Any) -> np.ndarray:
    """A float32, C-contiguous NumPy view or copy of a (N, 1, Z, Y, X) batch (array or CPU tensor)."""
    if hasattr(batch, "detach") and hasattr(batch, "cpu"):  # a torch tensor
        batch = batch.detach().cpu().numpy()
    return np.ascontiguousarray(batch, dtype=np.float32)


class Runner(ABC):
    """Base class of every inference backend.

    Attributes
    ----------
    name : str
        Backend name, e.g. ``"torch-cpu"``, ``"onnxruntime-cpu"``, ``"tensorrt"``.
    fixed_spatial_zyx : tuple of int or None
        The only spatial size the backend accepts (a static ONNX graph or engine profile),
        or None when any multiple of :attr:`size_multiple` is accepted.
    spatial_range_zyx : ((Z, Y, X), (Z, Y, X)) or None
        Smallest and largest spatial size the backend accepts (e.g. a TensorRT optimisation
        profile), or None when any size is accepted. The Segmenter's tile planner keeps the
        model's tile whenever this range admits it.
    size_multiple : int
        Every spatial size must be a multiple of this (16 for the DeepIS U-Net).
    """

    name: str = "runner"

    def __init__(self) -> None:
        self.is_active = False
        self.fixed_spatial_zyx: tuple[int, int, int] | None = None
        self.spatial_range_zyx: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None
        self.size_multiple: int = 16
        self.inference_time_s: float | None = None
        self._lock = threading.RLock()

    # -- lifecycle ---------------------------------------------------------------------------
    def activate(self) -> Runner:
        """Do the expensive set-up (idempotent: a second call is a no-op with a debug message)."""
        with self._lock:
            if self.is_active:
                log.debug("%s: already active", self.name)
                return self
            try:
                self.activate_impl()
            except BackendError:
                raise
            except ImportError:
                raise
            except Exception as exc:
                raise BackendError(f"{self.name}: activation failed: {type(exc).__name__}: {exc}") from exc
            self.is_active = True
            return self

    def deactivate(self) -> None:
        """Release sessions, engines and device memory (a no-op when not active)."""
        with self._lock:
            if not self.is_active:
                return
            try:
                self.deactivate_impl()
            finally:
                self.is_active = False

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    # -- inference ---------------------------------------------------------------------------
    def infer(self, batch: Any) -> np.ndarray:
        """Run the network on one batch.

        Parameters
        ----------
        batch : array-like or torch.Tensor
            ``(N, 1, Z, Y, X)`` normalised RI, float32 (other float dtypes are converted).

        Returns
        -------
        numpy.ndarray
            ``(N, 1, Z, Y, X)`` float32 signed distance in um.
        """
        if not self.is_active:
            raise BackendError(f"{self.name}: infer() called before activate(); use `with runner:`")
        self._check_batch(batch)
        with self._lock:
            start = time.perf_counter()
            try:
                out = self.infer_impl(batch)
            except Exception as exc:  # out-of-memory of torch / ONNX Runtime -> a typed, transient error
                if classify(exc, self.name) is exc:
                    raise
                # the typed error is never bound to a local: its traceback holds this frame, so a local
                # would make a cycle keeping the failed call's (device) tensors alive until a collection
                raise classify(exc, self.name) from exc
            self.inference_time_s = time.perf_counter() - start
        out = np.asarray(out, dtype=np.float32)
        if out.shape != tuple(batch.shape):
            raise BackendError(
                f"{self.name}: output shape {out.shape} differs from the input shape {tuple(batch.shape)}"
            )
        return out

    def __call__(self, batch: Any) -> np.ndarray:
        return self.infer(batch)

    def infer_stream(self, batches: Iterable[Any]) -> Iterator[np.ndarray]:
        """Outputs of ``batches`` in order. GPU runners override this to overlap copies and compute."""
        for batch in batches:
            yield self.infer(batch)

    def _checked(self, batches: Iterable[Any]) -> Iterator[Any]:
        """``batches`` with each one checked as :meth:`infer` checks it (for streaming overrides)."""
        if not self.is_active:
            raise BackendError(f"{self.name}: infer_stream() called before activate(); use `with runner:`")
        for batch in batches:
            self._check_batch(batch)
            yield batch

    def _check_batch(self, batch: Any) -> None:
        shape = tuple(getattr(batch, "shape", ()))
        if len(shape) != 5 or shape[1] != 1:
            raise ShapeError(f"{self.name}: expected a (N, 1, Z, Y, X) batch, got shape {shape}")
        if shape[0] < 1:
            raise ShapeError(f"{self.name}: empty batch (N = 0)")
        dtype = getattr(batch, "dtype", None)
        if dtype is not None and "float" not in str(dtype):
            raise InputError(f"{self.name}: expected a floating-point batch, got dtype {dtype}")
        spatial = shape[2:]
        if self.fixed_spatial_zyx is not None and tuple(spatial) != tuple(self.fixed_spatial_zyx):
            raise ShapeError(
                f"{self.name}: this model accepts only tiles of {tuple(self.fixed_spatial_zyx)} (Z, Y, X), "
                f"got {tuple(spatial)}; the Segmenter tiles and pads automatically"
            )
        if self.spatial_range_zyx is not None:
            lo, hi = self.spatial_range_zyx
            if not all(a <= s <= b for a, s, b in zip(lo, spatial, hi, strict=True)):
                raise ShapeError(
                    f"{self.name}: tile {tuple(spatial)} (Z, Y, X) is outside the sizes this backend accepts, "
                    f"{tuple(lo)} to {tuple(hi)}; the Segmenter plans tiles inside that range automatically"
                )
        bad = [s for s in spatial if s % self.size_multiple]
        if bad:
            raise ShapeError(
                f"{self.name}: spatial size {tuple(spatial)} is not a multiple of {self.size_multiple}"
            )

    # -- subclass hooks ----------------------------------------------------------------------
    @abstractmethod
    def activate_impl(self) -> None:
        """Build / load the backend's executable."""

    @abstractmethod
    def infer_impl(self, batch: Any) -> np.ndarray:
        """Run one checked batch; return the distance as (N, 1, Z, Y, X) float32."""

    def deactivate_impl(self) -> None:  # noqa: B027 - optional hook
        """Free what :meth:`activate_impl` made."""

    def describe(self) -> dict[str, Any]:
        """Facts for logs and result summaries (backend, device, precision, ...)."""
        return {"backend": self.name}

    def __repr__(self) -> str:
        state = "active" if self.is_active else "inactive"
        return f"<{type(self).__name__} {self.name} ({state})>"
