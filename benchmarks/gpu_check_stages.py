"""The stages of ``benchmarks/gpu_check.sh``: each writes ``<out>/<stage>.json`` the moment it ends.

    python benchmarks/gpu_check_stages.py STAGE --out DIR [--dry-run] [--engines DIR] [--budget-s S]

Stages (cheapest and most informative first): ``env``, ``pytest-gpu``, ``datapath``,
``bench-deepis-lite``, ``bench-deepis``, ``ort-cuda``, ``tensorrt``, ``summary``. A GPU stage on a
machine without a CUDA GPU — or with ``--dry-run`` — writes ``{"status": "skipped: no GPU"}``
(``"skipped: dry run"`` where a GPU exists), so the whole script runs on a CPU in CI.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STAGES = ("env", "pytest-gpu", "datapath", "bench-deepis-lite", "bench-deepis", "ort-cuda", "tensorrt", "summary")
GPU_STAGES = STAGES[1:-1]


def _write(out: Path, stage: str, data: dict[str, Any]) -> None:
    data = {"stage": stage, **data}
    tmp = out / f"{stage}.json.tmp"
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, out / f"{stage}.json")


def _cuda(out: Path | None = None) -> bool:
    """A CUDA GPU usable by torch (read from the env stage's facts when present: no second torch import)."""
    if out is not None and (out / "env.json").is_file():
        try:
            return bool(json.loads((out / "env.json").read_text())["cuda_available"])
        except (ValueError, KeyError):
            pass
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def _run(cmd: list[str], timeout: float, log: Path, env: dict[str, str] | None = None) -> int:
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        try:
            return subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout, cwd=REPO,
                                  env=env).returncode
        except subprocess.TimeoutExpired:
            fh.write(f"\n*** timed out after {timeout:.0f} s\n")
            return 124


def _junit(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"counts": None, "tests": []}
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    tests = []
    for case in suite.iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome, message = tag, (node.get("message") or "")[:500]
        tests.append({"name": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "time_s": float(case.get("time", 0)), "message": message})
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    return {"counts": counts, "tests": tests}


# -- stages ----------------------------------------------------------------------------------------


