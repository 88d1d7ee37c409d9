"""OpenVINO vs ONNX Runtime on the CPU, round-robin: one 64x128x128 tile, both presets, ratios.

Usage::

    python benchmarks/openvino_cpu.py [--presets deepis-lite deepis] [--repeats 3] [--out benchmarks/results]

``deepis-rt bench`` measures its variants one after another; on a shared machine whose load
changes by minutes that moves the ratio between two backends. Here the backends take turns, one
call each per round (ONNX Runtime FP32, OpenVINO FP32, OpenVINO BF16 where the CPU has it), so a
change of load hits them alike; the ratio of each round is reported as well as the medians.
Random weights (seed 0; throughput does not depend on the values); the runtime's own runners on
the same FP32 ONNX export; 2 threads (physical cores) each. Writes
``openvino_cpu-<machine>.json`` and ``.md`` (with the CPU flags) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["deepis-lite", "deepis"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--machine", default="amd-epyc-2cpu")
    args = parser.parse_args()

    import torch

    import deepis_rt
    from deepis_rt.backends import OnnxRuntimeRunner, OpenVINORunner
    from deepis_rt.backends.openvino.runner import bf16_unavailable_reason
    from deepis_rt.bench.machine import describe_machine
    from deepis_rt.export import export_onnx

    tile = (64, 128, 128)
    report = {"benchmark": "benchmarks/openvino_cpu.py (round-robin)", "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
              "machine": describe_machine(), "load_average_before": list(os.getloadavg()), "tile_zyx": list(tile),
              "repeats": args.repeats, "models": []}
    bf16_why = bf16_unavailable_reason()
    with tempfile.TemporaryDirectory(prefix="deepis-ov-bench-") as tmp:
        for preset in args.presets:
            torch.manual_seed(0)
            path = Path(tmp) / f"{preset}.onnx"
            export_onnx(deepis_rt.build_model(preset).eval(), path, tile)
            runners = {"onnxruntime-cpu fp32": OnnxRuntimeRunner(path, intra_op_threads=args.threads),
                       "openvino-cpu fp32": OpenVINORunner(path, num_threads=args.threads, cache_dir=Path(tmp) / "ov")}
            if bf16_why is None:
                runners["openvino-cpu bf16"] = OpenVINORunner(path, precision="bf16", num_threads=args.threads)
            x = np.random.default_rng(0).standard_normal((1, 1, *tile)).astype(np.float32)
            samples: dict[str, list[float]] = {k: [] for k in runners}
            outputs = {}
            for name, r in runners.items():
                r.activate()
                outputs[name] = r.infer(x)  # warm-up, and the output for the error figure
            for i in range(args.repeats):
                for name, r in runners.items():
                    t0 = time.perf_counter()
                    r.infer(x)
                    samples[name].append(time.perf_counter() - t0)
                print(f"{preset} round {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in samples.items()), flush=True)
            for r in runners.values():
                r.deactivate()
            ref = outputs["onnxruntime-cpu fp32"]
            base = samples["onnxruntime-cpu fp32"]
            rows = []
            for name, s in samples.items():
                rows.append({"backend": name, "median_s": statistics.median(s), "samples_s": [round(v, 3) for v in s],
                             "ratio_vs_ort_per_round": [b / v for b, v in zip(base, s, strict=True)],
                             "speedup_vs_ort_median": statistics.median(base) / statistics.median(s),
                             "max_abs_diff_vs_ort": float(np.abs(outputs[name] - ref).max()),
                             "output_range": float(np.abs(ref).max())})
            if bf16_why is not None:
                rows.append({"backend": "openvino-cpu bf16", "status": "unavailable", "reason": bf16_why})
            report["models"].append({"preset": preset, "rows": rows})
    report["load_average_after"] = list(os.getloadavg())
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"openvino_cpu-{args.machine}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    m = report["machine"]
    lines = ["# OpenVINO vs ONNX Runtime, CPU, round-robin (one 64x128x128 tile per call)", "",
             f"- machine: {m['cpu']}, {m['cpu_cores']} CPUs, shared with other users (load average before "
             f"{[round(v, 1) for v in report['load_average_before']]}, after {[round(v, 1) for v in report['load_average_after']]})",
             f"- CPU flags: {' '.join(m.get('cpu_flags') or [])}",
             f"- libraries: {', '.join(f'{k} {v}' for k, v in m['libraries'].items())}; "
             f"openvino {__import__('openvino').__version__}",
             f"- {args.repeats} rounds, one call of each backend per round after one warm-up call; random weights (seed 0)",
             "", "| model | backend | median s per tile | samples s | speed-up vs ONNX Runtime (median) | per round | max diff vs ORT |",
             "|---|---|---|---|---|---|---|"]
    for mr in report["models"]:
        for r in mr["rows"]:
            if r.get("status") == "unavailable":
                lines.append(f"| {mr['preset']} | {r['backend']} | unavailable: {r['reason']} | | | | |")
                continue
            lines.append(f"| {mr['preset']} | {r['backend']} | {r['median_s']:.2f} | {', '.join(f'{v:.2f}' for v in r['samples_s'])} "
                         f"| {r['speedup_vs_ort_median']:.2f}x | {', '.join(f'{v:.2f}' for v in r['ratio_vs_ort_per_round'])} "
                         f"| {r['max_abs_diff_vs_ort']:.2g} (of {r['output_range']:.2g}) |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
