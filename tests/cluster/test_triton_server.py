"""Against a real Triton Inference Server (nvidia-pytriton's tritonserver 2.51, Python backend, CPU).

The server loads the repository written by ``deepis-rt export --triton REPO --triton-backend python``
(conftest.py), listens on free loopback ports only, and is killed and restarted by the tests that
need an outage.
"""

from __future__ import annotations

import csv
import json
import threading
import time

import numpy as np
import pytest
from cluster_helpers import TILE

pytest.importorskip("tritonclient.http", reason="needs tritonclient[http] (pip install 'deepis-rt[cluster]')")

from deepis_rt import load  # noqa: E402
from deepis_rt.backends.failures import is_transient  # noqa: E402
from deepis_rt.backends.triton.runner import TritonRunner, server_error  # noqa: E402
from deepis_rt.errors import BackendError  # noqa: E402

pytestmark = pytest.mark.slow


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 1, *TILE)).astype(np.float32)


def _local(export_dir, x):
    from deepis_rt.export.parity import run_onnxruntime

    return run_onnxruntime(export_dir / "tiny.fp32.onnx", x)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def server(triton_server):
    """The session's server, running again after a test that stopped it."""
    yield triton_server
    if not triton_server.running:
        triton_server.start(wait_s=120)


@pytest.fixture
def camera(tmp_path):
    """Eight small tomograms: two cells of RI 1.37 in medium 1.337."""
    from deepis_rt.io import write_tomogram

    cam = tmp_path / "cam"
    cam.mkdir()
    z, y, x = np.meshgrid(*[np.arange(n) for n in TILE], indexing="ij")
    for i in range(8):
        ri = np.full(TILE, 1.337, np.float32)
        ri[(z - 8) ** 2 + (y - 16) ** 2 + (x - 10 - i * 0.3) ** 2 < 36] = 1.37
        ri[(z - 8) ** 2 + (y - 16) ** 2 + (x - 22) ** 2 < 49] = 1.36
        write_tomogram(cam / f"frame_{i:04d}.npy", ri, (0.5, 0.25, 0.25), fmt="npy")
    return cam


# ---------------------------------------------------------------------------------------------
# the protocol: parity, dynamic batching, gRPC
# ---------------------------------------------------------------------------------------------


def test_runner_matches_local_onnxruntime(server, triton_python_repo):
    x = _batch(6)
    with TritonRunner(server.url, "tiny") as runner:
        assert runner.fixed_spatial_zyx == TILE and runner.max_batch_size == 8
        assert runner.describe()["platform"] == "python"
        y = runner.infer(x)
    np.testing.assert_allclose(y, _local(triton_python_repo[1], x), rtol=1e-5, atol=1e-6)


