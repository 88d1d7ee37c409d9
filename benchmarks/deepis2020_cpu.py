"""deepis-2020 (the published DeepIS network) next to deepis and deepis-lite on ONNX Runtime CPU.

Usage::

    python benchmarks/deepis2020_cpu.py timing [--repeats 2] [--threads 2] [--out benchmarks/results]
    python benchmarks/deepis2020_cpu.py fp16 [--out benchmarks/results]

``timing``: parameters, FLOPs (``deepis_rt.model.complexity``) and ONNX Runtime CPU seconds per
64x128x128 tile (batch 1, FP32, random weights, seed 0) of the three presets, plus the alternative
layout handling of deepis-2020: the original (Y, X, Z) graph with a transpose before and after it,
instead of permuting the kernels at import (what deepis-rt does). All models run through the
runtime's ``OnnxRuntimeRunner`` with the same intra-op threads, one warm-up each, then ``--repeats``
rounds of one call per model (round-robin, so that load changes on a shared machine hit all alike).

``fp16``: a full-size published-DeepIS file (``Unet3D_glob(1, 64)``, random weights and non-trivial
BN statistics, written by the independent re-implementation of the test suite as ``CNNTrainer.save``
does) is exported by ``deepis_rt.export.export_model`` (the ``deepis-rt export`` command), whose
parity report compares the FP32 and FP16 ONNX graphs with PyTorch FP32: distance errors and the
agreement of the CAR-T / target masks (``d > pitch/2``, ``d < -pitch/2``).

Both write ``deepis2020_<what>-<machine>.json`` and ``.md`` to ``--out``, with the CPU model and flags.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TILE = (64, 128, 128)
ROOT = Path(__file__).resolve().parents[1]


def cpu_facts() -> dict:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    facts = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Flags"):
            facts[key.strip()] = value.strip()
    flags = facts.pop("Flags", "").split()
    facts["simd_flags"] = [f for f in flags if f.startswith(("avx", "fma", "amx", "sse4", "f16c"))]
    facts["loadavg"] = list(os.getloadavg())
    return facts


def versions() -> dict:
    import onnxruntime
    import torch

    return {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}


class TransposedGraph:
    """deepis-2020 as the original (Y, X, Z) network with transposes around it (the alternative)."""

    @staticmethod
    def build(native):
        import torch
        from torch import nn

        from deepis_rt.model.deepis2020 import DeepIS2020

        yxz = DeepIS2020(native.config, layout="yxz").eval()
        sd = {k: (v.permute(0, 1, 3, 4, 2).contiguous() if v.dim() == 5 else v) for k, v in native.state_dict().items()}
        yxz.load_state_dict(sd)

        class Wrapped(nn.Module):
            def __init__(self, net):
                super().__init__()
                self.net = net

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.net(x.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)

        return Wrapped(yxz).eval()


def timing(args) -> dict:
    import torch

    from deepis_rt.backends import OnnxRuntimeRunner
    from deepis_rt.export import export_onnx
    from deepis_rt.model import build_model, complexity

    work = Path(tempfile.mkdtemp(prefix="deepis2020-bench-"))
    models, facts = {}, {}
    for preset in ("deepis-lite", "deepis", "deepis-2020"):
        torch.manual_seed(0)
        net = build_model(preset).eval()
        cx = complexity(net.config, TILE)
        facts[preset] = {"parameters": cx.parameters, "gflops_per_tile": round(cx.gflops_per_tile, 1)}
        path = export_onnx(net, work / f"{preset}.onnx", TILE)
        models[preset] = path
        if preset == "deepis-2020":
            alt = TransposedGraph.build(net)
            key = "deepis-2020, transposes in the graph"
            models[key] = export_onnx(alt, work / "deepis-2020-transposed.onnx", TILE)
            facts[key] = dict(facts[preset])
            with torch.no_grad():
                x = torch.randn(1, 1, 16, 32, 32)
                facts[key]["max_abs_diff_vs_native_torch"] = float((alt(x) - net(x)).abs().max())
    runners = {k: OnnxRuntimeRunner(p, intra_op_threads=args.threads).activate() for k, p in models.items()}
    x = np.random.default_rng(0).standard_normal((1, 1, *TILE)).astype(np.float32)
    outputs = {k: r.infer(x) for k, r in runners.items()}  # warm-up
    times: dict[str, list[float]] = {k: [] for k in runners}
    load_before = os.getloadavg()
    for _ in range(args.repeats):
        for k, r in runners.items():
            t0 = time.perf_counter()
            r.infer(x)
            times[k].append(time.perf_counter() - t0)
    results = {}
    for k, ts in times.items():
        med = statistics.median(ts)
        results[k] = {**facts[k], "seconds": [round(t, 2) for t in ts], "median_s_per_tile": round(med, 2),
                      "gflop_per_s": round(facts[k]["gflops_per_tile"] / med, 1)}
    native, alt = outputs["deepis-2020"], outputs["deepis-2020, transposes in the graph"]
    results["deepis-2020, transposes in the graph"]["max_abs_diff_vs_native_ort"] = float(np.abs(native - alt).max())
    for r in runners.values():
        r.deactivate()
    return {"what": "ONNX Runtime CPU FP32, one 64x128x128 tile, batch 1", "threads": args.threads,
            "repeats": args.repeats, "loadavg_before": list(load_before), "models": results}


def fp16(args) -> dict:
    sys.path.insert(0, str(ROOT / "tests" / "published"))
    from unet3d_glob_reference import (  # the independent re-implementation
        make_reference,
        save_like_cnntrainer,
    )

    from deepis_rt.convert import convert_checkpoint
    from deepis_rt.errors import ParityError
    from deepis_rt.export.pipeline import export_model

    work = Path(tempfile.mkdtemp(prefix="deepis2020-fp16-"))
    path = save_like_cnntrainer(make_reference(1, 64, seed=0), work / "epoch[0000]_published.pth.tar",
                                train_step=False)
    # the same weights with the output scaled x20 (folded into the head by convert): a trained-like
    # range of several um with many voxels near the +/- half-pitch mask thresholds
    scaled, _ = convert_checkpoint(path, work / "scaled.pt", output_unit="um", output_scale=args.scale)
    runs = {}
    for name, ckpt in (("published file as is", path), (f"output x{args.scale:g} (convert --output-scale)", scaled)):
        t0 = time.perf_counter()
        try:
            result = export_model(ckpt, out_dir=work / "export", name=Path(ckpt).stem.replace(".", "_"),
                                  trt=False, fp16=True)
            runs[name] = {"parity": [p.to_dict() for p in result.parity], "error": None}
        except ParityError as exc:  # outside the export tolerance: the figures are in the message
            runs[name] = {"parity": [], "error": str(exc)}
        runs[name]["export_s"] = round(time.perf_counter() - t0, 1)
    return {"what": "export of a full-size published-DeepIS file (random weights, random BN statistics); "
                    "parity of the FP32 and FP16 ONNX vs PyTorch FP32 on CPU (docs/export.md)", "runs": runs}


def to_markdown(kind: str, report: dict) -> str:
    cpu = report["cpu"]
    lines = [f"# deepis-2020 on ONNX Runtime CPU: {kind}", "",
             f"- CPU: {cpu.get('Model name')}, {cpu.get('CPU(s)')} CPUs; SIMD flags: {' '.join(cpu['simd_flags'])}",
             f"- Versions: {report['versions']}. Load average at start: {cpu['loadavg']} (shared machine).",
             f"- Command: `{report['command']}`; date {report['date_utc']}.", ""]
    if kind == "timing":
        lines += [f"Threads: {report['threads']}; {report['repeats']} timed rounds after a warm-up, round-robin.", "",
                  "| model | parameters | GFLOP / tile | median s / tile | GFLOP/s | runs (s) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for k, r in report["models"].items():
            lines.append(f"| {k} | {r['parameters']:,} | {r['gflops_per_tile']} | {r['median_s_per_tile']} | "
                         f"{r['gflop_per_s']} | {', '.join(map(str, r['seconds']))} |")
        alt = report["models"]["deepis-2020, transposes in the graph"]
        lines += ["", f"Transposed graph vs permuted kernels: max |diff| {alt['max_abs_diff_vs_native_ort']:.1e} "
                      "(ONNX Runtime outputs)."]
    else:
        from deepis_rt.export.parity import format_parity_table

        lines += [report["what"] + ".", ""]
        for name, run in report["runs"].items():
            lines += [f"## {name} (export {run['export_s']} s)", ""]
            lines += ["```", format_parity_table(run["parity"]), "```"] if run["parity"] else [run["error"]]
            lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=["timing", "fp16"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--scale", type=float, default=20.0, help="fp16: output scale of the second export")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    report = timing(args) if args.kind == "timing" else fp16(args)
    report.update(cpu=cpu_facts(), versions=versions(), command="python " + " ".join(sys.argv),
                  date_utc=time.strftime("%Y-%m-%d %H:%M", time.gmtime()))
    machine = "amd-epyc-2cpu" if "EPYC" in str(report["cpu"].get("Model name")) else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"deepis2020_{args.kind}-{machine}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2))
    stem.with_suffix(".md").write_text(to_markdown(args.kind, report))
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