def stage_env(args: argparse.Namespace) -> dict[str, Any]:
    facts: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(), "libraries": {}}
    for name in ("torch", "numpy", "onnx", "onnxruntime", "tensorrt", "cupy", "cuda", "deepis_rt"):
        try:
            facts["libraries"][name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception as exc:
            facts["libraries"][name] = f"missing ({type(exc).__name__})"
    try:
        import torch

        facts["torch_cuda"] = torch.version.cuda
        facts["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        facts["cuda_available"] = torch.cuda.is_available()
        facts["devices"] = [
            {"index": i, "name": torch.cuda.get_device_name(i),
             "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
             "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
            for i in range(torch.cuda.device_count())
        ] if torch.cuda.is_available() else []
    except Exception as exc:
        facts["torch_error"] = f"{type(exc).__name__}: {exc}"
    try:
        import onnxruntime

        facts["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except Exception:
        facts["onnxruntime_providers"] = []
    if shutil.which("nvidia-smi"):
        try:
            q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=15)
            facts["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
        except (OSError, subprocess.TimeoutExpired) as exc:  # a hung driver query costs this fact only
            facts["nvidia_smi"] = f"{type(exc).__name__}: {exc}"
    # what deepis-rt and its tests import: a missing one explains failed stages at a glance
    needed = ("numpy", "scipy", "skimage", "tifffile", "h5py", "click", "tqdm", "matplotlib", "onnx", "onnxscript",
              "onnxruntime", "laptrack", "watchdog", "filelock", "pytest")
    facts["missing_dependencies"] = [m for m in needed if importlib.util.find_spec(m) is None]
    site = os.environ.get("DEEPIS_GPU_CHECK_SITE")  # wheels carried to this machine (gpu_check.sh)
    if site:
        from importlib.metadata import distributions

        facts["carried_wheels"] = sorted(f"{d.metadata['Name']} {d.version}" for d in distributions(path=[site]))
    cpu_flags = ""
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                cpu_flags = line.split(":", 1)[1].strip()
                break
    facts["cpu"] = {"cores": os.cpu_count(), "avx512f": "avx512f" in cpu_flags.split(),
                    "amx": "amx_tile" in cpu_flags.split()}
    # a bare GPU image may have no git: the commit is then unknown, the other facts still count
    git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO) \
        if shutil.which("git") else None
    facts["commit"] = (git.stdout.strip() or None) if git is not None else None
    return {"status": "ok", **facts}


def stage_pytest_gpu(args: argparse.Namespace) -> dict[str, Any]:
    report = args.out / "pytest-gpu.junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "gpu and not tensorrt",
           "tests/runtime", "tests/bench", f"--junitxml={report}"]
    rc = _run(cmd, args.budget_s - 5, args.out / "pytest-gpu.log")
    return {"status": "ok" if rc == 0 else f"failed (pytest exit {rc})", **_junit(report)}


def stage_datapath(args: argparse.Namespace) -> dict[str, Any]:
    """The pinned ring on a GPU: results equal the synchronous path, and copies overlap compute."""
    import numpy as np
    import torch

    from deepis_rt.backends.cuda import CudaDataPath

    torch.backends.cudnn.benchmark = True
    conv = torch.nn.Sequential(*[torch.nn.Conv3d(1 if i == 0 else 16, 1 if i == 5 else 16, 3, padding=1)
                                 for i in range(6)]).cuda().eval()

    def fn(x: Any) -> Any:
        with torch.inference_mode():
            return conv(x)

    frames = [np.random.default_rng(i).standard_normal((2, 1, 64, 128, 128)).astype(np.float32) for i in range(12)]
    result: dict[str, Any] = {"status": "ok", "frame_shape": [2, 1, 64, 128, 128]}
    ref = [fn(torch.from_numpy(f).cuda()).cpu().numpy() for f in frames[:3]]  # also warms cuDNN up
    torch.cuda.synchronize()
    timings = {}
    for depth in (1, 3):
        path = CudaDataPath(fn, device="cuda", depth=depth)
        list(path.run(iter(frames[:3])))  # warm-up (allocates the ring)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        outs = list(path.run(iter(frames)))
        timings[depth] = time.perf_counter() - t0
        result[f"max_in_flight_depth{depth}"] = path.max_in_flight
        result[f"max_abs_diff_depth{depth}"] = float(max(np.abs(o - r).max() for o, r in zip(outs, ref, strict=False)))
    x = torch.from_numpy(frames[0]).cuda()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(len(frames)):
        fn(x)
    end.record()
    end.synchronize()
    compute_s = start.elapsed_time(end) / 1e3
    pinned = torch.empty(frames[0].size, dtype=torch.float32, pin_memory=True)
    dev = torch.empty_like(pinned, device="cuda")
    start.record()
    for _ in range(10):
        dev.copy_(pinned, non_blocking=True)
    end.record()
    end.synchronize()
    h2d_gbps = 10 * pinned.numel() * 4 / (start.elapsed_time(end) / 1e3) / 1e9
    # an abandoned stream must leave the ring usable (buffers were kept until queued copies finished)
    path = CudaDataPath(fn, device="cuda", depth=3)
    gen = path.run(iter(frames))
    next(gen)
    gen.close()
    again = next(iter(path.run(iter(frames[:1]))))
    result.update({
        "frames": len(frames),
        "wall_s_depth1": round(timings[1], 4), "wall_s_depth3": round(timings[3], 4),
        "compute_only_s": round(compute_s, 4),
        "speedup_depth3_vs_depth1": round(timings[1] / timings[3], 3),
        "overlap_efficiency": round(compute_s / timings[3], 3),  # 1.0: copies fully hidden behind compute
        "h2d_pinned_gbps": round(h2d_gbps, 1),
        "abandoned_stream_then_reuse_max_abs_diff": float(np.abs(again - ref[0]).max()),
    })
    if result["max_abs_diff_depth3"] > 1e-4 or result["abandoned_stream_then_reuse_max_abs_diff"] > 1e-4:
        result["status"] = "failed: the ring's results differ from the synchronous path"
    return result


def _bench(args: argparse.Namespace, preset: str, backends: str, extra: list[str]) -> dict[str, Any]:
    report = args.out / f"bench-{preset}-{backends.replace(',', '_')}.report.json"
    cmd = [sys.executable, "-m", "deepis_rt", "-v", "bench", "--preset", preset, "--backends", backends,
           "--precision", "fp32,fp16", "--batch", "1,4", "--frames", "8", "--warmup", "2",
           "--engines", str(args.engines), "--json", str(report), *extra]
    rc = _run(cmd, args.budget_s - 5, args.out / f"{args.stage}.log")
    data: dict[str, Any] = {"status": "ok" if rc == 0 else f"failed (bench exit {rc})", "report": str(report.name)}
    if report.is_file():
        full = json.loads(report.read_text())
        rows = []
        for model in full.get("models", []):
            for r in model.get("rows", []):
                rows.append({k: r.get(k) for k in ("backend", "precision", "batch", "status", "throughput_fps",
                                                   "latency_ms", "speedup", "device_peak_mib", "accuracy",
                                                   "reason")})
        data["rows"] = rows
    return data


def stage_bench(args: argparse.Namespace, preset: str) -> dict[str, Any]:
    return _bench(args, preset, "torch-cuda,torch-cuda-graphs", [])


def stage_ort_cuda(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime

    providers = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return {"status": "skipped: onnxruntime has no CUDA execution provider here "
                          f"(providers {providers}); onnxruntime-gpu is not installed and the machine is offline"}
    return _bench(args, "deepis-lite", "onnxruntime-cuda", [])


def stage_tensorrt(args: argparse.Namespace) -> dict[str, Any]:
    try:
        import tensorrt
    except Exception as exc:
        return {"status": f"skipped: TensorRT not installed ({type(exc).__name__}: {exc})"}
    env = {**os.environ, "DEEPIS_RT_TEST_ENGINES": str(args.engines)}
    report = args.out / "tensorrt.junit.xml"
    half = max(30.0, (args.budget_s - 10) / 2)
    rc = _run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "tensorrt", "tests",
               f"--junitxml={report}"], half, args.out / "tensorrt.log", env=env)
    data = {"tensorrt": tensorrt.__version__, "pytest_status": "ok" if rc == 0 else f"failed (exit {rc})",
            **_junit(report)}
    args.budget_s = half
    bench = _bench(args, "deepis-lite", "tensorrt", [])
    return {"status": "ok" if rc == 0 and bench["status"] == "ok" else "failed", **data, "bench": bench}


def stage_summary(args: argparse.Namespace) -> dict[str, Any]:
    stages = {}
    for name in STAGES[:-1]:
        path = args.out / f"{name}.json"
        try:
            stages[name] = json.loads(path.read_text()).get("status", "?")
        except Exception as exc:
            stages[name] = f"missing ({type(exc).__name__})"
    lines = ["# deepis-rt GPU check", "", "| stage | status |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in stages.items()]
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    return {"status": "ok", "stages": stages}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--engines", type=Path, default=None)
    parser.add_argument("--budget-s", type=float, default=60.0)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.engines = args.engines or args.out / "engines"
    start = time.perf_counter()
    if args.stage in GPU_STAGES and (args.dry_run or not _cuda(args.out)):
        data: dict[str, Any] = {"status": "skipped: no GPU" if not _cuda(args.out) else "skipped: dry run"}
    else:
        try:
            if args.stage.startswith("bench-"):
                data = stage_bench(args, args.stage[len("bench-"):])
            else:
                data = globals()["stage_" + args.stage.replace("-", "_")](args)
        except Exception as exc:  # the stage failed; the next ones still run
            import traceback

            data = {"status": f"failed: {type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
    data["elapsed_s"] = round(time.perf_counter() - start, 2)
    data["dry_run"] = args.dry_run
    _write(args.out, args.stage, data)
    print(f"{args.stage}: {data['status']} ({data['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
