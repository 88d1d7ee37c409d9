"""OpenVINO runner: the CPU plugin, FP32 (exact) or BF16 (where the CPU has it), from the ONNX export.

The network is read from the same FP32 ONNX graph ONNX Runtime runs and compiled for OpenVINO's
CPU device with a static batch of one tile. A batch of N tiles becomes N asynchronous infer
requests (a small pool, started with ``start_async`` and collected in order with ``wait``): with
the ``"latency"`` hint they run one after another on all threads (one CPU stream), with the
``"throughput"`` hint several run at once, one per CPU stream. :meth:`OpenVINORunner.infer_stream`
keeps requests in flight across batches, so the next batch is normalised while the current one is
computed, and several frames of a stream are in flight.

The requests are waited for by the calling thread rather than through Python completion
callbacks (``AsyncInferQueue``): a callback needs the GIL on OpenVINO's thread, and waiting for the
queue while holding the GIL can deadlock against it.

Compiled models are kept in OpenVINO's model cache (``CACHE_DIR``), by default
``<deepis-rt cache>/openvino``; OpenVINO keys each blob by a hash of the model, the device, the
compile options and its own version, and recompiles when any of them differs.

Precision: ``"fp32"`` sets ``INFERENCE_PRECISION_HINT=f32`` (OpenVINO's CPU default would be BF16
on CPUs that have it, which changes the numbers); ``"bf16"`` is accepted only where the CPU
device lists ``BF16`` in ``OPTIMIZATION_CAPABILITIES`` (AVX512_BF16 or AMX), and refused with a
:class:`~deepis_rt.errors.BackendError` elsewhere.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt._optional import import_optional, is_available
from deepis_rt.backends.base import Runner, as_numpy_batch
from deepis_rt.backends.onnxrt.runner import physical_cores
from deepis_rt.errors import BackendError, ConfigError

__all__ = ["OpenVINORunner", "openvino_available", "cpu_capabilities", "bf16_unavailable_reason",
           "PRECISIONS", "HINTS"]

log = logging.getLogger(__name__)

#: deepis-rt precision -> OpenVINO INFERENCE_PRECISION_HINT
PRECISIONS = {"fp32": "f32", "bf16": "bf16"}
#: deepis-rt hint -> OpenVINO PERFORMANCE_HINT
HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}


def openvino_available() -> bool:
    """The ``openvino`` package imports."""
    return is_available("openvino")


@functools.lru_cache(maxsize=1)
def cpu_capabilities() -> tuple[str, ...]:
    """``OPTIMIZATION_CAPABILITIES`` of OpenVINO's CPU device, e.g. ``("FP32", "INT8", "BF16", ...)``.

    Raises
    ------
    MissingDependencyError
        OpenVINO is not installed.
    """
    ov = import_optional("openvino", "the OpenVINO backend")
    return tuple(str(c) for c in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def bf16_unavailable_reason() -> str | None:
    """None when OpenVINO can run BF16 on this CPU, else why not."""
    if not openvino_available():
        return "OpenVINO is not installed (pip install openvino)"
    try:
        caps = cpu_capabilities()
    except Exception as exc:  # a broken install must not look like a BF16 CPU
        return f"OpenVINO could not query the CPU ({type(exc).__name__}: {exc})"
    if "BF16" not in caps:
        return (f"this CPU has no BF16 support (OpenVINO reports {', '.join(caps) or 'no capabilities'}; "
                "BF16 needs AVX512_BF16 or AMX)")
    return None


class _Job:
    """One batch in flight: its output, and how many of its tiles are still running."""

    def __init__(self, batch: np.ndarray) -> None:
        self.out = np.empty_like(batch)
        self.remaining = batch.shape[0]


class OpenVINORunner(Runner):
    """Run an exported DeepIS ONNX graph with OpenVINO on the CPU.

    Parameters
    ----------
    model : path, bytes or callable
        An ``.onnx`` file, its bytes, or a callable returning either (lazy loader).
    precision : {"fp32", "bf16"}
        ``"fp32"``: exact (``INFERENCE_PRECISION_HINT=f32``). ``"bf16"``: bfloat16 arithmetic,
        only on CPUs whose OpenVINO CPU device reports ``BF16``; elsewhere activation raises
        :class:`~deepis_rt.errors.BackendError`.
    num_threads : int, optional
        ``INFERENCE_NUM_THREADS``; default: the physical cores this process may use.
    hint : {"latency", "throughput"}
        ``PERFORMANCE_HINT``. Latency: one CPU stream, every thread on one tile (the fastest
        single frame). Throughput: several streams with fewer threads each, tiles of a batch (and
        frames of a stream) run at the same time.
    num_requests : int, optional
        Infer requests kept in flight; default: OpenVINO's ``OPTIMAL_NUMBER_OF_INFER_REQUESTS``
        for the hint (1 for latency), at least 2 so that the next batch is prepared while one runs.
    cache_dir : path, optional
        OpenVINO model cache (``CACHE_DIR``) for compiled models; None disables it.
    """

    def __init__(
        self,
        model: str | os.PathLike | bytes | Callable[[], Any],
        precision: str = "fp32",
        num_threads: int | None = None,
        hint: str = "latency",
        num_requests: int | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ConfigError(f"openvino runner: precision must be one of {sorted(PRECISIONS)}, got {precision!r} "
                              "(FP16 is a GPU precision)")
        if hint not in HINTS:
            raise ConfigError(f"openvino runner: hint must be 'latency' or 'throughput', got {hint!r}")
        if num_threads is not None and int(num_threads) < 1:
            raise ConfigError(f"openvino runner: num_threads must be >= 1, got {num_threads}")
        if num_requests is not None and int(num_requests) < 1:
            raise ConfigError(f"openvino runner: num_requests must be >= 1, got {num_requests}")
        self._model_source = model
        self.precision = precision
        self.num_threads = None if num_threads is None else int(num_threads)
        self.hint = hint
        self.num_requests = None if num_requests is None else int(num_requests)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.name = "openvino-cpu"
        self.compiled: Any = None
        self._free: deque[Any] = deque()  # idle infer requests
        self._in_flight: deque[tuple[Any, _Job, int]] = deque()  # (request, job, tile index), oldest first
        self._n_requests = 0

    # -- lifecycle ---------------------------------------------------------------------------
    def _read_model(self, core: Any) -> Any:
        source = self._model_source
        if callable(source):
            source = source()
        if isinstance(source, (bytes, bytearray)):
            # OpenVINO's ONNX reader takes a file; the bytes live only as long as the reading
            with tempfile.TemporaryDirectory(prefix="deepis-ov-") as tmp:
                path = Path(tmp) / "model.onnx"
                path.write_bytes(bytes(source))
                return core.read_model(str(path))
        if not Path(source).is_file():
            raise BackendError(f"{self.name}: no such ONNX file: {source}")
        return core.read_model(str(source))

    def activate_impl(self) -> None:
        ov = import_optional("openvino", "the OpenVINO backend")
        if self.precision == "bf16":
            why = bf16_unavailable_reason()
            if why is not None:
                raise BackendError(f"{self.name}: precision 'bf16' is not available: {why}; "
                                   "use precision='fp32' (exact) on this machine")
        core = ov.Core()
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(self.cache_dir)})
        model = self._read_model(core)
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise BackendError(f"{self.name}: expected one input and one output, got "
                               f"{len(model.inputs)} and {len(model.outputs)}")
        shape = model.input(0).get_partial_shape()
        if shape.rank.is_dynamic or shape.rank.get_length() != 5:
            raise BackendError(f"{self.name}: expected a (N, 1, Z, Y, X) input, got {shape}")
        spatial = [shape[i] for i in range(2, 5)]
        if all(d.is_static for d in spatial):
            self.fixed_spatial_zyx = tuple(int(d.get_length()) for d in spatial)
        # a static batch of one: OpenVINO picks its fastest kernels for static shapes, and a batch
        # becomes several requests (run together with the throughput hint)
        model.reshape({model.input(0): ov.PartialShape([1, 1, *spatial])})
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": PRECISIONS[self.precision],
            "PERFORMANCE_HINT": HINTS[self.hint],
            "INFERENCE_NUM_THREADS": int(self.num_threads or physical_cores()),
        }
        if self.num_requests is not None:
            config["PERFORMANCE_HINT_NUM_REQUESTS"] = self.num_requests
        self.compiled = core.compile_model(model, "CPU", config)
        optimal = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self._n_requests = self.num_requests or max(2, optimal)
        self._free = deque(self.compiled.create_infer_request() for _ in range(self._n_requests))
        self._in_flight.clear()
        log.info("%s: compiled (%s, hint %s, %s threads, %s streams, %d requests%s)", self.name,
                 self.execution_precision(), self.hint, self.compiled.get_property("INFERENCE_NUM_THREADS"),
                 self.compiled.get_property("NUM_STREAMS"), self._n_requests,
                 f", model cache {self.cache_dir}" if self.cache_dir else "")

    def deactivate_impl(self) -> None:
        self._drain()
        self._free.clear()
        self.compiled = None

    def execution_precision(self) -> str:
        """The precision OpenVINO actually computes in (from the compiled model)."""
        if self.compiled is None:
            return self.precision
        value = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        name = str(value.to_string() if hasattr(value, "to_string") else value).lower()
        return {"f32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16"}.get(name, name)

    # -- inference ---------------------------------------------------------------------------
    def _finish_oldest(self) -> None:
        request, job, index = self._in_flight.popleft()
        try:
            request.wait()  # releases the GIL while OpenVINO computes
            job.out[index] = request.get_output_tensor(0).data[0]
        finally:
            self._free.append(request)
        job.remaining -= 1

    def _drain(self) -> None:
        """Wait for every request still running (their results are dropped)."""
        while self._in_flight:
            try:
                self._finish_oldest()
            except Exception as exc:  # already failing; nothing may stay running
                log.debug("%s: a dropped request failed: %s", self.name, exc)

    def _submit(self, batch: Any) -> _Job:
        x = as_numpy_batch(batch)
        job = _Job(x)
        for i in range(x.shape[0]):
            if not self._free:  # every request busy: collect the oldest (in order) to free one
                self._finish_oldest()
            request = self._free.popleft()
            try:
                request.start_async({0: x[i : i + 1]}, share_inputs=False)  # the input is copied
            except BaseException:
                self._free.append(request)
                raise
            self._in_flight.append((request, job, i))
        return job

    def _collect(self, job: _Job) -> np.ndarray:
        while job.remaining:
            self._finish_oldest()
        return job.out

    def _guarded(self, work: Callable[[], Any]) -> Any:
        try:
            return work()
        except BackendError:
            self._drain()
            raise
        except Exception as exc:
            self._drain()
            raise BackendError(f"{self.name}: inference failed: {type(exc).__name__}: {exc}") from exc

    def infer_impl(self, batch: Any) -> np.ndarray:
        return self._guarded(lambda: self._collect(self._submit(batch)))

    def infer_stream(self, batches: Iterable[Any]) -> Iterator[np.ndarray]:
        """Outputs of ``batches`` in order, with up to the runner's requests in flight.

        The next batch is taken from ``batches`` (normalised, by the Segmenter) while the
        previous one runs; outputs are yielded as soon as their batch is complete.
        """
        with self._lock:
            previous: _Job | None = None
            try:
                for batch in self._checked(batches):
                    job = self._guarded(lambda batch=batch: self._submit(batch))
                    if previous is not None:  # its tiles were started before this batch's
                        yield self._guarded(lambda previous=previous: self._collect(previous))
                    previous = job
                if previous is not None:
                    yield self._guarded(lambda previous=previous: self._collect(previous))
            finally:
                self._drain()  # a consumer that stops early leaves no request running

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"backend": self.name, "device": "cpu", "precision": self.precision,
                                "hint": self.hint}
        if self.compiled is not None:
            ov = import_optional("openvino")
            info.update({
                "openvino": ov.__version__,
                "execution_precision": self.execution_precision(),
                "threads": int(self.compiled.get_property("INFERENCE_NUM_THREADS")),
                "streams": int(self.compiled.get_property("NUM_STREAMS")),
                "infer_requests": self._n_requests,
                "model_cache": str(self.cache_dir) if self.cache_dir else None,
            })
        return info
