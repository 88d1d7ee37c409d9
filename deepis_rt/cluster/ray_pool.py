"""The pool of Ray actors of a batch: pinned to nodes by a plan, replaced when they die or their node is lost.

The pool's interface (``has_capacity / submit / busy / next_result / close``) is the one the
batch's scheduler drives (see :mod:`.ray_batch`); ``next_result`` never raises for an item:
failures come back as records with ``status="failed"``, and ``node_lost=True`` when the item's
node was lost (the scheduler then runs it again elsewhere without counting a retry).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from deepis_rt.cluster.items import BatchItem
from deepis_rt.cluster.ray_placement import ActorSlot

__all__ = ["RayActorPool"]

log = logging.getLogger(__name__)

#: how long an actor that became unreachable may wait for the cluster to declare its node dead (Ray's
#: health checks take several periods of 3 s, longer on a loaded head) before it counts as a dead worker
NODE_DEATH_GRACE_S = 30.0


class RayActorPool:
    """Ray actors pinned to nodes by a plan, one worker (one Segmenter) each.

    A worker that dies on a live node (OOM kill, crash) is replaced on that node. When a node is
    lost, its actors are dropped, replaced on nodes with room left in the plan, and the items
    they held come back with ``node_lost`` so that they run elsewhere.
    """

    def __init__(self, ray: Any, worker_cls: type, worker_args: tuple, slots: list[ActorSlot],
                 plan: list[ActorSlot]) -> None:
        self.ray = ray
        self.actor_cls = ray.remote(max_restarts=0)(worker_cls)
        self.args = worker_args  # the last one, the thread count, is set per slot
        self.plan = plan  # every slot the cluster can host (for replacements)
        self.lost_nodes: set[str] = set()
        self.idle = [self._start(slot) for slot in slots]
        self.inflight: dict[Any, tuple[tuple[Any, ActorSlot], BatchItem, int]] = {}
        self.n_workers = len(slots)
        per_node: dict[str, list[ActorSlot]] = {}
        for slot in slots:
            per_node.setdefault(slot.node, []).append(slot)
        self.description = f"Ray: {len(slots)} worker(s) on {len(per_node)} node(s): " + "; ".join(
            f"{node} {len(group)} x ({group[0].num_cpus:g} CPU, {group[0].num_gpus:g} GPU, {group[0].threads} "
            "thread(s))" for node, group in per_node.items())

    def _start(self, slot: ActorSlot) -> tuple[Any, ActorSlot]:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        args = (*self.args[:3], slot.threads)
        actor = self.actor_cls.options(
            num_cpus=slot.num_cpus, num_gpus=slot.num_gpus,
            scheduling_strategy=NodeAffinitySchedulingStrategy(slot.node_id, soft=False),
        ).remote(*args)
        return actor, slot

    def has_capacity(self) -> bool:
        return bool(self.idle)

    def submit(self, item: BatchItem, attempt: int) -> None:
        worker = self.idle.pop()
        self.inflight[worker[0].process.remote(item, attempt)] = (worker, item, attempt)

    def busy(self) -> bool:
        return bool(self.inflight)

    def _node_alive(self, node_id: str) -> bool:
        try:
            return any(n["NodeID"] == node_id and n.get("Alive") for n in self.ray.nodes())
        except Exception:  # the GCS itself is gone: nothing to place anything on
            return False

    def _node_dies_within(self, node_id: str, seconds: float) -> bool:
        """Whether the cluster declares the node dead within ``seconds`` (polled)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if not self._node_alive(node_id):
                return True
            time.sleep(0.5)
        return False

    def _replace_lost(self, node_id: str) -> None:
        """Forget the lost node's actors; start replacements where the plan has room."""
        self.lost_nodes.add(node_id)
        for worker in [w for w in self.idle if w[1].node_id == node_id]:
            self.idle.remove(worker)
            self._kill(worker[0])
        in_use: dict[str, int] = {}
        for _, slot in self.idle + [w for w, _, _ in self.inflight.values()]:
            if slot.node_id not in self.lost_nodes:
                in_use[slot.node_id] = in_use.get(slot.node_id, 0) + 1
        for slot in self.plan:
            if slot.node_id in self.lost_nodes or sum(in_use.values()) >= self.n_workers:
                continue
            if in_use.get(slot.node_id, 0) < sum(s.node_id == slot.node_id for s in self.plan) \
                    and self._node_alive(slot.node_id):
                in_use[slot.node_id] = in_use.get(slot.node_id, 0) + 1
                log.info("batch | a new worker on %s replaces one of the lost node", slot.node)
                self.idle.append(self._start(slot))

    def next_result(self) -> tuple[BatchItem, int, dict[str, Any]]:
        ray = self.ray
        (ref,), _ = ray.wait(list(self.inflight), num_returns=1)
        (actor, slot), item, attempt = self.inflight.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as exc:
            cause = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            where = {"node": slot.node, "node_id": slot.node_id, "node_ip": slot.node_ip}
            lost = slot.node_id in self.lost_nodes or not self._node_alive(slot.node_id)
            if not lost and isinstance(exc, getattr(ray.exceptions, "ActorUnavailableError", ())):
                # unreachable, not (yet) dead: a node killed a moment ago still counts as alive until
                # the head's health checks give up on it
                lost = self._node_dies_within(slot.node_id, NODE_DEATH_GRACE_S)
            if lost:
                log.warning("batch | %s: node %s lost while running it; the item goes to another node",
                            item.name, slot.node)
                if slot.node_id not in self.lost_nodes:
                    self._replace_lost(slot.node_id)
                return item, attempt, {"status": "failed", "node_lost": True, **where,
                                       "error": f"node {slot.node} lost ({cause})"}
            if isinstance(exc, ray.exceptions.RayActorError):  # the worker process died (OOM kill, crash, ...)
                log.warning("batch | %s: worker died (%s); starting a new one", item.name, type(exc).__name__)
                self._kill(actor)  # an actor only 'unavailable' must not go on with the item
                self.idle.append(self._start(slot))
                return item, attempt, {"status": "failed", **where, "error": f"worker died: {cause}"}
            result = {"status": "failed", **where, "error": cause}
        self.idle.append((actor, slot))
        return item, attempt, result

    def _kill(self, actor: Any) -> None:
        try:
            self.ray.kill(actor)
        except Exception:
            pass

    def close(self) -> None:
        for actor, _ in self.idle + [w for w, _, _ in self.inflight.values()]:
            self._kill(actor)