def test_grpc_protocol_serves_the_same(server, triton_python_repo):
    grpc = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[grpc]")
    x = _batch(2, seed=1)
    client = grpc.InferenceServerClient(server.grpc_url)
    try:
        inp = grpc.InferInput("tomogram", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        y = client.infer("tiny", [inp]).as_numpy("distance")
    finally:
        client.close()
    np.testing.assert_allclose(y, _local(triton_python_repo[1], x), rtol=1e-5, atol=1e-6)


def test_dynamic_batching_with_concurrent_clients(server, triton_python_repo):
    import tritonclient.http as triton_http

    stats_client = triton_http.InferenceServerClient(server.url)

    def counts():
        stats = stats_client.get_inference_statistics("tiny")["model_stats"][0]
        return int(stats["inference_count"]), int(stats["execution_count"])

    before = counts()
    n_clients, rounds = 6, 4
    inputs = {(c, r): _batch(1, seed=100 * c + r) for c in range(n_clients) for r in range(rounds)}
    outputs: dict = {}
    barrier = threading.Barrier(n_clients)

    def client(c: int) -> None:
        with TritonRunner(server.url, "tiny") as runner:
            for r in range(rounds):
                barrier.wait(30)
                outputs[c, r] = runner.infer(inputs[c, r])

    threads = [threading.Thread(target=client, args=(c,)) for c in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    deadline = time.monotonic() + 10
    while (after := counts())[0] - before[0] < n_clients * rounds and time.monotonic() < deadline:
        time.sleep(0.1)  # the server counts a request just after answering it
    stats_client.close()
    assert len(outputs) == n_clients * rounds
    x = np.concatenate([inputs[k] for k in sorted(inputs)])
    y = np.concatenate([outputs[k] for k in sorted(inputs)])
    np.testing.assert_allclose(y, _local(triton_python_repo[1], x), rtol=1e-5, atol=1e-6)
    inferences, executions = (a - b for a, b in zip(after, before, strict=True))
    assert inferences == n_clients * rounds
    assert executions < inferences  # the server's dynamic batcher ran requests of several clients together


# ---------------------------------------------------------------------------------------------
# errors: permanent ones are clear and not retried
# ---------------------------------------------------------------------------------------------


def test_model_not_loaded_is_a_clear_permanent_error(server):
    with pytest.raises(BackendError) as info:
        load(backend="triton", url=server.url, model_name="no-such-model")
    assert not is_transient(info.value)
    assert "no-such-model" in str(info.value) and "tiny" in str(info.value)  # names what the server has


def test_wrong_tensor_names_are_a_clear_permanent_error(server):
    import tritonclient.http as triton_http
    from tritonclient.utils import InferenceServerException

    client = triton_http.InferenceServerClient(server.url)
    inp = triton_http.InferInput("volume", [1, 1, *TILE], "FP32")
    inp.set_data_from_numpy(_batch(1))
    with pytest.raises(InferenceServerException) as info:
        client.infer("tiny", [inp])
    client.close()
    err = server_error("triton | test", "inference", info.value)
    assert not is_transient(err)
    assert "'tomogram'" in str(err) and "deepis-rt export" in str(err)


def test_stream_with_unknown_model_fails_at_once(server, camera, tmp_path):
    from click.testing import CliRunner

    from deepis_rt.cli import main

    t0 = time.monotonic()
    result = CliRunner().invoke(main, ["stream", "--source", str(camera), "--out", str(tmp_path / "out"),
                                       "--backend", "triton", "--url", server.url, "--model-name", "nope",
                                       "--once", "--retry-for", "60"])
    assert result.exit_code == 2, result.output
    assert "model not ready" in result.output and "nope" in result.output
    assert time.monotonic() - t0 < 30  # permanent: not retried for 60 s


# ---------------------------------------------------------------------------------------------
# outages: the server killed mid-stream
# ---------------------------------------------------------------------------------------------


def _crash_server_before_call(monkeypatch, server, call: int, then=None) -> dict:
    """Kill the server (SIGKILL) just before the client's ``call``-th inference request."""
    original = TritonRunner.infer_impl
    state = {"calls": 0, "killed_at": None}

    def infer_impl(self, batch):
        state["calls"] += 1
        if state["calls"] == call:
            server.kill()
            state["killed_at"] = time.monotonic()
            if then is not None:
                threading.Thread(target=then, daemon=True).start()
        return original(self, batch)

    monkeypatch.setattr(TritonRunner, "infer_impl", infer_impl)
    return state


def test_server_killed_and_restarted_mid_stream_loses_no_frame(server, camera, tmp_path, monkeypatch):
    from deepis_rt.stream import Stream

    segmenter = load(backend="triton", url=server.url, model_name="tiny")
    events, restarted = [], []

    def restart():  # back a few seconds after the crash
        time.sleep(2.0)
        server.start(wait_s=120)
        restarted.append(time.time())

    _crash_server_before_call(monkeypatch, server, call=2, then=restart)
    out = tmp_path / "out"
    stream = Stream(camera, out, segmenter, on_backend=events.append, once=True, settle_s=0.0,
                    poll_s=0.05, use_events=False, max_batch=1, write_masks=False, retry_for_s=120.0)
    results = list(stream.start())
    stream.close()
    segmenter.close()
    assert restarted, "the server was not restarted"
    assert [r.status for r in results] == ["ok"] * 8, [r.error for r in results]
    rows = _rows(out / "frames.csv")
    assert [(int(r["frame"]), r["source"], r["status"]) for r in rows] == [
        (i, f"frame_{i:04d}.npy", "ok") for i in range(8)]  # each frame once, in order
    assert [e.kind for e in events] == ["unavailable", "available"]
    assert events[0].waiting_frames >= 1


def test_server_down_past_retry_for_then_next_run_completes(server, camera, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from deepis_rt.cli import main

    out = tmp_path / "out"
    state = _crash_server_before_call(monkeypatch, server, call=3)  # down for good after two frames
    args = ["stream", "--source", str(camera), "--out", str(out), "--backend", "triton", "--url", server.url,
            "--model-name", "tiny", "--once", "--settle", "0", "--max-batch", "1", "--no-masks", "--jsonl"]
    first = CliRunner().invoke(main, [*args, "--retry-for", "1"])
    assert first.exit_code == 1, first.output  # frames wait for the next run: not done, for scripts
    assert state["killed_at"] is not None
    lines = [json.loads(line) for line in first.output.splitlines() if line.startswith("{")]
    events = [x for x in lines if "event" in x]
    assert [e["event"] for e in events] == ["backend_unavailable"]  # said once, not per frame
    assert events[0]["retry_for_s"] == 1 and events[0]["waiting_frames"] >= 1
    statuses = [x["status"] for x in lines if "frame" in x]
    assert statuses == ["ok", "ok"] + ["retry"] * 6
    rows = _rows(out / "frames.csv")
    n_retry = sum(r["status"] == "retry" for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_retry"] == n_retry and summary["frames_ok"] == 8 - n_retry

    server.start(wait_s=120)
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    redone = [json.loads(line) for line in second.output.splitlines() if line.startswith("{")]
    assert len(redone) == n_retry and all(x["status"] == "ok" for x in redone)
    rows = _rows(out / "frames.csv")
    assert [(int(r["frame"]), r["source"], r["status"]) for r in rows] == [
        (i, f"frame_{i:04d}.npy", "ok") for i in range(8)]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["frames_ok"], summary["frames_retry"], summary["frames_failed"]) == (8, 0, 0)


def test_serve_triton_commands_as_documented(tritonserver_dist, triton_python_repo, tmp_path):
    """`deepis-rt serve-triton REPO --print-command` prints shell commands that start a working server."""
    import os
    import shutil
    import signal
    import subprocess
    import urllib.request

    from click.testing import CliRunner

    from deepis_rt.cli import main
    from deepis_rt.cluster.triton_server import free_port

    repo = tmp_path / "repo"
    shutil.copytree(triton_python_repo[0], repo)
    http_port, grpc_port = free_port(), free_port()
    result = CliRunner().invoke(main, ["serve-triton", str(repo), "--http-port", str(http_port), "--grpc-port",
                                       str(grpc_port), "--tritonserver", str(tritonserver_dist.root), "--print-command"])
    assert result.exit_code == 0, result.output
    script = result.output
    assert "LD_LIBRARY_PATH=" in script and "triton_python_backend_stub" in script and "--backend-directory" in script
    proc = subprocess.Popen(["bash", "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the documented server did not start"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/models/tiny/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.3)
        with TritonRunner(f"127.0.0.1:{http_port}", "tiny") as runner:
            assert runner.infer(_batch(1)).shape == (1, 1, *TILE)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
