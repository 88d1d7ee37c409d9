"""The mosaic without a cluster: block scheduling with a scripted pool, and the refusals of `segment-field --ray`.

The real cluster gives these cases in ``test_ray_mosaic.py`` (a node killed mid-field); here every
branch of the bookkeeping is driven on purpose: a block moved from a lost node without using a
retry, a failure retried, a block that keeps failing, and no worker left.
"""

from __future__ import annotations

from collections import deque

import pytest

from deepis_rt.cluster.ray_mosaic import MAX_NODE_LOSSES, schedule_blocks
from deepis_rt.errors import ClusterError
from deepis_rt.field.plan import plan_field


class ScriptedPool:
    """The actor pool's interface; ``script[block]`` lists the outcomes of the block's successive runs."""

    def __init__(self, script: dict[int, list[str]], workers: int = 2) -> None:
        self.script = {k: deque(v) for k, v in script.items()}
        self.workers = workers
        self.inflight: deque = deque()
        self.runs: list[tuple[int, int]] = []

    def has_capacity(self) -> bool:
        return len(self.inflight) < self.workers

    def submit(self, job, attempt) -> None:
        self.inflight.append((job, attempt))

    def busy(self) -> bool:
        return bool(self.inflight)

    def next_result(self):
        job, attempt = self.inflight.popleft()
        self.runs.append((job.index, attempt))
        outcome = self.script.get(job.index, deque()).popleft() if self.script.get(job.index) else "ok"
        if outcome == "ok":
            return job, attempt, {"status": "ok", "node": "head", "tiles_run": 3, "wall_s": 0.1}
        if outcome == "lost":
            self.workers -= 1 if self.workers > 1 else 0
            return job, attempt, {"status": "failed", "node_lost": True, "node": "worker", "error": "node lost"}
        if outcome == "gone":  # the last worker's node lost: nothing left to run on
            self.workers = 0
            return job, attempt, {"status": "failed", "node_lost": True, "node": "worker", "error": "node lost"}
        return job, attempt, {"status": "failed", "node": "head", "error": f"RuntimeError: {outcome}"}


@pytest.fixture(scope="module")
def plan():
    return plan_field((16, 64, 64), (16, 32, 32), 0.25, chunks=(16, 32, 32), block_zyx=(16, 32, 32))  # 4 blocks


def test_lost_node_moves_a_block_without_a_retry_and_failures_are_retried(plan):
    pool = ScriptedPool({1: ["lost"], 2: ["crash"]})
    report = schedule_blocks(pool, plan, retries=1)
    assert [b["block"] for b in report.blocks] == [0, 1, 2, 3]
    moved, retried = report.blocks[1], report.blocks[2]
    assert moved["attempts"] == 1 and moved["earlier_runs"] == [
        {"attempt": 1, "node": "worker", "node_lost": True, "error": "node lost"}]
    assert retried["attempts"] == 2 and retried["earlier_runs"][0]["error"] == "RuntimeError: crash"
    assert report.blocks[0]["earlier_runs"] == [] and report.nodes == {"head": 4}
    assert sorted(pool.runs) == [(0, 1), (1, 1), (1, 1), (2, 1), (2, 2), (3, 1)]


def test_a_block_that_keeps_failing_names_itself(plan):
    with pytest.raises(ClusterError, match=r"block 3 \(slice\(0, 16.* failed after 2 attempt\(s\): RuntimeError: bad"):
        schedule_blocks(ScriptedPool({3: ["bad", "bad"]}), plan, retries=1)
    with pytest.raises(ClusterError, match="block 0 .* failed after 1 attempt"):
        schedule_blocks(ScriptedPool({0: ["bad"]}), plan, retries=0)


def test_node_losses_are_bounded_and_no_worker_left_is_an_error(plan):
    # a block whose every node dies: moved MAX_NODE_LOSSES times, then it counts as a failure
    with pytest.raises(ClusterError, match="block 0 .* failed after 1 attempt"):
        schedule_blocks(ScriptedPool({0: ["lost"] * (MAX_NODE_LOSSES + 1)}, workers=9), plan, retries=0)
    with pytest.raises(ClusterError, match=r"no Ray worker left .* block\(s\) not run"):
        schedule_blocks(ScriptedPool({0: ["gone"]}), plan, retries=1)


def test_cli_refusals_leave_out_untouched(tmp_path):
    """An input that cannot be read by region, and a cluster that is not there: one line, exit 2, nothing written."""
    import socket

    import numpy as np
    from click.testing import CliRunner

    from deepis_rt.cli import main

    np.savez(tmp_path / "field.npz", ri=np.full((4, 8, 8), 1.337, np.float32))
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["segment-field", str(tmp_path / "field.npz"), "--out", str(out), "--ray", "auto"])
    assert res.exit_code == 2 and "field.npz: .npz cannot be read by region" in res.output, res.output
    np.save(tmp_path / "field.npy", np.full((4, 8, 8), 1.337, np.float32))
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = CliRunner().invoke(main, ["segment-field", str(tmp_path / "field.npy"), "--out", str(out), "--voxel-size",
                                    "0.5", "0.25", "0.25", "--ray", f"127.0.0.1:{port}"])
    assert res.exit_code == 2 and f"nothing is listening on port {port}" in res.output, res.output
    assert "Traceback" not in res.output and not out.exists()
