"""`deepis-rt batch` on a real two-node Ray cluster with token authentication, started as Ray's docs say.

One cluster for the module (see ray_nodes.py): ``ray get-auth-token --generate``, then
``RAY_AUTH_MODE=token ray start --head`` and ``RAY_AUTH_MODE=token ray start --address=HEAD`` (the
worker node), 2 and 1 CPUs, on loopback addresses 127.0.0.2 (head) and 127.0.0.3 (worker), each
with its own temp dir and ports. Drivers run as a user's shell would: no RAY_AUTH_MODE, the token
in ~/.ray/auth_token (or in RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH). The last test kills the worker
node; the fixture stops both nodes whatever happens and checks that no process of them is left.
"""

from __future__ import annotations

import contextlib
import csv
import http.server
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cluster_helpers import TILE, marking_factory
from ray_nodes import HERE

pytest.importorskip("ray", reason="needs Ray (pip install 'deepis-rt[cluster]')")

pytestmark = pytest.mark.slow

WORKER_IP = "127.0.0.3"
#: seconds per frame of the kill tests' runner: items last long enough to be caught half-way
DELAY_S = 0.5


@pytest.fixture(scope="module")
def cluster(ray_cluster):
    """The session's two-node cluster (conftest.py), with its worker node alive."""
    ray_cluster.ensure_worker(WORKER_IP)
    return ray_cluster


