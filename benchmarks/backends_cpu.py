"""ONNX Runtime CPU vs PyTorch eager CPU: throughput on one 64x128x128 tile, both presets, one run.

Usage::

    python benchmarks/backends_cpu.py [--presets deepis-lite deepis] [--repeats 3] [--out benchmarks/results]

Random weights (seed 0; throughput does not depend on the values). Both backends run through
the runtime's own runners (``TorchRunner``, ``OnnxRuntimeRunner``), so this measures what
``deepis_rt.load`` runs. The baseline is plain PyTorch eager FP32 under ``torch.inference_mode``
with ``torch.set_num_threads(physical cores)``; a ``channels_last_3d`` variant is measured too.
ONNX Runtime variants: execution mode (sequential / parallel), thread spinning on / off, and the
graph simplified by onnxslim. Variants are measured round-robin (one call of each per round) so
that a change of load on a shared machine hits them alike; the load average is recorded.
Writes ``backends_cpu-<machine>.json`` and ``.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TILE = (64, 128, 128)


def machine() -> dict:
    from deepis_rt.backends.onnxrt.runner import physical_cores

    model = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "cpu_model": model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "physical_cores": physical_cores(),
        "memory_gib": mem_gib,
        "platform": platform.platform(),
    }


def versions() -> dict:
    import onnx
    import onnxruntime
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
           "onnx": onnx.__version__, "numpy": np.__version__}
    try:
        import onnxslim

        out["onnxslim"] = onnxslim.__version__
    except ImportError:
        out["onnxslim"] = None
    return out


def build(preset: str, workdir: Path):
    import torch

    from deepis_rt.export import export_onnx
    from deepis_rt.model import complexity

    torch.manual_seed(0)
    from deepis_rt.model import build_model

    model = build_model(preset).eval()
    onnx_path = workdir / f"{preset}.onnx"
    t0 = time.perf_counter()
    export_onnx(model, onnx_path, TILE)
    export_s = time.perf_counter() - t0
    slim_path = None
    try:
        import onnx
        import onnxslim

        slim = onnxslim.slim(onnx.load(str(onnx_path)))
        slim_path = workdir / f"{preset}.slim.onnx"
        onnx.save(slim, str(slim_path))
    except Exception as exc:  # onnxslim is optional
        print(f"onnxslim skipped: {exc}", file=sys.stderr)
    cx = complexity(model.config, TILE)
    return model, onnx_path, slim_path, {"parameters": cx.parameters, "gflops_per_tile": round(cx.gflops_per_tile, 1),
                                          "export_s": round(export_s, 1)}


def run_preset(preset: str, repeats: int, workdir: Path, threads: int) -> dict:
    from deepis_rt.backends import OnnxRuntimeRunner, TorchRunner

    model, onnx_path, slim_path, facts = build(preset, workdir)
    variants = {
        "torch eager fp32 (baseline)": TorchRunner(model, num_threads=threads),
        "torch eager fp32 channels_last_3d": TorchRunner(model, num_threads=threads, channels_last=True),
        "onnxruntime sequential, spinning": OnnxRuntimeRunner(onnx_path, intra_op_threads=threads),
        "onnxruntime sequential, no spinning": OnnxRuntimeRunner(onnx_path, intra_op_threads=threads,
                                                                 allow_spinning=False),
        "onnxruntime parallel, spinning": OnnxRuntimeRunner(onnx_path, intra_op_threads=threads,
                                                            execution_mode="parallel"),
    }
    if slim_path is not None:
        variants["onnxruntime sequential, spinning, onnxslim"] = OnnxRuntimeRunner(slim_path, intra_op_threads=threads)
    heavy = facts["gflops_per_tile"] > 500
    if heavy:
        # one call takes minutes on a small CPU: the executor/spinning variants are measured on the
        # light preset only, and one repeat fewer is run
        for name in ("onnxruntime sequential, no spinning", "onnxruntime parallel, spinning"):
            variants.pop(name)
        repeats = max(2, repeats - 1)
    facts["repeats"] = repeats
    x = np.random.default_rng(0).standard_normal((1, 1, *TILE)).astype(np.float32)
    times: dict[str, list[float]] = {name: [] for name in variants}
    outputs = {}
    for name, runner in variants.items():
        runner.activate()
        outputs[name] = runner.infer(x)  # warm-up (allocations, oneDNN primitive creation)
    for _ in range(repeats):
        for name, runner in variants.items():
            t0 = time.perf_counter()
            runner.infer(x)
            times[name].append(time.perf_counter() - t0)
    ref = outputs["torch eager fp32 (baseline)"]
    results = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        results[name] = {
            "seconds": [round(t, 3) for t in ts],
            "median_s": round(med, 3),
            "tiles_per_s": round(1.0 / med, 4),
            "gflop_per_s": round(facts["gflops_per_tile"] / med, 1),
            "max_abs_diff_vs_torch": float(np.abs(outputs[name] - ref).max()),
        }
    for runner in variants.values():
        runner.deactivate()
    base = results["torch eager fp32 (baseline)"]["median_s"]
    best_torch = min(v["median_s"] for k, v in results.items() if k.startswith("torch"))
    ort = {k: v for k, v in results.items() if k.startswith("onnxruntime")}
    best_ort_name = min(ort, key=lambda k: ort[k]["median_s"])
    default_ort = "onnxruntime sequential, spinning"  # what OnnxRuntimeRunner uses by default
    return {
        **facts,
        "variants": results,
        "speedup_default_ort_vs_torch_eager": round(base / results[default_ort]["median_s"], 2),
        "best_ort_variant": best_ort_name,
        "speedup_best_ort_vs_torch_eager": round(base / ort[best_ort_name]["median_s"], 2),
        "speedup_best_ort_vs_best_torch": round(best_torch / ort[best_ort_name]["median_s"], 2),
    }


def to_markdown(report: dict) -> str:
    m, v = report["machine"], report["versions"]
    lines = [
        "# ONNX Runtime CPU vs PyTorch eager CPU (one 64x128x128 tile, batch 1)",
        "",
        f"- Machine: {m['cpu_model']}, {m['usable_cpus']} usable CPUs ({m['physical_cores']} physical cores), "
        f"{m['memory_gib']} GiB; {m['platform']}.",
        f"- Versions: Python {v['python']}, torch {v['torch']}, onnxruntime {v['onnxruntime']}, onnx {v['onnx']}, "
        f"onnxslim {v['onnxslim']}, numpy {v['numpy']}.",
        f"- Threads: {report['threads']} (intra-op, both backends). Repeats: {report['repeats']} per variant "
        "after one warm-up, round-robin; the median is reported. Random weights (seed 0).",
        f"- Load average (1/5/15 min) before: {report['loadavg_before']}, after: {report['loadavg_after']} "
        "(the machine is shared: other jobs ran at the same time, so absolute times are pessimistic).",
        f"- Date: {report['date_utc']}. Command: `{report['command']}`.",
        "",
    ]
    for preset, res in report["presets"].items():
        lines += [
            f"## {preset} ({res['parameters']:,} parameters, {res['gflops_per_tile']} GFLOP per tile)",
            "",
            f"{res['repeats']} timed runs per variant after one warm-up.",
            "",
            "| variant | median s / tile | tiles/s | GFLOP/s | max abs diff vs torch (um) | runs (s) |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, r in res["variants"].items():
            lines.append(f"| {name} | {r['median_s']} | {r['tiles_per_s']} | {r['gflop_per_s']} | "
                         f"{r['max_abs_diff_vs_torch']:.1e} | {', '.join(map(str, r['seconds']))} |")
        lines += [
            "",
            f"- ONNX Runtime (runner defaults) vs PyTorch eager: **{res['speedup_default_ort_vs_torch_eager']}x**",
            f"- best ONNX Runtime variant ({res['best_ort_variant']}) vs PyTorch eager: "
            f"**{res['speedup_best_ort_vs_torch_eager']}x**; vs the best PyTorch variant: "
            f"{res['speedup_best_ort_vs_best_torch']}x",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["deepis-lite", "deepis"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    from deepis_rt.backends.onnxrt.runner import physical_cores

    threads = args.threads or physical_cores()
    report = {
        "benchmark": "backends_cpu",
        "tile_zyx": list(TILE),
        "batch": 1,
        "threads": threads,
        "repeats": args.repeats,
        "machine": machine(),
        "versions": versions(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python benchmarks/backends_cpu.py " + " ".join(sys.argv[1:]),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
        "presets": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            print(f"{preset} ...", file=sys.stderr, flush=True)
            report["presets"][preset] = run_preset(preset, args.repeats, Path(tmp), threads)
    report["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    cpu = "".join(c if c.isalnum() else "-" for c in report["machine"]["cpu_model"].lower()).strip("-")
    stem = f"backends_cpu-{cpu}-{report['machine']['usable_cpus']}cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{stem}.md").write_text(to_markdown(report) + "\n")
    print(to_markdown(report))


if __name__ == "__main__":
    main()
