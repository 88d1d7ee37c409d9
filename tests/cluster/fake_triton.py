"""A small in-process fake of Triton's HTTP/REST API (KServe v2), for tests only.

Serves one model of a repository written by ``write_triton_repository`` on 127.0.0.1 (loopback
only), computing ``distance`` with ONNX Runtime on the repository's ``model.onnx``. Speaks what
``tritonclient.http`` sends: JSON tensors and the binary tensor extension
(``Inference-Header-Content-Length``), gzip/deflate request bodies.
"""

from __future__ import annotations

import gzip
import json
import re
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

_ROUTE = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready|/config|/infer)?$")


class FakeTritonServer:
    """``with FakeTritonServer(repo, "tiny") as server: url = server.url``.

    Attributes
    ----------
    batch_shapes : list of tuple
        Shape of every inference request's input (to check batching).
    fail_infer : int
        The next this-many inference requests answer HTTP 500 with an error message.
    ready : bool
        What ``/v2/health/ready`` answers.
    """

    def __init__(self, repo: Path, model_name: str) -> None:
        import onnxruntime as ort

        from deepis_rt.cluster.triton_repo import load_model_config, model_config_to_dict

        self.model_name = model_name
        self.config = model_config_to_dict(load_model_config(Path(repo) / model_name))
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        self.session = ort.InferenceSession(str(Path(repo) / model_name / "1" / "model.onnx"), so,
                                            providers=["CPUExecutionProvider"])
        self.batch_shapes: list[tuple[int, ...]] = []
        self.fail_infer = 0
        self.ready = True
        self.threads: set[str] = set()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-triton", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"{host}:{port}"

    def __enter__(self) -> FakeTritonServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    # -- the API -------------------------------------------------------------------------------
    def _metadata(self) -> dict:
        def tensor(t: dict) -> dict:
            dims = [int(d) for d in t.get("dims", [])]
            return {"name": t["name"], "datatype": t["data_type"].replace("TYPE_", ""), "shape": [-1, *dims]}

        return {
            "name": self.model_name,
            "versions": ["1"],
            "platform": self.config.get("platform", ""),
            "inputs": [tensor(t) for t in self.config.get("input", [])],
            "outputs": [tensor(t) for t in self.config.get("output", [])],
        }

    def _infer(self, body: bytes, header_length: int | None) -> tuple[int, dict, bytes]:
        if self.fail_infer > 0:
            self.fail_infer -= 1
            return 500, {"error": "injected failure: CUDA out of memory"}, b""
        request = json.loads(body[:header_length] if header_length is not None else body)
        binary = body[header_length:] if header_length is not None else b""
        (inp,) = request["inputs"]
        if inp["name"] != "tomogram" or inp["datatype"] != "FP32":
            return 400, {"error": f"unexpected input {inp['name']} ({inp['datatype']})"}, b""
        shape = [int(s) for s in inp["shape"]]
        size = (inp.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            x = np.frombuffer(binary[:size], dtype="<f4").reshape(shape)
        else:
            x = np.asarray(inp["data"], dtype=np.float32).reshape(shape)
        dims = [int(d) for d in self.config["input"][0]["dims"]]
        mbs = int(self.config.get("max_batch_size", 0))
        if shape[0] > mbs or len(shape) != len(dims) + 1 or any(d not in (-1, s) for d, s in zip(dims, shape[1:], strict=False)):
            return 400, {"error": f"input shape {shape} does not match dims {dims} (max batch {mbs})"}, b""
        self.batch_shapes.append(tuple(shape))
        self.threads.add(threading.current_thread().name)
        y = self.session.run(["distance"], {"tomogram": x})[0].astype("<f4")
        outputs = request.get("outputs") or [{"name": "distance"}]
        want_binary = any((o.get("parameters") or {}).get("binary_data") for o in outputs) or (
            (request.get("parameters") or {}).get("binary_data_output"))
        out = {"name": "distance", "datatype": "FP32", "shape": list(y.shape)}
        reply = {"model_name": self.model_name, "model_version": "1", "outputs": [out]}
        if want_binary:
            data = y.tobytes()
            out["parameters"] = {"binary_data_size": len(data)}
            return 200, reply, data
        out["data"] = y.ravel().tolist()
        return 200, reply, b""

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Triton

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _reply(self, status: int, payload: dict | None = None, binary: bytes = b"") -> None:
                header = json.dumps(payload).encode() if payload is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream" if binary else "application/json")
                if binary:
                    self.send_header("Inference-Header-Content-Length", str(len(header)))
                self.send_header("Content-Length", str(len(header) + len(binary)))
                self.end_headers()
                self.wfile.write(header + binary)

            def _model(self) -> tuple[str | None, str | None, str | None]:
                m = _ROUTE.match(self.path.split("?")[0])
                return (m.group(1), m.group(2), m.group(3)) if m else (None, None, None)

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?")[0]
                if path in ("/v2/health/ready", "/v2/health/live"):
                    return self._reply(200 if server.ready else 503, {})
                name, version, what = self._model()
                if name is None:
                    return self._reply(404, {"error": f"unknown path {path}"})
                if name != server.model_name or version not in (None, "1"):
                    return self._reply(404 if what != "/ready" else 400,
                                       {"error": f"Request for unknown model: '{name}' is not found"})
                if what == "/ready":
                    return self._reply(200, {})
                if what == "/config":
                    return self._reply(200, server.config)
                if what is None:
                    return self._reply(200, server._metadata())
                return self._reply(405, {"error": "use POST for infer"})

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path == "/v2/repository/index":
                    return self._reply(200, [{"name": server.model_name, "version": "1", "state": "READY"}])
                name, version, what = self._model()
                if what != "/infer":
                    return self._reply(404, {"error": f"unknown path {self.path}"})
                if name != server.model_name:
                    return self._reply(400, {"error": f"Request for unknown model: '{name}' is not found"})
                encoding = self.headers.get("Content-Encoding")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                length = self.headers.get("Inference-Header-Content-Length")
                try:
                    status, payload, binary = server._infer(body, int(length) if length is not None else None)
                except Exception as exc:  # a bug in a request: answer as Triton would
                    status, payload, binary = 400, {"error": f"{type(exc).__name__}: {exc}"}, b""
                self._reply(status, payload, binary)

        return Handler
