"""Where the batch's Ray actors go: a plan of actors per node from each node's CPUs and GPUs.

Every actor holds one Segmenter and is pinned to its node (Ray's node-affinity scheduling), so
that the plan, not chance, decides how the work spreads:

* where the cluster has GPUs (and the network runs here, not on a Triton server): one actor per
  GPU (``num_gpus=1``, or ``gpus_per_worker``), on the GPU nodes only;
* otherwise one actor per ``cpus_per_worker`` CPUs;
* at most ``max_per_node`` actors on a node, and ``max_workers`` in all (spread over the nodes
  one by one);
* each actor reserves, and uses as PyTorch / ONNX Runtime threads, its share of its node's CPUs
  (``cpus_per_worker`` when given, else the node's CPUs divided among its actors).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deepis_rt.errors import ConfigError

__all__ = ["ActorSlot", "NodeInfo", "live_nodes", "plan_actors"]


@dataclass(frozen=True)
class NodeInfo:
    """One live Ray node and its schedulable resources."""

    node_id: str
    ip: str
    cpus: float
    gpus: float = 0.0


@dataclass(frozen=True)
class ActorSlot:
    """One actor of the plan: where it runs, what it reserves, how many threads it uses."""

    node_id: str
    node_ip: str
    num_cpus: float
    num_gpus: float
    threads: int

    @property
    def node(self) -> str:
        """The node, as the report names it: ``IP/node-id prefix``."""
        return node_label(self.node_ip, self.node_id)


def node_label(ip: str | None, node_id: str | None) -> str:
    return f"{ip}/{(node_id or '?')[:12]}"


def live_nodes(ray: Any) -> list[NodeInfo]:
    """The cluster's live nodes that can run something (from ``ray.nodes()``), head first."""
    nodes = []
    for n in ray.nodes():
        res = n.get("Resources") or {}
        if not n.get("Alive") or (res.get("CPU", 0) <= 0 and res.get("GPU", 0) <= 0):
            continue
        nodes.append(NodeInfo(n["NodeID"], n.get("NodeManagerAddress", "?"), float(res.get("CPU", 0)),
                              float(res.get("GPU", 0))))
    return nodes


def plan_actors(
    nodes: list[NodeInfo],
    *,
    use_gpus: bool = True,
    cpus_per_worker: float | None = None,
    gpus_per_worker: float | None = None,
    max_per_node: int | None = None,
    max_workers: int | None = None,
) -> list[ActorSlot]:
    """The actors to start (see the module docstring); at least one, or a :class:`ConfigError`.

    Parameters
    ----------
    nodes : list of NodeInfo
        Live nodes.
    use_gpus : bool
        False when the network does not run in the actors (Triton backend).
    cpus_per_worker, gpus_per_worker : float, optional
        Reservation per actor; None: the node's CPUs shared among its actors, one GPU per actor
        where the cluster has GPUs.
    max_per_node, max_workers : int, optional
        Upper bounds on actors per node and in all.
    """
    if not nodes:
        raise ConfigError("batch | the Ray cluster has no live node with CPUs or GPUs")
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if use_gpus and any(n.gpus >= 1 for n in nodes) else 0.0
    per_node: list[list[ActorSlot]] = []
    for node in nodes:
        if gpus_per_worker > 0:
            n = int(node.gpus // gpus_per_worker)
        elif cpus_per_worker:
            n = int(node.cpus // cpus_per_worker)
        else:
            n = int(node.cpus)
        if max_per_node is not None:
            n = min(n, max_per_node)
        if cpus_per_worker:
            n = min(n, int(node.cpus // cpus_per_worker))
            cpus = cpus_per_worker
        else:
            n = min(n, int(node.cpus))  # each actor gets at least one whole CPU
            cpus = float(int(node.cpus // n)) if n > 0 else 0.0
        per_node.append([ActorSlot(node.node_id, node.ip, cpus, gpus_per_worker, max(1, int(cpus)))
                         for _ in range(max(n, 0))])
    # round-robin: with a cap on the total, every node gets its turn
    slots = [node_slots[i] for i in range(max((len(s) for s in per_node), default=0))
             for node_slots in per_node if i < len(node_slots)]
    if max_workers is not None:
        slots = slots[:max_workers]
    if not slots:
        total_cpus, total_gpus = sum(n.cpus for n in nodes), sum(n.gpus for n in nodes)
        raise ConfigError(
            f"batch | no node of the Ray cluster ({len(nodes)} node(s), {total_cpus:g} CPU, {total_gpus:g} GPU) can "
            f"host a worker of {cpus_per_worker or 1:g} CPU / {gpus_per_worker:g} GPU; lower --cpus-per-worker / "
            "--gpus-per-worker"
        )
    return slots
