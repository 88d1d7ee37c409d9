"""Connecting to a Ray cluster (token look-up, the GCS probe, `auto`) and the plan of actors per node.

The GCS probe runs against a real gRPC server speaking Ray's GCS protocol (Ray's generated stubs)
for what a real cluster cannot produce on demand here: another Ray version, a server that never
answers. The real cluster cases are in test_ray_cluster.py.
"""

from __future__ import annotations

import json
import socket
from concurrent import futures

import pytest

from deepis_rt.cluster.ray_placement import NodeInfo, plan_actors
from deepis_rt.errors import ClusterAuthError, ClusterError, ConfigError

ray = pytest.importorskip("ray", reason="needs Ray (pip install 'deepis-rt[cluster]')")
grpc = pytest.importorskip("grpc")

from deepis_rt.cluster.ray_connect import find_token, probe_cluster, resolve_address  # noqa: E402

# --------------------------------------------------------------------------------------------
# tokens
# --------------------------------------------------------------------------------------------


def test_find_token_follows_rays_order(tmp_path):
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("from-default-file\n")
    path = tmp_path / "token"
    path.write_text("from-path")
    env = {"HOME": str(home)}
    assert find_token(env).value == "from-default-file" and find_token(env).source == str(home / ".ray/auth_token")
    assert find_token({**env, "RAY_AUTH_TOKEN_PATH": str(path)}).value == "from-path"
    both = find_token({**env, "RAY_AUTH_TOKEN_PATH": str(path), "RAY_AUTH_TOKEN": "from-env"})
    assert both.value == "from-env" and both.source == "$RAY_AUTH_TOKEN"
    assert "from-env" not in repr(both)  # never printed by accident
    assert find_token({"HOME": str(tmp_path / "nobody")}) is None


