"""Large fields with bounded memory: time and peak memory against the field's size.

Usage::

    python benchmarks/large_field.py [--tiles 1 4 16 64] [--max-memory 0.75] [--backend openvino]
                                     [--compare-up-to 4] [--ht2] [--out benchmarks/results]

Fields of 1, 4, 16 and 64 model tiles (1 x 1 to 8 x 8 tiles of 64 x 128 x 128, one tile deep, so
the sides are 128 + (k - 1) x 96 voxels at the default overlap) hold synthetic conjugates
(``deepis_rt.synth`` renders of a CAR-T and a target cell, one per 128 x 128 voxel square; those
at the far edges are cut by the field). Each run is a fresh process
(the bundled deepis-lite checkpoint on the chosen CPU backend) that reads the field as a
memory-mapped ``.npy`` and runs :func:`deepis_rt.field.segment.segment_field` with
``--max-memory``; a sampling thread records the resident set size (psutil, every 20 ms). Peak
memory is reported as RSS above the process's footprint just before the call (model loaded,
one tile run to warm up), as the issue's baseline was (a 64 x 1024 x 1024 field through
``deepis_rt.load().segment()`` peaked at 10.3 x its input). Fields up to ``--compare-up-to``
tiles also run the in-memory path (the input loaded whole), and the results of both are
compared. ``--ht2`` adds one HT-2 field of view, 210 x 732 x 732 voxels (bounded path only).

Writes ``large_field-<machine>.json``, ``.md`` and ``.png`` (time and peak memory against the
number of tiles) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

TILE = (64, 128, 128)
STRIDE = 96
HT2_SHAPE = (210, 732, 732)


def _conjugates(n: int = 4) -> list[np.ndarray]:
    """RI contrast of ``n`` rendered conjugates (``deepis_rt.synth``, the imaging the bundled
    checkpoint was trained on; 64 x 128 x 128, medium subtracted)."""
    from deepis_rt.synth.scene import make_video, render_frame

    out = []
    for seed in range(n):
        frame = render_frame(make_video(seed, TILE, (0.5, 0.25, 0.25), n_frames=10), 9, with_truth_area=False)
        out.append((frame.ri - np.float32(np.median(frame.ri))).astype(np.float32))
    return out


def conjugate_field(shape: tuple[int, int, int], spacing: int = 128, seed: int = 0) -> np.ndarray:
    """Medium RI with one rendered conjugate per ``spacing`` x ``spacing`` square (at a random
    depth when the field is deeper than a conjugate), built square by square."""
    rng = np.random.default_rng(seed)
    ri = np.full(shape, 1.337, np.float32)
    for z in range(shape[0]):  # slab by slab: no float64 temporary of the whole field
        ri[z] += 0.001 * rng.standard_normal(shape[1:], dtype=np.float32)
    conjugates = _conjugates()
    cz, cy, cx = conjugates[0].shape
    k = 0
    for y in range(0, shape[1], spacing):
        for x in range(0, shape[2], spacing):
            z = int(rng.integers(0, max(shape[0] - cz, 0) + 1))
            region = ri[z : z + cz, y : y + cy, x : x + cx]
            region += conjugates[k % len(conjugates)][: region.shape[0], : region.shape[1], : region.shape[2]]
            k += 1
    return ri


class PeakRSS:
    """Samples this process's resident set size in a thread; ``peak`` in bytes."""

    def __init__(self, every_s: float = 0.02) -> None:
        import psutil

        self._proc = psutil.Process()
        self.every_s = every_s
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.every_s)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def child(job: dict) -> dict:
    """One measured run in this (fresh) process."""
    import psutil

    import deepis_rt
    from deepis_rt.field.segment import segment_field

    seg = deepis_rt.load(backend=job["backend"])
    seg.runner.infer(np.zeros((1, 1, *seg.tile_zyx), np.float32))  # warm-up: first-call allocations
    in_memory = job["path"] == "in-memory"
    volume = np.load(job["npy"], mmap_mode=None if in_memory else "r")
    baseline = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    with PeakRSS() as rss:
        if in_memory:
            result = seg.segment(volume, max_memory_gb=1e6)  # a budget this field never exceeds: in memory
        else:
            result = segment_field(seg, volume, out=job["store"], max_memory_gb=job["max_memory_gb"])
    seconds = time.perf_counter() - t0
    out = {"path": job["path"], "seconds": seconds, "baseline_rss_mb": baseline / 2**20, "peak_rss_mb": rss.peak / 2**20,
           "peak_above_baseline_mb": (rss.peak - baseline) / 2**20, "cells": len(result.cells),
           "synapses": len(result.synapses), "quality": result.quality, "backend": seg.backend,
           "timings_ms": {k: round(v, 1) for k, v in result.timings_ms.items()}}
    if not job["save"]:
        return out | _plan(job)
    np.save(job["result_prefix"] + "-distance.npy", np.asarray(result.distance))
    np.save(job["result_prefix"] + "-labels.npy", np.asarray(result.labels))
    with open(job["result_prefix"] + "-tables.json", "w") as fh:
        json.dump({"cells": [c.__dict__ for c in result.cells],
                   "synapses": [s.__dict__ for s in result.synapses]}, fh, default=float)
    return out | _plan(job)


