"""One large field on a Ray cluster of 1 and of 2 nodes (``deepis-rt segment-field FILE --ray ADDR``).

A field of conjugates (``deepis_rt.synth`` renders of a CAR-T and a target cell, one per 128 x 128
voxel square, as in ``benchmarks/large_field.py``; the default blocks cut through some of them) is
written as a ``.npy`` and segmented with the bundled checkpoint (``deepis_rt.load()``; the backend
``auto`` picks here), with the same plan every time (``--chunks``, ``--block``: 6 blocks by
default), three ways:

* ``local``: :func:`deepis_rt.field.segment.segment_field` in this process, one thread (the
  reference every other run must equal);
* ``ray-1-node``: a loopback cluster of one node with 1 CPU (one worker, one thread);
* ``ray-2-nodes``: a loopback cluster of two nodes with 1 CPU each (two workers, one thread each).

Each cluster is started with ``ray start`` as the tests start theirs (``tests/cluster/ray_nodes.py``),
and the driver is this process. Reported per run: wall time of the whole command (planning,
blocks, merge; the cluster's start not included), the blocks' part, blocks per node, and whether
cells, synapses and labels equal the local run's. Both nodes run on this machine and share its
cores (and whatever else runs on it): the 2-node speed-up measures the mosaic's overhead and
scheduling, not what two machines would give.

    nice -n 10 python benchmarks/large_field_ray.py [--shape 64 256 512] [--chunks 64 64 64] [--block 64 128 192]

writes ``large_field_ray-<name>.{json,md}`` under ``--out`` (machine, CPU flags and load average
included).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt.bench.machine import describe_machine

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "cluster"))  # the loopback cluster of the tests
sys.path.insert(0, str(REPO / "benchmarks"))
from large_field import conjugate_field  # noqa: E402  (rendered conjugates, as the local benchmark's)

VOXEL_SIZE_UM = (0.5, 0.25, 0.25)  # the bundled model's grid


def _summary(result: Any) -> dict[str, Any]:
    a = result.analysis
    return {"cells": len(a.cells), "synapses": len(a.synapses),
            "cells_table": [json.dumps(dataclasses.asdict(c), sort_keys=True) for c in a.cells],
            "synapses_table": [json.dumps(dataclasses.asdict(s), sort_keys=True) for s in a.synapses]}


def _same(result: Any, reference: Any, ref_summary: dict[str, Any]) -> bool:
    s = _summary(result)
    return (s["cells_table"] == ref_summary["cells_table"] and s["synapses_table"] == ref_summary["synapses_table"]
            and np.array_equal(np.asarray(result.labels), np.asarray(reference.labels))
            and np.array_equal(np.asarray(result.analysis.cell_labels), np.asarray(reference.analysis.cell_labels)))


def _stages(result: Any) -> dict[str, float]:
    """Seconds of the run's stages: the blocks (all tiles, on the workers with Ray) and the merge here."""
    t = result.timings_ms
    return {"blocks_s": round(t["infer"] / 1e3, 2), "merge_s": round(t["analyze"] / 1e3, 2)}


def run_local(field: Path, out: Path, chunks: tuple[int, int, int], block: tuple[int, int, int]) -> tuple[Any, float]:
    import deepis_rt
    from deepis_rt.field.segment import segment_field
    from deepis_rt.io.regions import open_region_source

    segmenter = deepis_rt.load(num_threads=1)
    t0 = time.perf_counter()
    with open_region_source(field) as src:
        result = segment_field(segmenter, src, src.voxel_size_um, out=out, chunks=chunks, block_zyx=block)
    return result, time.perf_counter() - t0


def run_ray(field: Path, out: Path, chunks: tuple[int, int, int], block: tuple[int, int, int],
            n_nodes: int) -> tuple[Any, Any, float]:
    from ray_nodes import RayCluster

    from deepis_rt.cluster.ray_mosaic import segment_field_ray

    cluster = RayCluster.create()
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")}
    try:
        cluster.start_head(num_cpus=1)
        for i in range(1, n_nodes):
            cluster.start_worker(name=f"worker{i}", ip=f"127.0.0.{2 + i}", num_cpus=1)
        cluster.wait_ready()
        token = cluster.root / "driver_token"
        token.write_text(cluster.token)
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
        os.environ.pop("RAY_AUTH_MODE", None)
        t0 = time.perf_counter()
        result, report = segment_field_ray(field, out, ray_address=cluster.address, chunks=chunks, block_zyx=block,
                                           retries=0)
        return result, report, time.perf_counter() - t0
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        cluster.stop()
        cluster.cleanup()


