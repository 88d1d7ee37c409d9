"""Cost of ``analyze()`` against inference on one 64 x 128 x 128 frame (the model's tile).

A validation conjugate (``deepis_rt.validation``, contact radius 3 um) at the model's voxel size
(0.5, 0.25, 0.25) um is segmented by the bundled checkpoint on OpenVINO (CPU); then ``analyze()``
and the inference are timed, interleaved in one process. With ``--before DIR`` (a source tree of
an earlier version, e.g. ``git archive <commit> deepis_rt | tar -x -C DIR``), that version's IS-area
estimator (``analysis/contact.py``) is timed on the same map, interleaved too (the two versions take
turns at running first after each inference), so that the ratio does not depend on the machine's load
nor on the order.

    python benchmarks/is_area_cost.py [--before DIR] [--repeats 5]

writes benchmarks/results/is_area_cost.{json,md}.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import deepis_rt
from deepis_rt.analysis import analyze
from deepis_rt.analysis import frame as frame_module
from deepis_rt.bench.machine import describe_machine
from deepis_rt.validation.optics import IMAGING_CONDITIONS, image
from deepis_rt.validation.phantoms import make_scene, render_truth


def _old_contact(tree: Path):
    spec = importlib.util.spec_from_file_location("previous_contact", tree / "deepis_rt/analysis/contact.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module.contact_surface


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, help="source tree of the version to compare with")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    vs = (0.5, 0.25, 0.25)
    scene = make_scene("spheres", 3.0, vs, seed=7, field_um=(32.0, 32.0, 32.0))
    truth = render_truth(scene)
    ri = image(truth.ri_object, vs, IMAGING_CONDITIONS["odt-refilled"], np.random.default_rng(7))
    seg = deepis_rt.load(None, backend="openvino-cpu", analyze=False)
    seg.segment(ri, vs)  # warm-up
    current = frame_module.contact_surface
    previous = _old_contact(args.before) if args.before else None
    times: dict[str, list[float]] = {"infer_ms": [], "analyze_ms": [], "analyze_before_ms": []}
    versions = [("analyze_ms", current)] + ([("analyze_before_ms", previous)] if previous else [])
    fa = None
    for i in range(args.repeats):
        t0 = time.perf_counter()
        distance = seg.segment(ri, vs).distance
        times["infer_ms"].append((time.perf_counter() - t0) * 1e3)
        # the analysis timed first after an inference runs slower (caches, the runtime's threads
        # winding down): the versions take turns at going first
        for key, estimator in versions[i % 2:] + versions[:i % 2]:
            frame_module.contact_surface = estimator
            try:
                t0 = time.perf_counter()
                result = analyze(distance, ri, vs)
                times[key].append((time.perf_counter() - t0) * 1e3)
            finally:
                frame_module.contact_surface = current
            if estimator is current:
                fa = result
    med = {k: statistics.median(v) for k, v in times.items() if v}
    out = {"frame_shape": list(ri.shape), "voxel_size_um": list(vs), "synapses": len(fa.synapses),
           "median_ms": med, "runs_ms": times, "analyze_over_infer": med["analyze_ms"] / med["infer_ms"],
           "load_average": os.getloadavg(), "machine": describe_machine()}
    if "analyze_before_ms" in med:
        out["analyze_before_over_infer"] = med["analyze_before_ms"] / med["infer_ms"]
        # per repeat (the two ran on the same map, one after the other), then the median
        out["analyze_over_before"] = statistics.median(
            a / b for a, b in zip(times["analyze_ms"], times["analyze_before_ms"], strict=True))
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "is_area_cost.json").write_text(json.dumps(out, indent=1) + "\n")
    m = out["machine"]
    md = ["# analyze() against inference, one 64 x 128 x 128 frame", "",
          "`python benchmarks/is_area_cost.py" + (" --before DIR" if previous else "") + "`: medians of "
          f"{args.repeats} interleaved runs in one process (bundled checkpoint, OpenVINO CPU).", "",
          "| quantity | median (ms) | / inference |", "|---|---|---|",
          f"| inference (segment, no analysis) | {med['infer_ms']:.0f} | 1 |",
          f"| analyze(), this version | {med['analyze_ms']:.0f} | {100 * out['analyze_over_infer']:.1f} % |"]
    if "analyze_before_ms" in med:
        md.append(f"| analyze(), previous IS-area estimator | {med['analyze_before_ms']:.0f} "
                  f"| {100 * out['analyze_before_over_infer']:.1f} % |")
        md += ["", f"analyze(), this version / previous: {out['analyze_over_before']:.2f} "
               "(median of the per-repeat ratios)."]
    flags = " ".join(f for f in (m["cpu_flags"] or []) if f in ("avx2", "avx512f", "avx512_bf16", "amx_tile"))
    md += ["", f"Machine: {m['cpu']}, {m['cpu_cores']} CPUs ({flags}); load average "
           f"{', '.join(f'{x:.1f}' for x in out['load_average'])} (shared machine: ratios, not absolute times).", ""]
    (args.results / "is_area_cost.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