def test_find_token_path_that_cannot_be_used(tmp_path):
    # Ray aborts rather than falling back to ~/.ray/auth_token: so does the look-up, with a message
    with pytest.raises(ClusterAuthError, match="RAY_AUTH_TOKEN_PATH=.*missing: cannot read the Ray token file"):
        find_token({"HOME": str(tmp_path), "RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ClusterAuthError, match="the Ray token file is empty.*ray get-auth-token"):
        find_token({"HOME": str(tmp_path), "RAY_AUTH_TOKEN_PATH": str(tmp_path / "empty")})


# --------------------------------------------------------------------------------------------
# the GCS probe
# --------------------------------------------------------------------------------------------


class _FakeGcs:
    """A gRPC server with Ray's InternalKV service: cluster metadata, optionally behind a token."""

    def __init__(self, token: str | None, ray_version: str, python_version: str) -> None:
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

        fake = self

        class Servicer(gcs_service_pb2_grpc.InternalKVGcsServiceServicer):
            def InternalKVGet(self, request, context):  # noqa: N802 - gRPC's name
                sent = dict(context.invocation_metadata()).get("authorization")
                if fake.token is not None and sent != f"Bearer {fake.token}":
                    context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                  "InvalidAuthToken: Authentication token is missing or incorrect")
                meta = {"ray_version": ray_version, "python_version": python_version, "ray_init_cluster": False}
                return gcs_service_pb2.InternalKVGetReply(value=json.dumps(meta).encode())

        self.token = token
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        gcs_service_pb2_grpc.add_InternalKVGcsServiceServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"

    def __enter__(self):
        self.server.start()
        return self

    def __exit__(self, *exc):
        self.server.stop(grace=None)


def _versions():
    import platform

    return ray.__version__, platform.python_version()


def test_probe_cluster_with_and_without_token(tmp_path):
    with _FakeGcs(None, *_versions()) as gcs:
        info = probe_cluster(gcs.address, environ={"HOME": str(tmp_path)})
        assert not info.auth_required and info.token is None and info.ray_version == ray.__version__
    with _FakeGcs("s3cret", *_versions()) as gcs:
        info = probe_cluster(gcs.address, environ={"HOME": str(tmp_path), "RAY_AUTH_TOKEN": "s3cret"})
        assert info.auth_required and info.token.source == "$RAY_AUTH_TOKEN"
        with pytest.raises(ClusterAuthError, match=r"requires Ray token authentication and no token was found.*"
                                                   r"ray get-auth-token"):
            probe_cluster(gcs.address, environ={"HOME": str(tmp_path)})
        with pytest.raises(ClusterAuthError, match="refused the token from .*auth_token: it was started with another"):
            (tmp_path / ".ray").mkdir()
            (tmp_path / ".ray" / "auth_token").write_text("old-token")
            probe_cluster(gcs.address, environ={"HOME": str(tmp_path)})


def test_probe_cluster_version_mismatch(tmp_path):
    with _FakeGcs(None, "2.9.3", "3.10.12") as gcs:
        with pytest.raises(ClusterError, match=r"version mismatch: the cluster runs Ray 2\.9\.3 on Python 3\.10\.12, "
                                               rf"this machine has Ray {ray.__version__}.*pip install 'ray==2\.9\.3'"):
            probe_cluster(gcs.address, environ={"HOME": str(tmp_path)})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_probe_cluster_nothing_there_or_silent():
    port = _free_port()
    with pytest.raises(ClusterError, match=f"nothing is listening on port {port}; check the address"):
        probe_cluster(f"127.0.0.1:{port}")
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        with pytest.raises(ClusterError, match=f"port {port} accepts connections but gave no Ray answer"):
            probe_cluster(f"127.0.0.1:{port}", timeout_s=0.5)
    with pytest.raises(ClusterError, match="expected HOST:PORT"):
        probe_cluster("127.0.0.1")


def test_auto_without_and_with_a_recorded_cluster(tmp_path, monkeypatch):
    from ray._private import services

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # other users' clusters on this machine must not answer for `auto` here
    monkeypatch.setattr(services, "find_gcs_addresses", lambda: set())
    with pytest.raises(ClusterError, match=r"--ray auto: no Ray cluster on this machine .*ray start --head"):
        resolve_address("auto")
    (tmp_path / "ray").mkdir()
    port = _free_port()
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.2:{port}")  # a cluster since stopped
    address, found_as = resolve_address("auto")
    assert address == f"127.0.0.2:{port}" and "recorded by `ray start --head`" in found_as
    with pytest.raises(ClusterError, match="that cluster has stopped: start it again with `ray start --head`"):
        probe_cluster(address, found_as)


def test_run_batch_writes_nothing_when_the_cluster_cannot_be_used(tmp_path):
    from deepis_rt.cluster.ray_batch import run_batch

    (tmp_path / "archive" / "cell").mkdir(parents=True)
    (tmp_path / "archive" / "cell" / "frame_000000.npy").write_bytes(b"")
    out = tmp_path / "out"
    with pytest.raises(ClusterError, match="nothing is listening"):
        run_batch(tmp_path / "archive", out, ray_address=f"127.0.0.2:{_free_port()}", progress=False)
    assert not out.exists()
    assert not ray.is_initialized()


# --------------------------------------------------------------------------------------------
# the plan of actors
# --------------------------------------------------------------------------------------------

CPU_NODES = [NodeInfo("a" * 56, "10.0.0.1", 8), NodeInfo("b" * 56, "10.0.0.2", 4)]
GPU_NODES = [NodeInfo("g" * 56, "10.0.0.3", 16, 2), NodeInfo("c" * 56, "10.0.0.4", 8, 0)]


def _per_node(slots):
    out: dict[str, list[tuple[float, float, int]]] = {}
    for s in slots:
        out.setdefault(s.node_ip, []).append((s.num_cpus, s.num_gpus, s.threads))
    return out


def test_plan_one_actor_per_gpu_with_the_nodes_cpus():
    plan = _per_node(plan_actors(GPU_NODES))
    assert plan == {"10.0.0.3": [(8.0, 1.0, 8)] * 2}  # CPU-only node idle where the cluster has GPUs
    assert _per_node(plan_actors(GPU_NODES, max_per_node=1)) == {"10.0.0.3": [(16.0, 1.0, 16)]}
    # Triton does the network: CPU actors everywhere, no GPU reserved
    triton = _per_node(plan_actors(GPU_NODES, use_gpus=False, cpus_per_worker=4))
    assert triton == {"10.0.0.3": [(4, 0.0, 4)] * 4, "10.0.0.4": [(4, 0.0, 4)] * 2}


def test_plan_cpu_nodes_caps_and_spread():
    assert [len(v) for v in _per_node(plan_actors(CPU_NODES)).values()] == [8, 4]  # one per CPU, 1 thread
    capped = _per_node(plan_actors(CPU_NODES, max_per_node=2))
    assert capped == {"10.0.0.1": [(4.0, 0.0, 4)] * 2, "10.0.0.2": [(2.0, 0.0, 2)] * 2}
    assert _per_node(plan_actors(CPU_NODES, cpus_per_worker=3)) == {"10.0.0.1": [(3, 0.0, 3)] * 2,
                                                                  "10.0.0.2": [(3, 0.0, 3)]}
    spread = plan_actors(CPU_NODES, max_per_node=2, max_workers=2)
    assert [s.node_ip for s in spread] == ["10.0.0.1", "10.0.0.2"]  # a cap on the total still uses every node
    with pytest.raises(ConfigError, match="can host a worker of 16 CPU"):
        plan_actors(CPU_NODES, cpus_per_worker=16)
    with pytest.raises(ConfigError, match="no live node"):
        plan_actors([])



def test_each_worker_uses_its_share_of_threads(monkeypatch):
    import torch

    from deepis_rt.cluster.ray_batch import SegmenterSpec, _with_threads

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # this test process keeps its threads
    spec = SegmenterSpec("model.pt", "torch")
    assert _with_threads(spec, 4).options == {"num_threads": 4}
    assert _with_threads(SegmenterSpec("m.pt", "onnxruntime", options={"num_threads": 8}), 4).options == \
        {"num_threads": 8}  # the caller's choice stays
    assert _with_threads(SegmenterSpec(None, "triton"), 4).options == {}  # the server computes
    assert _with_threads(spec, None) is spec