@pytest.fixture(scope="module")
def node_labels(cluster) -> dict[str, str]:
    """IP -> the report's node label (``IP/node-id prefix``), asked from the cluster by a driver."""
    code = ("import json, ray; ray.init(address='auto', logging_level='ERROR'); "
            "print(json.dumps({n['NodeManagerAddress']: n['NodeID'][:12] for n in ray.nodes() if n['Alive']}))")
    res = subprocess.run([sys.executable, "-c", code], env=cluster.env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    ids = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(ids) == {"127.0.0.2", WORKER_IP}, ids
    return {ip: f"{ip}/{node_id}" for ip, node_id in ids.items()}


def _archive(root: Path, n_items: int, n_frames: int) -> Path:
    from deepis_rt.synth import write_timelapse

    for i in range(n_items):
        write_timelapse(root / f"cell{i}", n_frames, seed=10 + i, shape=TILE, progress=False)
    return root


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _check_complete(out: Path, n_items: int, n_frames: int) -> dict:
    """Every item done once, every frame committed exactly once; returns the report."""
    report = json.loads((out / "batch_report.json").read_text())
    names = [f"cell{i}" for i in range(n_items)]
    assert sorted(it["item"] for it in report["items"]) == names  # one record per item
    assert {it["status"] for it in report["items"]} == {"ok"}, report["items"]
    for name in names:
        frames = [r["frame"] for r in _rows(out / name / "frames.csv")]
        assert sorted(frames, key=int) == [str(i) for i in range(n_frames)], (name, frames)
    combined = _rows(out / "synapses_all.csv")
    keys = [(r["item"], r["frame"], r["synapse_id"]) for r in combined]
    assert len(keys) == len(set(keys))
    assert len(combined) == sum(len(_rows(out / n / "synapses.csv")) for n in names)
    return report


def _batch_cli(cluster, args: list[str], env: dict | None = None, timeout: float = 240):
    return subprocess.run([sys.executable, "-m", "deepis_rt", "batch", *args], env=env or cluster.env,
                          capture_output=True, text=True, timeout=timeout)


def test_batch_spreads_over_both_nodes(cluster, node_labels, tmp_path):
    from deepis_rt.checkpoint import save_checkpoint
    from deepis_rt.model import build_model

    ckpt = save_checkpoint(tmp_path / "tiny.pt", build_model("deepis-lite", widths=(4, 8, 8, 8, 8), skip_width=4),
                           meta={"tile_zyx": list(TILE)})
    archive, out = _archive(tmp_path / "archive", 4, 2), tmp_path / "out"
    # as a user: the head's address as `ray start --head` printed it, the token in ~/.ray/auth_token and
    # no RAY_AUTH_MODE (Ray itself would not send the token to an explicit address); `--ray auto` is
    # what the driver of test_driver_killed_and_resumed uses
    assert "RAY_AUTH_MODE" not in cluster.env and (Path(cluster.env["HOME"]) / ".ray" / "auth_token").is_file()
    # the plan has 3 slots (2 CPUs on the head, 1 on the worker node); 2 workers go to both nodes
    res = _batch_cli(cluster, [str(archive), "--out", str(out), "--ray", cluster.address, "--model", str(ckpt),
                               "--backend", "torch", "--workers", "2", "--no-masks", "--no-progress"])
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert "4 ok" in res.stdout and "2 worker(s) on 2 node(s)" in res.stdout, res.stdout
    report = _check_complete(out, 4, 2)
    nodes = {it["item"]: it["node"] for it in report["items"]}
    assert set(nodes.values()) == set(node_labels.values()), nodes  # both nodes ran items, and the report says which
    assert all(it["earlier_runs"] == [] and it["attempts"] == 1 for it in report["items"])
    summary = json.loads((out / "cell0" / "summary.json").read_text())
    assert summary["backend"] == "torch-cpu"


def test_authentication_errors(cluster, tmp_path):
    archive, out = _archive(tmp_path / "archive", 1, 1), tmp_path / "out"
    no_token = {**cluster.env, "HOME": str(tmp_path / "home")}  # a user who has not copied the token
    t0 = time.monotonic()
    res = _batch_cli(cluster, [str(archive), "--out", str(out), "--ray", cluster.address, "--no-progress"],
                     env=no_token)
    waited_s = time.monotonic() - t0
    assert res.returncode == 2, res.stdout + res.stderr
    message = res.stderr
    assert "requires Ray token authentication and no token was found" in message, message
    assert str(tmp_path / "home" / ".ray" / "auth_token") in message and "ray get-auth-token" in message
    assert "Traceback" not in message and "no Ray cluster" not in message
    assert not out.exists()  # nothing written before the cluster was reached
    print(f"authentication error after {waited_s:.1f} s")

    res = _batch_cli(cluster, [str(archive), "--out", str(out), "--ray", cluster.address, "--no-progress"],
                     env={**no_token, "RAY_AUTH_TOKEN": "not-the-cluster-token"})
    assert res.returncode == 2 and "refused the token from $RAY_AUTH_TOKEN" in res.stderr, res.stderr
    assert not out.exists()

    # the token found through RAY_AUTH_TOKEN_PATH is accepted; other ports of the cluster are told apart
    from deepis_rt.cluster.ray_connect import probe_cluster
    from deepis_rt.errors import ClusterAuthError, ClusterError

    token_file = tmp_path / "token"
    token_file.write_text(cluster.token + "\n")
    info = probe_cluster(cluster.address, environ={"HOME": str(tmp_path), "RAY_AUTH_TOKEN_PATH": str(token_file)})
    assert info.auth_required and info.token.source == f"RAY_AUTH_TOKEN_PATH={token_file}"
    import ray

    assert info.ray_version == ray.__version__
    with pytest.raises(ClusterAuthError, match="RAY_AUTH_MODE=disabled here"):
        probe_cluster(cluster.address, environ={"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": cluster.token})
    with http_server() as port:  # e.g. the dashboard's port given instead of the GCS's
        with pytest.raises(ClusterError, match=f"port {port} is open but is not a Ray cluster's GCS"):
            probe_cluster(f"127.0.0.1:{port}")


@contextlib.contextmanager
def http_server():
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _marks(marks: Path, ip: str | None = None) -> list[str]:
    return [p.name for p in marks.iterdir() if ip is None or p.name.startswith(f"{ip}_")]


def _in_process_driver(cluster, tmp_path, monkeypatch) -> None:
    """This process as a driver from outside the cluster: explicit address, token from RAY_AUTH_TOKEN_PATH."""
    token_file = tmp_path / "token"
    token_file.write_text(cluster.token)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)


