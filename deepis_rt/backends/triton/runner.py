"""Triton Inference Server runner: the network runs on a (remote) Triton server over HTTP/REST.

The server holds a model repository written by ``deepis-rt export --triton REPO``
(:func:`deepis_rt.cluster.write_triton_repository`); this runner sends each batch of normalised
tiles as the named tensor ``tomogram`` and reads back ``distance`` with ``tritonclient.http``
(KServe v2 protocol, binary tensor extension by default). Pre- and post-processing stay on the
client, so ``stream`` / ``batch`` behave exactly as with a local backend.

Model metadata (voxel size, RI normalisation, tile) comes from the server: the
``deepis_rt.meta`` parameter of the model's ``config.pbtxt``. A local copy of the model
(``load(path, backend="triton")``) is needed only for repositories not written by deepis-rt; when
both exist they must agree.

``tritonclient.http`` is built on gevent, whose connections belong to the OS thread that made
them, so the runner keeps one client per thread (the stream's inference thread gets its own).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import threading
from typing import Any

import numpy as np

from deepis_rt._optional import import_optional
from deepis_rt.backends.base import Runner, as_numpy_batch
from deepis_rt.backends.triton.protocol import INPUT_NAME, META_PARAMETER, OUTPUT_NAME
from deepis_rt.errors import BackendError, BackendOutOfMemoryError, BackendUnavailableError, ConfigError

__all__ = ["TritonRunner", "TRITON_URL_ENV", "parse_triton_url", "server_error"]

log = logging.getLogger(__name__)

#: Environment variable read when no ``url`` is given.
TRITON_URL_ENV = "DEEPIS_TRITON_URL"


#: HTTP statuses (and gRPC codes) of a server that is there but cannot serve now
_TRANSIENT_STATUS = {"429", "502", "503", "504", "StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED",
                     "StatusCode.DEADLINE_EXCEEDED"}
# what Triton says when its queue is full, a queued request expired, or a Python backend's stub
# process died (the backend restarts it)
_TRANSIENT_TEXT = re.compile(r"exceeds maximum queue size|request timeout expired|timed out|is not healthy|"
                             r"server is not ready|unavailable", re.IGNORECASE)
_OOM_TEXT = re.compile(r"out of memory|failed to allocate|bad_alloc|CUDA failure 2\b", re.IGNORECASE)


def server_error(where: str, what: str, exc: Any) -> BackendError:
    """The typed error for a Triton server's error answer (``InferenceServerException``).

    Unavailable / overloaded / timed out (HTTP 429, 502, 503, 504 and their gRPC codes, a full
    queue, a restarting Python-backend stub) and out-of-memory answers are transient; anything
    else (unknown model, wrong tensor names or shapes, a model that raised) is permanent.
    """
    status = str(exc.status() or "") if hasattr(exc, "status") else ""
    message = (exc.message() if hasattr(exc, "message") else None) or str(exc)
    text = f"{where}: {what} failed: the server answered" + (f" [{status}]" if status else "") + f" {message}"
    if _OOM_TEXT.search(message):
        return BackendOutOfMemoryError(f"{text}; the server ran out of memory: the frame waits and is retried")
    if status in _TRANSIENT_STATUS or _TRANSIENT_TEXT.search(message):
        return BackendUnavailableError(f"{text}; the server is busy or restarting: the frame waits and is retried")
    hint = ""
    if "unknown model" in message.lower() or "not found" in message.lower() or "not ready" in message.lower():
        hint = "; check the model name (--model-name) and that the server loaded it (its log)"
    elif "input" in message.lower() or "output" in message.lower() or "tensor" in message.lower():
        hint = (f"; the model must take {INPUT_NAME!r} and return {OUTPUT_NAME!r} (float32): "
                "write it with `deepis-rt export CKPT --triton REPO`")
    return BackendError(text + hint)


def parse_triton_url(url: str | None) -> tuple[str, bool]:
    """``(host:port[/path], ssl)`` from ``host:port``, ``http://host:port`` or ``https://...``.

    None reads :data:`TRITON_URL_ENV`.
    """
    url = url or os.environ.get(TRITON_URL_ENV)
    if not url:
        raise ConfigError(
            f"triton | no server URL: pass url='host:8000' (CLI: --url host:8000) or set {TRITON_URL_ENV}"
        )
    ssl = url.startswith("https://")
    for scheme in ("http://", "https://"):
        if url.startswith(scheme):
            url = url[len(scheme):]
    url = url.rstrip("/")
    if not url or "://" in url:
        raise ConfigError(f"triton | {url!r} is not a server address (host:port)")
    return url, ssl


def _int_list(values: Any) -> list[int]:
    return [int(v) for v in (values or [])]


class TritonRunner(Runner):
    """Run the DeepIS network on a Triton Inference Server.

    Parameters
    ----------
    url : str, optional
        ``host:port`` of the server's HTTP endpoint (default port 8000); ``http://`` or
        ``https://`` prefixes are accepted. Default: ``$DEEPIS_TRITON_URL``.
    model_name : str
        Model name in the server's repository.
    model_version : str
        Version to use; ``""`` lets the server choose (its version policy).
    binary_data : bool
        Send and receive tensors with Triton's binary tensor extension (else JSON lists: slow,
        for debugging).
    compression : {None, "gzip", "deflate"}
        Compress request bodies (helps on slow links; costs CPU).
    connection_timeout_s, network_timeout_s : float
        Time to connect, and to wait for one response.
    headers : dict, optional
        Extra HTTP headers (e.g. an authorisation token of a proxy in front of the server).
    """

    name = "triton"

    def __init__(
        self,
        url: str | None = None,
        model_name: str = "deepis",
        model_version: str = "",
        *,
        binary_data: bool = True,
        compression: str | None = None,
        connection_timeout_s: float = 10.0,
        network_timeout_s: float = 300.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self.url, self.ssl = parse_triton_url(url)
        if compression not in (None, "gzip", "deflate"):
            raise ConfigError(f"triton | compression must be None, 'gzip' or 'deflate', got {compression!r}")
        self.model_name = str(model_name)
        self.model_version = str(model_version)
        self.binary_data = bool(binary_data)
        self.compression = compression
        self.connection_timeout_s = float(connection_timeout_s)
        self.network_timeout_s = float(network_timeout_s)
        self.headers = dict(headers or {})
        self.max_batch_size: int = 0
        self.model_config: dict[str, Any] = {}
        self.model_meta: dict[str, Any] = {}
        self._local = threading.local()
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()

    @property
    def where(self) -> str:
        return f"triton | {self.url} model {self.model_name!r}"

    # -- connections ---------------------------------------------------------------------------
    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            triton_http = import_optional("tritonclient.http", "serving from Triton Inference Server")
            client = triton_http.InferenceServerClient(
                self.url, ssl=self.ssl, connection_timeout=self.connection_timeout_s,
                network_timeout=self.network_timeout_s,
            )
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _drop_client(self) -> None:
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            with self._clients_lock:
                if client in self._clients:
                    self._clients.remove(client)
            try:
                client.close()
            except Exception:  # a broken connection may fail to close; it is dropped anyway
                pass

    def _call(self, what: str, fn: Any, retry: bool = True) -> Any:
        """Run ``fn(client)``; one reconnect on a dropped connection; errors say what to do.

        Raises :class:`~deepis_rt.errors.BackendUnavailableError` (transient) when the server cannot
        be reached, times out or answers that it is unavailable / overloaded, and a permanent
        :class:`~deepis_rt.errors.BackendError` when it refuses the request itself.
        """
        utils = import_optional("tritonclient.utils", "serving from Triton Inference Server")
        try:
            return fn(self._client())
        except utils.InferenceServerException as exc:
            raise server_error(self.where, what, exc) from None
        except (OSError, EOFError, http.client.HTTPException) as exc:  # refused, reset, timed out, closed
            self._drop_client()
            if retry:
                log.info("%s: %s: %s; reconnecting once", self.where, what, exc)
                return self._call(what, fn, retry=False)
            timed_out = isinstance(exc, TimeoutError) or "timed out" in str(exc).lower()
            reason = (f"no answer within {self.network_timeout_s:g} s" if timed_out
                      else f"cannot reach the server ({type(exc).__name__}: {exc})")
            raise BackendUnavailableError(
                f"{self.where}: {what} failed: {reason}; is tritonserver running there "
                f"(tritonserver --model-repository REPO) and port {self.url} open?"
            ) from None

    # -- lifecycle -----------------------------------------------------------------------------
    def activate_impl(self) -> None:
        import_optional("tritonclient.http", "serving from Triton Inference Server")
        headers = self.headers or None
        if not self._call("readiness check", lambda c: c.is_server_ready(headers=headers)):
            raise BackendUnavailableError(
                f"{self.where}: the server is up but not ready (starting, or still loading models); retry later")
        if not self._call("model check", lambda c: c.is_model_ready(self.model_name, self.model_version,
                                                                       headers=headers)):
            names = ""
            try:
                index = self._call("repository index", lambda c: c.get_model_repository_index(headers=headers))
                names = ", ".join(sorted(f"{m.get('name')} ({m.get('state', '?')})" for m in index))
            except BackendError:
                pass
            raise BackendError(
                f"{self.where}: model not ready on the server"
                + (f"; its repository holds: {names}" if names else "")
                + "; write it with `deepis-rt export CKPT --triton REPO` and check the server's log"
            )
        metadata = self._call("model metadata", lambda c: c.get_model_metadata(
            self.model_name, self.model_version, headers=headers))
        ins = {t["name"]: t for t in metadata.get("inputs", [])}
        outs = {t["name"]: t for t in metadata.get("outputs", [])}
        if INPUT_NAME not in ins or OUTPUT_NAME not in outs:
            raise BackendError(
                f"{self.where}: expected input {INPUT_NAME!r} and output {OUTPUT_NAME!r}, the model has "
                f"{sorted(ins)} -> {sorted(outs)}; is this a deepis-rt model?"
            )
        for tensor in (ins[INPUT_NAME], outs[OUTPUT_NAME]):
            if tensor.get("datatype") != "FP32":
                raise BackendError(f"{self.where}: tensor {tensor['name']!r} is {tensor.get('datatype')}, expected FP32")
        config = self._call("model config", lambda c: c.get_model_config(
            self.model_name, self.model_version, headers=headers))
        self.model_config = dict(config)
        self.max_batch_size = int(config.get("max_batch_size", 0) or 0)
        dims = next((_int_list(t.get("dims")) for t in config.get("input", []) if t.get("name") == INPUT_NAME), [])
        if not dims:
            dims = _int_list(ins[INPUT_NAME].get("shape"))[1:]
        elif self.max_batch_size == 0:
            dims = dims[1:]  # no batching: the batch axis is part of dims
        spatial = dims[-3:]
        if len(spatial) == 3 and all(d > 0 for d in spatial):
            self.fixed_spatial_zyx = tuple(spatial)  # type: ignore[assignment]
        params = config.get("parameters") or {}
        raw = (params.get(META_PARAMETER) or {}).get("string_value")
        self.model_meta = {}
        if raw:
            try:
                self.model_meta = json.loads(raw)
            except ValueError:
                log.warning("%s: the %s parameter is not JSON; ignored", self.where, META_PARAMETER)
        log.info("%s: ready (%s, max batch %d, tile %s)", self.where, config.get("platform") or config.get("backend"),
                 self.max_batch_size, self.fixed_spatial_zyx)

    def deactivate_impl(self) -> None:
        with self._clients_lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:
                pass
        self._local = threading.local()

    # -- inference -----------------------------------------------------------------------------
    def _infer_chunk(self, x: np.ndarray) -> np.ndarray:
        triton_http = import_optional("tritonclient.http", "serving from Triton Inference Server")

        def run(client: Any) -> np.ndarray:
            inp = triton_http.InferInput(INPUT_NAME, list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=self.binary_data)
            out = triton_http.InferRequestedOutput(OUTPUT_NAME, binary_data=self.binary_data)
            result = client.infer(
                self.model_name, [inp], model_version=self.model_version, outputs=[out],
                headers=self.headers or None, request_compression_algorithm=self.compression,
            )
            y = result.as_numpy(OUTPUT_NAME)
            if y is None:
                raise BackendError(f"{self.where}: the response holds no {OUTPUT_NAME!r} tensor")
            return y

        y = self._call(f"inference on a batch of {x.shape[0]}", run)
        return np.asarray(y, dtype=np.float32).reshape(x.shape) if y.size == x.size else y

    def infer_impl(self, batch: Any) -> np.ndarray:
        x = as_numpy_batch(batch)
        step = self.max_batch_size if self.max_batch_size > 0 else (1 if self._fixed_batch_one() else x.shape[0])
        if x.shape[0] <= step:
            return self._infer_chunk(x)
        return np.concatenate([self._infer_chunk(x[i:i + step]) for i in range(0, x.shape[0], step)], axis=0)

    def _fixed_batch_one(self) -> bool:
        dims = next((_int_list(t.get("dims")) for t in self.model_config.get("input", [])
                     if t.get("name") == INPUT_NAME), [])
        return bool(dims) and dims[0] == 1

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "device": f"remote ({self.url})",
            "url": self.url,
            "model": self.model_name,
            "model_version": self.model_version or "server default",
            "platform": self.model_config.get("platform") or self.model_config.get("backend"),
            "max_batch_size": self.max_batch_size,
            "binary_data": self.binary_data,
        }