def _plan(job: dict) -> dict:
    if job["path"] == "in-memory":
        return {}
    from deepis_rt.field import FieldStore

    return {"plan": FieldStore.open(job["store"], mode="r").attrs["plan"]}


def _run_child(job: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"{job['path']} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _compare(prefix_a: str, prefix_b: str) -> dict:
    da, db = np.load(prefix_a + "-distance.npy"), np.load(prefix_b + "-distance.npy")
    la, lb = np.load(prefix_a + "-labels.npy"), np.load(prefix_b + "-labels.npy")
    ta, tb = (json.loads(Path(p + "-tables.json").read_text()) for p in (prefix_a, prefix_b))
    return {"distance_max_abs_diff_um": float(np.abs(da - db).max()), "labels_equal": bool(np.array_equal(la, lb)),
            "cells_equal": ta["cells"] == tb["cells"], "synapses_equal": ta["synapses"] == tb["synapses"]}


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in report["fields"] if r["name"].startswith("tiles")]
    tiles = [r["tiles"] for r in runs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(tiles, [r["bounded"]["seconds"] for r in runs], "o-", label="bounded memory (segment_field)")
    mem = [(r["tiles"], r["in_memory"]["seconds"]) for r in runs if r.get("in_memory")]
    if mem:
        ax1.plot(*zip(*mem, strict=True), "s--", label="in memory (segment)")
    ax1.set(xscale="log", yscale="log", xlabel="tiles in the field", ylabel="seconds", title="time")
    ax1.legend()
    ax2.plot(tiles, [r["bounded"]["peak_above_baseline_mb"] for r in runs], "o-", label="bounded: peak RSS above baseline")
    ax2.plot(tiles, [r["input_mb"] for r in runs], ":", label="input (float32)")
    ax2.plot(tiles, [10.3 * r["input_mb"] for r in runs], "--", label="10.3 x input (in-memory baseline)")
    if mem:
        ax2.plot([r["tiles"] for r in runs if r.get("in_memory")],
                 [r["in_memory"]["peak_above_baseline_mb"] for r in runs if r.get("in_memory")], "s", label="in memory: measured")
    ax2.axhline(report["max_memory_gb"] * 1e9 / 2**20, color="k", lw=0.8, label="--max-memory")
    ax2.set(xscale="log", yscale="log", xlabel="tiles in the field", ylabel="MiB", title="peak memory")
    ax2.legend(fontsize=7)
    fig.suptitle(f"{report['backend']} on {report['machine']['cpu']} ({report['machine']['cpu_cores']} cores), "
                 f"load {report['load_average_before'][0]:.1f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _markdown(report: dict) -> str:
    m = report["machine"]
    flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if f in (m.get("cpu_flags") or [])]
    lines = [f"# Large fields with bounded memory ({report['backend']})", "",
             f"Command: `{report['command']}`  ", f"Date (UTC): {report['date_utc']}  ",
             f"Machine: {m['cpu']}, {m['cpu_cores']} cores, flags {', '.join(flags) or 'none of avx2/avx512f/avx512_bf16/amx'}; "
             f"load average {report['load_average_before'][0]:.1f} before, {report['load_average_after'][0]:.1f} after "
             "(a machine shared with other work: times are slowed alike, memory is not).  ",
             f"Budget `--max-memory {report['max_memory_gb']}`; peak = resident memory above the process's footprint "
             "before the call (model loaded and warmed up). Baseline: the in-memory path peaked at 10.3 x the input "
             "on a 64 x 1024 x 1024 field.", "",
             "| field | voxels (Z x Y x X) | input MiB | tiles | tile runs | blocks | bounded s | bounded peak MiB | "
             "peak / input | in-memory s | in-memory peak MiB | in-memory peak / input | same results |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in report["fields"]:
        b, im, cmp = r["bounded"], r.get("in_memory"), r.get("comparison")
        same = "-" if not cmp else (
            f"labels {'=' if cmp['labels_equal'] else '!='}, cells {'=' if cmp['cells_equal'] else '!='}, "
            f"synapses {'=' if cmp['synapses_equal'] else '!='}, distance max diff {cmp['distance_max_abs_diff_um']:.1e} um")
        lines.append(
            f"| {r['name']} | {' x '.join(map(str, r['shape']))} | {r['input_mb']:.0f} | {r['tiles']} | "
            f"{b['plan']['tile_runs']} | {b['plan']['blocks']} | {b['seconds']:.0f} | {b['peak_above_baseline_mb']:.0f} | "
            f"{b['peak_above_baseline_mb'] / r['input_mb']:.2f} | {im['seconds']:.0f} | {im['peak_above_baseline_mb']:.0f} | "
            f"{im['peak_above_baseline_mb'] / r['input_mb']:.2f} | {same} |" if im else
            f"| {r['name']} | {' x '.join(map(str, r['shape']))} | {r['input_mb']:.0f} | {r['tiles']} | "
            f"{b['plan']['tile_runs']} | {b['plan']['blocks']} | {b['seconds']:.0f} | {b['peak_above_baseline_mb']:.0f} | "
            f"{b['peak_above_baseline_mb'] / r['input_mb']:.2f} | - | - | - | {same} |")
    lines += ["", "Cells and synapses found (bounded path): "
              + "; ".join(f"{r['name']}: {r['bounded']['cells']} cells, {r['bounded']['synapses']} synapses"
                          for r in report["fields"]), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiles", nargs="*", type=int, default=[1, 4, 16, 64], help="tiles per field (squares)")
    parser.add_argument("--max-memory", type=float, default=0.75, help="GB budget of the bounded path")
    parser.add_argument("--backend", default="openvino")
    parser.add_argument("--compare-up-to", type=int, default=4, help="also run the in-memory path up to this many tiles")
    parser.add_argument("--ht2", action="store_true", help="add the HT-2 field of view (210 x 732 x 732)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--machine", default="amd-epyc-2cpu")
    parser.add_argument("--name", default="large_field")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    from deepis_rt.bench.machine import describe_host

    fields = []
    for tiles in args.tiles:
        k = int(round(tiles ** 0.5))
        if k * k != tiles:
            parser.error(f"--tiles {tiles}: expected square numbers (1, 4, 16, 64)")
        side = TILE[1] + (k - 1) * STRIDE
        fields.append((f"tiles-{tiles}", (TILE[0], side, side), tiles))
    if args.ht2:
        fields.append(("HT-2 field of view", HT2_SHAPE, None))
    report = {"benchmark": "benchmarks/large_field.py", "command": "python " + " ".join(sys.argv),
              "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ"), "machine": describe_host(),
              "load_average_before": list(os.getloadavg()), "backend": args.backend, "max_memory_gb": args.max_memory,
              "fields": []}
    with tempfile.TemporaryDirectory(prefix="deepis-rt-large-field-") as tmp:
        for name, shape, tiles in fields:
            npy = os.path.join(tmp, "field.npy")
            np.save(npy, conjugate_field(shape))
            entry = {"name": name, "shape": list(shape), "input_mb": float(np.prod(shape)) * 4 / 2**20}
            compare = tiles is not None and tiles <= args.compare_up_to
            job = {"npy": npy, "backend": args.backend, "max_memory_gb": args.max_memory, "save": compare,
                   "store": os.path.join(tmp, "field.ome.zarr"), "result_prefix": os.path.join(tmp, "bounded")}
            entry["bounded"] = _run_child({**job, "path": "bounded"})
            entry["tiles"] = entry["bounded"]["plan"]["tiles"]
            report["backend"] = entry["bounded"]["backend"]
            if compare:
                entry["in_memory"] = _run_child({**job, "path": "in-memory", "result_prefix": os.path.join(tmp, "memory")})
                entry["comparison"] = _compare(os.path.join(tmp, "bounded"), os.path.join(tmp, "memory"))
            report["fields"].append(entry)
            print(f"{name}: {json.dumps({k: v for k, v in entry.items() if k != 'bounded'})} "
                  f"bounded {entry['bounded']['seconds']:.0f} s, peak +{entry['bounded']['peak_above_baseline_mb']:.0f} MiB",
                  flush=True)
    report["load_average_after"] = list(os.getloadavg())
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{args.name}-{args.machine}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    stem.with_suffix(".md").write_text(_markdown(report))
    if any(r["name"].startswith("tiles") for r in report["fields"]):
        _plot(report, stem.with_suffix(".png"))
    print(f"wrote {stem}.json, .md, .png")


if __name__ == "__main__":
    main()
