"""One field spread over the real two-node loopback Ray cluster: equal to the single-machine run, a lost node's
blocks run again on the other node.

The cluster is the session's (conftest.py ``ray_cluster``: head 127.0.0.2 with 2 CPUs, worker node
127.0.0.3 with 1 CPU). One of the field's conjugates lies across the block border, so the merge has cells to join.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cluster_helpers import META, marking_factory
from ray_nodes import HEAD_IP, WORKER_IP

pytest.importorskip("ray", reason="needs Ray (pip install 'deepis-rt[cluster]')")

pytestmark = pytest.mark.slow

VOXEL_SIZE_UM = tuple(META["voxel_size_um"])
SHAPE = (16, 64, 320)
#: the planner's budget that makes one block per store chunk (16 x 64 x 256): 2 blocks, the border at x = 256
MAX_MEMORY_GB = 0.015
#: conjugate centres (z, y, x): one across the block border, two inside the first block
CENTRES = [(8, 32, 256), (8, 30, 40), (8, 34, 130)]


@pytest.fixture(scope="module")
def cluster(ray_cluster):
    """The session's two-node cluster (conftest.py), with its worker node alive."""
    ray_cluster.ensure_worker(WORKER_IP)
    return ray_cluster


def conjugate_field(shape=SHAPE, centres=CENTRES, radius_vox=(5, 8, 8)) -> np.ndarray:
    """RI: a CAR-T cell (above the medium) touching a target (below) along X at each centre."""
    from scipy import ndimage as ndi

    zz, yy, xx = np.indices(shape, dtype=np.float32)
    rz, ry, rx = radius_vox
    tcell = np.zeros(shape, bool)
    target = np.zeros(shape, bool)
    for cz, cy, cx in centres:
        ball = ((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2
        tcell |= ball + ((xx - cx + rx - 1) / rx) ** 2 < 1
        target |= ball + ((xx - cx - rx + 1) / rx) ** 2 < 1
    target &= ~tcell
    ri = 1.337 + 0.04 * ndi.gaussian_filter(tcell.astype(np.float32) - target.astype(np.float32), 0.5)
    return ri.astype(np.float32)


@pytest.fixture(scope="module")
def field_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mosaic") / "field.npy"
    np.save(path, conjugate_field())
    path.with_suffix(".json").write_text(json.dumps({"voxel_size_um": list(VOXEL_SIZE_UM)}))
    return path


def _local_run(segmenter, field_file: Path, out: Path):
    """The single-machine bounded-memory run of the same field, with the same budget (so the same plan)."""
    from deepis_rt.field.segment import segment_field
    from deepis_rt.io.regions import open_region_source

    with open_region_source(field_file) as src, segmenter:
        return segment_field(segmenter, src, src.voxel_size_um, out=out, max_memory_gb=MAX_MEMORY_GB)


def _assert_same_result(ray_result, local_result) -> None:
    np.testing.assert_array_equal(np.asarray(ray_result.distance), np.asarray(local_result.distance))
    np.testing.assert_array_equal(np.asarray(ray_result.labels), np.asarray(local_result.labels))
    a, b = ray_result.analysis, local_result.analysis
    np.testing.assert_array_equal(np.asarray(a.cell_labels), np.asarray(b.cell_labels))
    assert len(b.synapses) == len(CENTRES) and len(b.cells) == 2 * len(CENTRES)  # every conjugate, merged once
    assert _rows(a.cells) == _rows(b.cells) and _rows(a.synapses) == _rows(b.synapses)


def _rows(items) -> list[str]:
    """Cells or synapses as table rows (NaN, e.g. a missing error, compares equal to itself)."""
    return [json.dumps(dataclasses.asdict(x), sort_keys=True) for x in items]


def _in_process_driver(cluster, tmp_path, monkeypatch) -> None:
    """This process as a driver from outside the cluster: explicit address, token from RAY_AUTH_TOKEN_PATH."""
    token_file = tmp_path / "token"
    token_file.write_text(cluster.token)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_segment_field_cli_over_both_nodes_equals_the_single_machine_run(cluster, field_file, export_dir, tmp_path):
    """`deepis-rt segment-field FILE --ray ADDR` from a user's shell; the workers load the model with deepis_rt.load
    (ONNX Runtime), one per node. Tables, labels and distance map equal those of the same command without --ray."""
    import zarr
    from click.testing import CliRunner

    from deepis_rt.cli import main

    common = ["--model", str(export_dir), "--backend", "onnxruntime", "--max-memory", str(MAX_MEMORY_GB),
              "--no-progress"]
    res = subprocess.run([sys.executable, "-m", "deepis_rt", "segment-field", str(field_file), "--out",
                          str(tmp_path / "ray"), "--ray", cluster.address, "--workers", "2", *common],
                         env=cluster.env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert "2 worker(s) on 2 node(s)" in res.stderr and f"{len(CENTRES)} synapses" in res.stderr, res.stderr
    local = CliRunner().invoke(main, ["segment-field", str(field_file), "--out", str(tmp_path / "local"), *common])
    assert local.exit_code == 0, local.output
    for table in ("cells.csv", "synapses.csv"):
        assert (tmp_path / "ray" / table).read_text() == (tmp_path / "local" / table).read_text()
    ray_store, local_store = (zarr.open_group(tmp_path / d / "field.ome.zarr", mode="r") for d in ("ray", "local"))
    for array in ("distance/0", "labels/segmentation/0", "labels/cells/0"):
        np.testing.assert_array_equal(ray_store[array][:], local_store[array][:], err_msg=array)
    ray = ray_store.attrs["deepis_rt"]["ray"]  # where the blocks ran, recorded in the store
    assert {node.split("/")[0] for node in ray["blocks_per_node"]} == {HEAD_IP, WORKER_IP}
    assert len(ray["blocks"]) == 2 and all(b["attempts"] == 1 and not b["earlier_runs"] for b in ray["blocks"])


def test_worker_node_killed_mid_field(cluster, field_file, tmp_path, monkeypatch):
    """The worker node dies while a block is half-way there: the block runs again on the head, the result is
    the single-machine run's."""
    from deepis_rt.cluster.ray_mosaic import segment_field_ray

    _in_process_driver(cluster, tmp_path, monkeypatch)
    marks = tmp_path / "marks"
    marks.mkdir()
    worker = next(n for n in cluster.nodes if n.name != "head" and n.alive())

    def kill_worker_node():  # once the worker node is inside a block (held there: see hold_ip)
        _wait_for(lambda: sum(p.name.startswith(f"{WORKER_IP}_") for p in marks.iterdir()) >= 2, 120,
                  "the worker node to run a block")
        cluster.kill(worker)

    killer = threading.Thread(target=kill_worker_node, daemon=True)
    killer.start()
    result, report = segment_field_ray(field_file, tmp_path / "ray", ray_address=cluster.address, retries=0,
                                       num_workers=2, max_memory_gb=MAX_MEMORY_GB,
                                       segmenter_factory=marking_factory(marks, 0.0, hold_ip=WORKER_IP))
    killer.join(timeout=5)
    assert not worker.alive()
    moved = [b for b in report.blocks if any(r["node_lost"] for r in b["earlier_runs"])]
    assert moved, report.blocks  # the report says which block moved, from the lost node to the head
    assert all(b["earlier_runs"][0]["node"].startswith(f"{WORKER_IP}/") for b in moved)
    assert all(b["node"].startswith(f"{HEAD_IP}/") and b["attempts"] == 1 for b in moved)
    assert [b["block"] for b in report.blocks] == [0, 1]
    local = _local_run(marking_factory(marks, 0.0)(), field_file, tmp_path / "local")
    _assert_same_result(result, local)
