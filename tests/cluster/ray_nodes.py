"""A real multi-node Ray cluster on this machine for the tests: `ray start --head` + `ray start --address`.

Each node is one ``ray start --block`` process in its own session (process group), with its own
ports and temp dir under one short temporary folder. Stopping a node sends SIGTERM to its
``ray start`` (which stops the processes it started), then SIGKILL to whatever is left in its
process group and to any process whose command line names the node's temp dir; other Ray
processes on the machine (other users' clusters) are never touched, unlike a bare ``ray stop``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
#: the node's object store (bytes): the tests move only small records through it
OBJECT_STORE_BYTES = 80 * 1024 * 1024
#: loopback addresses of the nodes: Ray replaces 127.0.0.1 (and "localhost") by the machine's
#: network address, other 127.x addresses are used as given, so the nodes, drivers and workers talk
#: over loopback. (Ray's GCS and raylets still listen on every interface: only a node at 127.0.0.1
#: binds to loopback, and Ray allows that for one-node clusters only. Token authentication is on.)
HEAD_IP = "127.0.0.2"
#: the worker node's loopback address
WORKER_IP = "127.0.0.3"


def loopback_addresses_usable() -> bool:
    """Whether addresses of 127.0.0.0/8 other than 127.0.0.1 can be bound here (Linux: all of them)."""
    try:
        with socket.socket() as s:
            s.bind((WORKER_IP, 0))
        return True
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_cli() -> list[str]:
    return [sys.executable, "-m", "ray.scripts.scripts"]


@dataclass
class RayNode:
    name: str
    temp_dir: Path
    process: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.process.poll() is None


def _pids_naming(text: str) -> list[int]:
    """PIDs of this user's processes whose command line contains ``text``."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(entry.name))
    return pids


@dataclass
class RayCluster:
    """Head + worker nodes of one test cluster; ``env`` is what a driver on this machine needs."""

    root: Path
    env: dict[str, str]
    address: str = ""
    nodes: list[RayNode] = field(default_factory=list)

    @classmethod
    def create(cls) -> RayCluster:
        """A cluster folder and the environment of its nodes, with a token made as Ray's docs say."""
        # short: Ray's unix sockets live under the temp dir (108-byte path limit)
        root = Path(tempfile.mkdtemp(prefix="dray", dir="/tmp"))
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update({
            "HOME": str(root / "home"),  # ~/.ray/auth_token of this cluster, never the user's
            "RAY_TMPDIR": str(root),  # `ray start --head` records its address in $RAY_TMPDIR/ray
            "PYTHONPATH": os.pathsep.join([str(REPO), str(HERE)]),  # workers import this checkout
            "RAY_USAGE_STATS_ENABLED": "0",
        })
        (root / "home").mkdir()
        cluster = cls(root=root, env=env)
        try:
            subprocess.run([*_ray_cli(), "get-auth-token", "--generate"], env=env, check=True, capture_output=True,
                           timeout=120)
        except BaseException:
            cluster.cleanup()
            raise
        return cluster

    @property
    def token(self) -> str:
        return (self.root / "home" / ".ray" / "auth_token").read_text().strip()

    def _start(self, name: str, args: list[str], temp_dir: Path | None = None,
               env: dict[str, str] | None = None) -> RayNode:
        log = self.root / f"{name}.log"
        if temp_dir is None:
            temp_dir = self.root / name
            args = ["--temp-dir", str(temp_dir), *args]
        cmd = [*_ray_cli(), "start", "--block", "--dashboard-agent-listen-port", str(free_port()),
               "--disable-usage-stats", *args]
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, env={**self.env, "RAY_AUTH_MODE": "token", **(env or {})}, stdout=f,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        node = RayNode(name, temp_dir, proc, log)
        self.nodes.append(node)
        return node

    def _failed(self, node: RayNode, what: str) -> RuntimeError:
        return RuntimeError(f"ray node {node.name}: {what}:\n{node.log.read_text(errors='replace')[-3000:]}")

    def wait_ready(self, timeout_s: float = 120) -> None:
        """Wait until every node's `ray start --block` says the node is up."""
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            while "Ray runtime started" not in node.log.read_text(errors="replace"):
                if not node.alive():
                    raise self._failed(node, "did not start")
                if time.monotonic() > deadline:
                    raise self._failed(node, f"not up after {timeout_s:g} s")
                time.sleep(0.2)

    def start_head(self, num_cpus: int = 1, timeout_s: float = 90, env: dict[str, str] | None = None) -> RayNode:
        """Start the head node; returns once its GCS accepts connections (other nodes may join then)."""
        port = free_port()
        self.address = f"{HEAD_IP}:{port}"
        # the head keeps Ray's default temp dir ($RAY_TMPDIR/ray), where `ray start` records the
        # cluster's address for `ray.init(address="auto")`
        node = self._start("head", ["--head", "--node-ip-address", HEAD_IP, "--port", str(port), "--num-cpus",
                                    str(num_cpus), "--object-store-memory", str(OBJECT_STORE_BYTES),
                                    "--include-dashboard", "false", "--ray-client-server-port", str(free_port())],
                           temp_dir=self.root / "ray", env=env)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection((HEAD_IP, port), timeout=1).close()
                return node
            except OSError:
                if not node.alive():
                    raise self._failed(node, "did not start") from None
                if time.monotonic() > deadline:
                    raise self._failed(node, f"GCS not listening after {timeout_s:g} s") from None
                time.sleep(0.2)

    def start_worker(self, name: str = "worker", ip: str = "127.0.0.3", num_cpus: int = 1) -> RayNode:
        """Start a node that joins the head (`ray start --address`); see :meth:`wait_ready`."""
        return self._start(name, ["--address", self.address, "--node-ip-address", ip, "--num-cpus", str(num_cpus),
                                  "--object-store-memory", str(OBJECT_STORE_BYTES)])

    def ensure_worker(self, ip: str = WORKER_IP, num_cpus: int = 1) -> RayNode:
        """The live worker node at ``ip``; a new one (its own name and temp dir) when a test killed the last."""
        for node in self.nodes:
            if node.name != "head" and node.alive():
                return node
        node = self.start_worker(name=f"worker{len(self.nodes)}", ip=ip, num_cpus=num_cpus)
        self.wait_ready()
        return node

    def kill(self, node: RayNode) -> None:
        """The node dies at once, as on a power loss: SIGKILL to all its processes."""
        self._signal(node, signal.SIGKILL)
        node.process.wait(timeout=10)

    def _signal(self, node: RayNode, sig: int) -> None:
        try:
            os.killpg(node.process.pid, sig)
        except ProcessLookupError:
            pass
        for pid in _pids_naming(str(node.temp_dir)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        """Stop every node of this cluster (and nothing else); leaves no process behind."""
        for node in reversed(self.nodes):
            if node.alive():
                node.process.send_signal(signal.SIGTERM)  # `ray start --block` stops its node's processes
        for node in reversed(self.nodes):
            try:
                node.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
            self._signal(node, signal.SIGKILL)
            try:
                node.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 10
        while _pids_naming(str(self.root)) and time.monotonic() < deadline:
            for pid in _pids_naming(str(self.root)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)

    def leftover_pids(self) -> list[int]:
        return _pids_naming(str(self.root))

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