def test_driver_killed_and_resumed(cluster, tmp_path, monkeypatch):
    from deepis_rt.cluster.ray_batch import run_batch

    archive, out, marks = _archive(tmp_path / "archive", 3, 3), tmp_path / "out", tmp_path / "marks"
    marks.mkdir()
    # `auto`: the cluster `ray start --head` recorded on this machine ($RAY_TMPDIR/ray/ray_current_cluster)
    cmd = [sys.executable, str(HERE / "ray_driver.py"), str(archive), str(out), "auto", str(marks), str(DELAY_S)]
    driver = subprocess.Popen(cmd, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = out / ".batch" / "items"
    try:
        # killed once an item is finished and another one is half-way
        _wait_for(lambda: done.is_dir() and any(done.iterdir()) and len(_marks(marks)) >= 4, 120,
                  "a finished item")
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.kill()
        driver.communicate(timeout=30)
    finished_before = {p.stem for p in done.iterdir()}
    assert 0 < len(finished_before) < 3
    # Ray ends a dead driver's actors: wait until they no longer run frames (their marks stop)
    _wait_for(lambda: time.time() - max(p.stat().st_mtime for p in marks.iterdir()) > 3 * DELAY_S, 60,
              "the killed driver's workers to stop")

    _in_process_driver(cluster, tmp_path, monkeypatch)  # the same batch again, from here
    report = run_batch(archive, out, segmenter_factory=marking_factory(marks, DELAY_S), ray_address=cluster.address,
                       num_workers=2, retries=0, progress=False, stream_settings={"max_batch": 1, "write_masks": False})
    assert report.counts["ok"] + report.counts["skipped"] == 3
    saved = _check_complete(out, 3, 3)
    assert {it["item"] for it in saved["items"] if it.get("skipped")} == finished_before


def test_worker_node_killed_mid_batch(cluster, node_labels, tmp_path, monkeypatch, caplog):
    """Explicit address, token from RAY_AUTH_TOKEN_PATH, driver in this process; the worker node dies."""
    from deepis_rt.cluster.ray_batch import run_batch

    _in_process_driver(cluster, tmp_path, monkeypatch)
    archive, out, marks = _archive(tmp_path / "archive", 3, 3), tmp_path / "out", tmp_path / "marks"
    marks.mkdir()
    worker = cluster.nodes[1]

    def kill_worker_node():  # once the worker node is half-way through an item (held there: see hold_ip)
        _wait_for(lambda: len(_marks(marks, WORKER_IP)) >= 2, 120, "the worker node to run an item")
        cluster.kill(worker)

    killer = threading.Thread(target=kill_worker_node, daemon=True)
    killer.start()
    with caplog.at_level(logging.INFO, logger="deepis_rt.cluster"):
        report = run_batch(archive, out, segmenter_factory=marking_factory(marks, DELAY_S, hold_ip=WORKER_IP),
                           ray_address=cluster.address, num_workers=2, retries=0, progress=False,
                           stream_settings={"max_batch": 1, "write_masks": False})
    killer.join(timeout=5)
    # (whether the head also starts a replacement worker depends on how far the batch got when the node
    # died, so the log line saying so is not asserted; where every item ran is)
    assert not worker.alive()
    assert os.environ.get("RAY_AUTH_MODE") is None  # this process's Ray settings are as they were
    saved = _check_complete(out, 3, 3)
    assert report.counts == {"ok": 3, "partial": 0, "failed": 0, "skipped": 0}
    lost = {it["item"]: it for it in saved["items"] if any(r["node_lost"] for r in it["earlier_runs"])}
    assert lost, saved["items"]  # the report says which items were moved ...
    for it in lost.values():
        assert it["earlier_runs"][0]["node"] == node_labels[WORKER_IP]  # ... from the lost node ...
        assert it["node"] == node_labels["127.0.0.2"] and it["attempts"] == 1  # ... to the head, without a retry
