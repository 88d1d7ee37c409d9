"""A node killed a moment ago: its actor is unreachable before the head declares the node dead.

The pool must wait for the verdict instead of taking the item for a dead worker on a live node (which
ran it again only while retries last, and started its replacement on the dead node). Ray's own
exception classes, with a stand-in for the cluster whose health checks lag by a few polls: the real
race needs a loaded head (tests/cluster/test_ray_mosaic.py kills a real node).
"""

from __future__ import annotations

from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from deepis_rt.cluster import ray_pool  # noqa: E402
from deepis_rt.cluster.items import BatchItem  # noqa: E402
from deepis_rt.cluster.ray_placement import ActorSlot  # noqa: E402


class _Actor:
    def __init__(self, cluster, slot_node):
        self.cluster, self.node = cluster, slot_node
        self.process = self

    def remote(self, item, attempt):
        return (self.node, item.name, attempt)


class _ActorClass:
    def __init__(self, cluster):
        self.cluster = cluster

    def options(self, scheduling_strategy=None, **_):
        self.node = scheduling_strategy.node_id
        return self

    def remote(self, *args):
        return _Actor(self.cluster, self.node)


HEAD, WORKER = "aa" * 28, "bb" * 28  # node ids as Ray writes them (hex)


class _Cluster:
    """Two nodes; the worker node dies while running, and the head notices ``lag_polls`` polls later."""

    exceptions = ray.exceptions

    def __init__(self, lag_polls: int, error: type[Exception]):
        self.lag, self.error, self.polls, self.dead, self.killed = lag_polls, error, 0, False, []

    def remote(self, **_):
        return lambda cls: _ActorClass(self)

    def nodes(self):
        if self.dead:
            self.polls += 1
        return [{"NodeID": HEAD, "Alive": True}, {"NodeID": WORKER, "Alive": not (self.dead and self.polls > self.lag)}]

    def wait(self, refs, num_returns=1):
        return [refs[0]], list(refs[1:])

    def get(self, ref):
        node, name, attempt = ref
        if node == WORKER:
            self.dead = True
            if self.error is ray.exceptions.ActorUnavailableError:
                raise self.error("The actor is temporarily unavailable: RpcError: Socket closed", None)
            raise self.error()
        return {"status": "ok", "item": name}

    def kill(self, actor):
        self.killed.append(actor)


def _pool(cluster):
    slots = [ActorSlot(WORKER, "127.0.0.3", 1.0, 0.0, 1), ActorSlot(HEAD, "127.0.0.2", 1.0, 0.0, 1)]
    return ray_pool.RayActorPool(cluster, object, (None, None, None, None), slots[:1], slots)


def test_an_unreachable_actor_waits_for_its_node_to_be_declared_dead(monkeypatch):
    monkeypatch.setattr(ray_pool.time, "sleep", lambda s: None)
    cluster = _Cluster(lag_polls=5, error=ray.exceptions.ActorUnavailableError)
    pool = _pool(cluster)
    pool.submit(BatchItem("video", "folder", Path("video")), 1)
    item, attempt, result = pool.next_result()
    assert result["status"] == "failed" and result["node_lost"] is True, result
    assert WORKER in pool.lost_nodes and attempt == 1
    # the replacement runs on the head, not on the dead node
    assert [slot.node_id for _, slot in pool.idle] == [HEAD]


def test_an_unreachable_actor_on_a_node_that_stays_alive_is_a_dead_worker(monkeypatch):
    monkeypatch.setattr(ray_pool.time, "sleep", lambda s: None)
    monkeypatch.setattr(ray_pool, "NODE_DEATH_GRACE_S", 0.05)
    cluster = _Cluster(lag_polls=10**9, error=ray.exceptions.ActorUnavailableError)
    pool = _pool(cluster)
    pool.submit(BatchItem("video", "folder", Path("video")), 1)
    _, _, result = pool.next_result()
    assert result["status"] == "failed" and not result.get("node_lost") and "worker died" in result["error"]
    assert [slot.node_id for _, slot in pool.idle] == [WORKER]  # replaced where it was