def _markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# One field on a Ray cluster of 1 and 2 nodes",
        "",
        f"Field {' x '.join(map(str, report['shape_zyx']))} voxels (Z, Y, X), {report['field_gb']:.2f} GB of float32 "
        f"RI, {report['blocks']} blocks of up to {' x '.join(map(str, report['block_zyx']))}, "
        f"{report['tile_runs']} tile runs; {report['cells']} cells and {report['synapses']} synapses; model: the "
        f"bundled checkpoint, backend {report['backend']}.",
        f"Machine: {m['cpu']}, {m['cpu_cores']} cores (flags: {', '.join(report['cpu_flags_of_note']) or 'none of note'}), "
        f"load average {report['load_average_1m_before']:.2f} before and {report['load_average_1m_after']:.2f} after "
        "the runs (1 min).",
        "",
        "| run | nodes x CPUs | wall (s) | blocks (s) | merge (s) | blocks per node | equals the local run |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["runs"]:
        per_node = ", ".join(f"{n}: {k}" for n, k in (r.get("blocks_per_node") or {}).items()) or "-"
        lines.append(f"| {r['run']} | {r['nodes']} | {r['wall_s']:.1f} | {r['blocks_s']:.1f} | {r['merge_s']:.1f} | "
                     f"{per_node} | {r['equal_to_local']} |")
    lines += [
        "",
        f"2 nodes / 1 node (wall): {report['speedup_2_vs_1_nodes']:.2f}x.",
        "",
        "Both Ray nodes run on this one machine and share its cores with each other, with the driver's merge and "
        "with whatever else ran at the time (see the load average): the ratio shows what the mosaic's scheduling "
        "and shared store cost or allow here, not what two machines would give. Wall time is the whole command "
        "after the cluster started: planning, blocks on the workers (each worker loads the model once), and the "
        "merge (labels and measurements) in the driver; blocks: the distance map's blocks (with Ray: from the "
        "first block sent to the last one written, workers' start and model loading included); merge: labels, "
        "cells and synapses in this process.",
        "",
        f"Command: `{report['command']}`",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(64, 256, 512), metavar=("Z", "Y", "X"))
    ap.add_argument("--chunks", type=int, nargs=3, default=(64, 64, 64), metavar=("Z", "Y", "X"))
    ap.add_argument("--block", type=int, nargs=3, default=(64, 128, 192), metavar=("Z", "Y", "X"))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--name", default="amd-epyc-2cpu", help="host part of the file names")
    args = ap.parse_args()
    shape, chunks, block = tuple(args.shape), tuple(args.chunks), tuple(args.block)
    machine = describe_machine()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="large-field-ray-") as tmp:
        work = Path(tmp)
        field = work / "field.npy"
        np.save(field, conjugate_field(shape))  # type: ignore[arg-type]
        field.with_suffix(".json").write_text(json.dumps({"voxel_size_um": list(VOXEL_SIZE_UM)}))
        reference, local_s = run_local(field, work / "local", chunks, block)  # type: ignore[arg-type]
        ref = _summary(reference)
        from deepis_rt.field.store import FieldStore

        facts = FieldStore.open(work / "local" / "field.ome.zarr", mode="r").attrs
        runs: list[dict[str, Any]] = [{"run": "local (no Ray)", "nodes": "this process, 1 thread", "wall_s": local_s,
                                       **_stages(reference), "equal_to_local": True}]
        for n in (1, 2):
            result, report, wall = run_ray(field, work / f"ray{n}", chunks, block, n)  # type: ignore[arg-type]
            runs.append({"run": f"ray-{n}-node{'s' if n > 1 else ''}", "nodes": f"{n} x 1", "wall_s": wall,
                         **_stages(result), "blocks_per_node": report.nodes, "workers": report.workers,
                         "equal_to_local": _same(result, reference, ref)})
    one, two = runs[1]["wall_s"], runs[2]["wall_s"]
    flags = machine.get("cpu_flags") or []
    report_json = {
        "benchmark": "large_field_ray",
        "date": datetime.now().isoformat(timespec="seconds"),
        "command": "nice -n 10 python benchmarks/large_field_ray.py " + " ".join(sys.argv[1:]),
        "shape_zyx": list(shape),
        "field_gb": int(np.prod(shape)) * 4 / 1e9,
        "chunks_zyx": list(chunks),
        "block_zyx": list(block),
        "blocks": facts["plan"]["blocks"],
        "tile_runs": facts["plan"]["tile_runs"],
        "backend": reference.backend,
        "cells": ref["cells"],
        "synapses": ref["synapses"],
        "runs": runs,
        "speedup_2_vs_1_nodes": one / two,
        "load_average_1m_before": load_before,
        "load_average_1m_after": os.getloadavg()[0],
        "cpu_flags_of_note": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in flags],
        "machine": machine,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"large_field_ray-{args.name}"
    stem.with_suffix(".json").write_text(json.dumps(report_json, indent=2) + "\n")
    stem.with_suffix(".md").write_text(_markdown(report_json))
    print(_markdown(report_json))


if __name__ == "__main__":
    main()
