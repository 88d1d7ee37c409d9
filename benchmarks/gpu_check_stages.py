"""The stages of ``benchmarks/gpu_check.sh``; every figure reaches ``$OUT/summary.json`` as it is measured.

    python3 benchmarks/gpu_check_stages.py STAGE --out OUT --work WORK [--dry-run] [--budget-s S]

A stage writes ``WORK/<stage>.json`` when it ends and, while it runs, one JSON line per measured row
to ``WORK/<stage>.rows.jsonl``; after every row and every stage ``OUT/summary.json`` (and
``summary.md``) is rewritten from everything in WORK, and after every stage ``OUT/stages.tar.gz``
packs WORK (logs, JUnit XML, bench reports). A kill at any moment loses at most the row in flight.
``OUT`` holds at most: gpu_check.log, summary.json, summary.md, stages.tar.gz.

Stages: ``env``, ``datapath``, ``torch-variants``, ``bench-deepis``, ``field``, ``pytest-gpu``,
``ort-cuda``, ``tensorrt``, ``openvino-bf16``, ``summary``. Without a CUDA GPU, or with
``--dry-run``, the GPU stages that have a CPU meaning run it on a tiny model (``dry_run: true``:
the CPU's own figures, for checking the plumbing, not for reading as GPU results); the others skip
with the reason.
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
import tarfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STAGES = ("env", "datapath", "torch-variants", "bench-deepis", "field", "pytest-gpu", "ort-cuda", "tensorrt",
          "openvino-bf16", "summary")
#: the paper preset's tile, the one the targets are stated for
PAPER_TILE = (64, 128, 128)
#: the full HT-2 field of view
HT2_FIELD = (210, 732, 732)
TINY = {"widths": (4, 8, 8, 8, 8), "skip_width": 4}
TARGETS = {"fraction_of_fp16_peak": 0.35, "speedup_vs_torch_fp32": 4.0, "stream_p99_ms": 10.0, "field_s": 0.5}
#: what deepis-rt imports at run time (module names); a missing one explains failed stages at a glance
RUNTIME_IMPORTS = ("numpy", "scipy", "skimage", "tifffile", "h5py", "click", "tqdm", "matplotlib", "onnx",
                   "onnxscript", "onnxruntime", "filelock", "laptrack", "pydantic", "pooch", "watchdog", "zarr",
                   "numcodecs", "typing_extensions", "openvino", "pytest", "pytest_timeout")


# -- plumbing: rows, summary, tarball ----------------------------------------------------------------

def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def add_row(args: argparse.Namespace, row: dict[str, Any]) -> None:
    """Append one measured row of this stage and refresh the summary (a kill keeps it)."""
    with (args.work / f"{args.stage}.rows.jsonl").open("a") as fh:
        fh.write(json.dumps({**row, "dry_run": args.dry_run}, default=str) + "\n")
    update_summary(args.work, args.out)


def _rows(work: Path, stage: str) -> list[dict[str, Any]]:
    path = work / f"{stage}.rows.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line cut by a kill
            pass
    return rows


def _best_device_fps(r: dict[str, Any]) -> float:
    return max([v for v in (r.get("tiles_per_s") or {}).values() if v] or [0.0])


def _targets(stages: dict[str, Any], rows: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The figures the GPU path is judged by, from the torch-variants, bench and field stages."""
    out: list[dict[str, Any]] = []

    def target(name: str, wanted: float, measured: float | None, note: str, at_most: bool = False) -> None:
        met = None if measured is None else (measured <= wanted if at_most else measured >= wanted)
        out.append({"name": name, "target": ("<= " if at_most else ">= ") + str(wanted), "measured": measured,
                    "met": met, "note": note})

    variants = [r for r in rows.get("torch-variants", []) if r.get("status") == "ok"]
    good = [r for r in variants if r.get("exact") or r.get("exact_enough")]
    best = max(good, key=_best_device_fps) if good else None
    fp32 = next((r for r in variants if r.get("variant") == "fp32"), None)
    meta = stages.get("torch-variants", {}).get("model") or {}
    peaks = stages.get("bench-deepis", {}).get("peaks") or []
    fp16_peak = next((p for p in peaks if p.get("device") == "cuda" and p.get("precision") == "fp16"
                      and p.get("tflops")), None)
    if best is not None:
        label = f"{best['variant']} (device time, best batch)"
        if fp16_peak and meta.get("flops_per_tile"):
            target("best exact-enough variant vs measured FP16 matrix-product peak", TARGETS["fraction_of_fp16_peak"],
                   _best_device_fps(best) * float(meta["flops_per_tile"]) / 1e12 / fp16_peak["tflops"], label)
        if fp32 is not None and _best_device_fps(fp32):
            target("best exact-enough variant vs PyTorch FP32, TF32 off", TARGETS["speedup_vs_torch_fp32"],
                   _best_device_fps(best) / _best_device_fps(fp32), label)
        one = (best.get("batches") or {}).get("1")
        if one:
            target("one tile end to end, p99 ms (batch 1, host copies included)", TARGETS["stream_p99_ms"],
                   one["end_to_end"]["latency_ms"]["p99_ms"], best["variant"], at_most=True)
    field = stages.get("field", {})
    if field.get("median_s") is not None:
        target(f"field of view {field.get('volume_zyx')} segmented end to end, s", TARGETS["field_s"],
               field["median_s"], f"{field.get('variant')}, median of {field.get('runs')}", at_most=True)
    return out


def update_summary(work: Path, out: Path) -> dict[str, Any]:
    """``out/summary.json`` and ``summary.md`` from every stage's JSON and rows in ``work``."""
    stages: dict[str, Any] = {}
    rows: dict[str, list[dict[str, Any]]] = {}
    for name in STAGES[:-1]:
        path = work / f"{name}.json"
        if path.is_file():
            try:
                stages[name] = json.loads(path.read_text())
            except ValueError as exc:
                stages[name] = {"status": f"unreadable ({exc})"}
        elif (work / f"{name}.rows.jsonl").is_file():
            stages[name] = {"status": "running or killed (rows so far below)"}
        got = _rows(work, name)
        if got:
            rows[name] = got
    dry = any(s.get("dry_run") for s in stages.values())
    summary = {
        "summary": "deepis-rt GPU check",
        "dry_run": dry,
        "note": ("DRY RUN: figures are this CPU's, from tiny models; they check the plumbing and are no GPU results"
                 if dry else "figures measured on this machine; see stages.tar.gz for logs and full reports"),
        "updated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "stages": stages,
        "rows": rows,
        "targets": _targets(stages, rows),
    }
    _write_json(out / "summary.json", summary)
    lines = ["# deepis-rt GPU check" + (" (DRY RUN: CPU figures, tiny models)" if dry else ""), "",
             "| stage | status | s |", "| --- | --- | --- |"]
    lines += [f"| {k} | {v.get('status')} | {v.get('elapsed_s', '')} |" for k, v in stages.items()]
    if summary["targets"]:
        lines += ["", "| target | wanted | measured | met | note |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {t['name']} | {t['target']} | {t['measured']} | {t['met']} | {t['note']} |"
                  for t in summary["targets"]]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    return summary


def pack(work: Path, out: Path) -> Path:
    """``out/stages.tar.gz``: every file in ``work`` (caches and engines left out: large, rebuilt)."""
    tmp = out / ".stages.tar.gz.tmp"
    with tarfile.open(tmp, "w:gz") as tar:
        for path in sorted(work.rglob("*")):
            rel = path.relative_to(work)
            if path.is_file() and rel.parts[0] not in ("engines", "cache", "inductor") and not rel.name.startswith("."):
                tar.add(path, arcname=f"stages/{rel}")
    os.replace(tmp, out / "stages.tar.gz")
    return out / "stages.tar.gz"


def _cuda(args: argparse.Namespace) -> bool:
    facts = args.work / "env.json"
    if facts.is_file():
        try:
            return bool(json.loads(facts.read_text())["cuda_available"])
        except (ValueError, KeyError):
            pass
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def _gpu(args: argparse.Namespace) -> bool:
    """Run the real GPU work (not the dry run's CPU stand-in)."""
    return _cuda(args) and not args.dry_run


def _run(cmd: list[str], timeout: float, log: Path, env: dict[str, str] | None = None) -> int:
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        try:
            return subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, timeout=max(timeout, 1), cwd=REPO,
                                  env=env).returncode
        except subprocess.TimeoutExpired:
            fh.write(f"\n*** timed out after {timeout:.0f} s\n")
            return 124


def _junit(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"counts": None}
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    return {"counts": {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}}


# -- stages ----------------------------------------------------------------------------------------

def _lscpu(args: argparse.Namespace) -> dict[str, Any]:
    text = ""
    if shutil.which("lscpu"):
        try:
            text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired) as exc:
            text = f"lscpu failed: {exc}"
        (args.work / "lscpu.txt").write_text(text)
    flags: list[str] = []
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Flags":
            flags = value.split()
        elif key.strip() == "Model name":
            model = value.strip()
    if not flags and Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                break
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "amx_int8")
    return {"model": model, "cores": os.cpu_count(), "flags": {f: f in flags for f in wanted},
            "bf16_native": any(f in flags for f in ("avx512_bf16", "amx_bf16"))}


def stage_env(args: argparse.Namespace) -> dict[str, Any]:
    facts: dict[str, Any] = {"status": "ok", "python": sys.version.split()[0], "executable": sys.executable,
                             "platform": platform.platform(), "libraries": {}}
    for name in ("torch", "triton", "numpy", "onnx", "onnxruntime", "openvino", "tensorrt", "deepis_rt"):
        try:
            facts["libraries"][name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception as exc:
            facts["libraries"][name] = f"missing ({type(exc).__name__})"
    facts["cuda_available"] = False
    try:
        import torch

        facts["torch_cuda"] = torch.version.cuda
        facts["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        facts["cuda_available"] = torch.cuda.is_available()
        facts["devices"] = [
            {"index": i, "name": torch.cuda.get_device_name(i),
             "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
             "memory_gib": round(torch.cuda.get_device_properties(i).total_memory / 2**30, 1)}
            for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
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
    facts["missing_dependencies"] = [m for m in RUNTIME_IMPORTS if importlib.util.find_spec(m) is None]
    site = os.environ.get("DEEPIS_GPU_CHECK_SITE")  # wheels carried to this machine (gpu_check.sh)
    if site:
        from importlib.metadata import distributions

        facts["carried_wheels"] = sorted(f"{d.metadata['Name']} {d.version}" for d in distributions(path=[site]))
    facts["cpu"] = _lscpu(args)
    git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=REPO) \
        if shutil.which("git") else None
    facts["commit"] = (git.stdout.strip() or None) if git is not None else None
    return facts


def stage_datapath(args: argparse.Namespace) -> dict[str, Any]:
    """The pinned ring on a GPU: results equal the synchronous path, and copies overlap compute."""
    if not _gpu(args):
        return {"status": "skipped: no GPU" if not _cuda(args) else "skipped: dry run"}
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
    result: dict[str, Any] = {"status": "ok", "frame_shape": [2, 1, 64, 128, 128], "frames": len(frames)}
    ref = [fn(torch.from_numpy(f).cuda()).cpu().numpy() for f in frames]  # also warms cuDNN up
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
        result[f"max_abs_diff_depth{depth}"] = float(max(np.abs(o - r).max() for o, r in zip(outs, ref, strict=True)))
        add_row(args, {"depth": depth, "wall_s": round(timings[depth], 4),
                       "max_abs_diff": result[f"max_abs_diff_depth{depth}"]})
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
    path = CudaDataPath(fn, device="cuda", depth=3)  # an abandoned stream leaves the ring usable
    gen = path.run(iter(frames))
    next(gen)
    gen.close()
    again = next(iter(path.run(iter(frames[:1]))))
    result.update({
        "wall_s_depth1": round(timings[1], 4), "wall_s_depth3": round(timings[3], 4),
        "compute_only_s": round(compute_s, 4), "speedup_depth3_vs_depth1": round(timings[1] / timings[3], 3),
        "overlap_efficiency": round(compute_s / timings[3], 3),  # 1.0: copies fully hidden behind compute
        "h2d_pinned_gbps": round(10 * pinned.numel() * 4 / (start.elapsed_time(end) / 1e3) / 1e9, 1),
        "abandoned_stream_then_reuse_max_abs_diff": float(np.abs(again - ref[0]).max()),
    })
    if result["max_abs_diff_depth3"] > 1e-4 or result["abandoned_stream_then_reuse_max_abs_diff"] > 1e-4:
        result["status"] = "failed: the ring's results differ from the synchronous path"
    return result


def _model(args: argparse.Namespace, gpu: bool) -> Any:
    from deepis_rt.bench.models import resolve_model

    if gpu:
        return resolve_model(preset="deepis", tile_zyx=PAPER_TILE)
    return resolve_model(preset="deepis-lite", tile_zyx=(16, 32, 32), **TINY)


def stage_torch_variants(args: argparse.Namespace) -> dict[str, Any]:
    """Every PyTorch variant of the paper preset on one tile: parity with FP32, device time, compile time."""
    import torch

    from deepis_rt.backends.pytorch.variants import record_key, record_variant_results, variants_for
    from deepis_rt.bench.measure import synthetic_tiles
    from deepis_rt.bench.torch_variants import measure_variant

    gpu = _gpu(args)
    device = "cuda" if gpu else "cpu"
    model = _model(args, gpu)
    tiles, _ = synthetic_tiles(model, n=2 if gpu else 1)
    batches = (1, 4) if gpu else (1,)
    # compiled variants last: each may take a minute of autotuning; one starts only with time for it
    plain = variants_for(device, compiled=False)
    compiled = [] if not gpu else variants_for(device, ["fp16-compile", "fp16-compile-cuda-graphs", "bf16-compile",
                                                        "fp32-compile"])
    if not gpu:
        plain = [v for v in plain if v.name in ("fp32", "fp32-channels-last", "bf16")]
    deadline = time.monotonic() + args.budget_s - 10
    compile_cache = Path(os.environ.get("GPU_CHECK_INDUCTOR", Path(os.environ.get("TMPDIR", "/tmp")) / "deepis-inductor"))
    results, reference = [], None
    for v in plain + compiled:
        needed = 100 if v.compiled else 15
        if time.monotonic() + needed > deadline:
            result = {"variant": v.name, "status": "skipped", "reason": f"out of time (needs ~{needed} s)"}
        else:
            result, output = measure_variant(v, model.module(), tiles, reference, model.voxel_size_um, device,
                                             batches, iterations=50 if gpu else 3, e2e_calls=10 if gpu else 2,
                                             compile_cache_dir=compile_cache)
            if v.name == "fp32" and output is not None:
                reference = output
        results.append(result)
        add_row(args, result)
    gpu_name = torch.cuda.get_device_name() if gpu else None
    info = model.describe()
    key = record_key(info, device, info["tile_zyx"], gpu_name)
    stored = record_variant_results(key, results, gpu_name, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    if stored is not None:
        shutil.copy(stored, args.work / "torch_variants.records.json")
    cache_files = [p for p in compile_cache.rglob("*") if p.is_file()] if compile_cache.is_dir() else []
    ok = [r for r in results if r.get("status") == "ok"]
    return {"status": "ok" if ok else "failed: no variant ran", "device": device, "gpu": gpu_name, "model": info,
            "batches": list(batches), "record_key": key,
            "compile_cache": {"dir": str(compile_cache), "files": len(cache_files),
                              "mib": round(sum(p.stat().st_size for p in cache_files) / 2**20, 1)},
            "ran": len(ok), "skipped": [r["variant"] for r in results if r.get("status") == "skipped"]}


def stage_bench_deepis(args: argparse.Namespace) -> dict[str, Any]:
    """``deepis-rt bench`` rows of the paper preset (torch CUDA FP32/FP16, CUDA graphs), peaks with specs."""
    from deepis_rt.bench import report as rp
    from deepis_rt.bench.suite import run_benchmark

    gpu = _gpu(args)
    model = _model(args, gpu)
    backends = ["torch-cuda", "torch-cuda-graphs"] if gpu else ["torch-cpu"]
    report = run_benchmark([model], backends, ["fp32", "fp16"] if gpu else ["fp32"], batches=[1, 4] if gpu else [1],
                           frames=8 if gpu else 2, warmup=2 if gpu else 1, quick=True, engines_dir=args.work / "engines",
                           on_row=lambda row: add_row(args, {k: v for k, v in row.items() if k != "samples_ms"}))
    rp.write_json(report, args.work / "bench-deepis.report.json")
    (args.work / "bench-deepis.report.md").write_text(rp.to_markdown(report, "deepis-rt bench (GPU check)"))
    (mr,) = report["models"]
    return {"status": "ok", "model": mr["model"], "peaks": report["peaks"], "targets": mr["targets"],
            "rows_ok": sum(r["status"] == "ok" for r in mr["rows"]), "report": "bench-deepis.report.md"}


def _field_volume(shape: tuple[int, int, int]) -> Any:
    """A refractive-index field of view: medium, two cells in contact, a little texture (cheap to make)."""
    import numpy as np

    z, y, x = (np.linspace(-1, 1, s, dtype=np.float32) for s in shape)
    zz, yy, xx = z[:, None, None], y[None, :, None], x[None, None, :]
    cells = (0.03 * ((xx - 0.15) ** 2 + yy**2 + zz**2 < 0.09) + 0.02 * ((xx + 0.2) ** 2 + yy**2 + zz**2 < 0.06))
    noise = np.random.default_rng(0).standard_normal(shape[1:], dtype=np.float32) * 0.002
    return (1.337 + cells + noise[None]).astype(np.float32)


def stage_field(args: argparse.Namespace) -> dict[str, Any]:
    """The full HT-2 field of view through the Segmenter (tiling, blending, labels) with the fastest variant."""
    import numpy as np
    import torch

    from deepis_rt.backends import TorchRunner
    from deepis_rt.backends.pytorch.variants import load_records, record_key, select_variant, variant
    from deepis_rt.runtime.segmenter import Segmenter

    gpu = _gpu(args)
    device = "cuda" if gpu else "cpu"
    model = _model(args, gpu)
    info = model.describe()
    chosen = select_variant(load_records(), record_key(info, device, info["tile_zyx"],
                                                       torch.cuda.get_device_name() if gpu else None))
    if chosen is None:
        chosen = variant("fp16-cuda-graphs" if gpu else "fp32")
    shape = HT2_FIELD if gpu else (16, 64, 64)
    volume = _field_volume(shape)
    runner = TorchRunner(model.module(), device=device, **chosen.options_for(device))
    runs: list[float] = []
    with Segmenter(runner, meta=model.checkpoint.meta, batch_size=8 if gpu else 2, analyze=False) as seg:
        t0 = time.perf_counter()
        seg.segment(volume)  # warm-up: autotuning, graph capture, compile for the tile shape
        warm = time.perf_counter() - t0
        add_row(args, {"run": "warm-up", "seconds": round(warm, 3), "variant": chosen.name})
        for i in range(3):
            t0 = time.perf_counter()
            result = seg.segment(volume)
            runs.append(time.perf_counter() - t0)
            add_row(args, {"run": i, "seconds": round(runs[-1], 4), "variant": chosen.name})
    return {"status": "ok", "variant": chosen.name, "volume_zyx": list(shape), "runs": len(runs),
            "median_s": round(float(np.median(runs)), 4), "min_s": round(min(runs), 4), "warmup_s": round(warm, 3),
            "output_shape": list(np.shape(result.distance)), "analysis": "off (distance map and masks)"}


def stage_pytest_gpu(args: argparse.Namespace) -> dict[str, Any]:
    """The gpu-marked tests, one JSON line per test as it ends, a per-test timeout, JUnit at the end."""
    junit = args.work / "pytest-gpu.junit.xml"
    targets = ["tests/runtime", "tests/bench"] if _gpu(args) else ["tests/runtime/test_gpu_datapath.py"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p", "gpu_check_pytest",
           "-m", "gpu and not tensorrt", *targets, f"--junitxml={junit}"]
    has_timeout = importlib.util.find_spec("pytest_timeout") is not None
    if has_timeout:
        cmd.append("--timeout=60")
    env = {**os.environ, "GPU_CHECK_TEST_ROWS": str(args.work / "pytest-gpu.rows.jsonl"),
           "PYTHONPATH": os.pathsep.join([str(REPO / "benchmarks"), os.environ.get("PYTHONPATH", "")])}
    rc = _run(cmd, args.budget_s - 5, args.work / "pytest-gpu.log", env=env)
    update_summary(args.work, args.out)
    rows = _rows(args.work, "pytest-gpu")
    return {"status": "ok" if rc == 0 else f"failed (pytest exit {rc})", **_junit(junit),
            "per_test_timeout_s": 60 if has_timeout else "none (pytest-timeout not installed)",
            "failed": [r["test"] for r in rows if r["outcome"] == "failed"]}


def _bench_cli(args: argparse.Namespace, preset: str, backends: str, precisions: str) -> dict[str, Any]:
    report = args.work / f"{args.stage}.report.json"
    cmd = [sys.executable, "-m", "deepis_rt", "-v", "bench", "--preset", preset, "--backends", backends,
           "--precision", precisions, "--batch", "1,4", "--frames", "8", "--warmup", "2",
           "--engines", str(args.work / "engines"), "--json", str(report)]
    rc = _run(cmd, args.budget_s - 5, args.work / f"{args.stage}.log")
    data: dict[str, Any] = {"status": "ok" if rc == 0 else f"failed (bench exit {rc})"}
    if report.is_file():
        for model in json.loads(report.read_text()).get("models", []):
            for r in model.get("rows", []):
                add_row(args, {k: r.get(k) for k in ("backend", "precision", "batch", "status", "throughput_fps",
                                                     "latency_ms", "device_time", "accuracy", "reason")})
    return data


def stage_ort_cuda(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime

    providers = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return {"status": "skipped: onnxruntime has no CUDA execution provider here "
                          f"(providers {providers}); onnxruntime-gpu is not installed and the machine is offline"}
    if not _gpu(args):
        return {"status": "skipped: dry run"}
    return _bench_cli(args, "deepis-lite", "onnxruntime-cuda", "fp32,fp16")


def stage_tensorrt(args: argparse.Namespace) -> dict[str, Any]:
    try:
        import tensorrt
    except Exception as exc:
        return {"status": f"skipped: TensorRT not installed ({type(exc).__name__}: {exc})"}
    if not _gpu(args):
        return {"status": "skipped: dry run" if _cuda(args) else "skipped: no GPU"}
    env = {**os.environ, "DEEPIS_RT_TEST_ENGINES": str(args.work / "engines")}
    junit = args.work / "tensorrt.junit.xml"
    half = max(30.0, (args.budget_s - 10) / 2)
    rc = _run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "tensorrt", "tests",
               f"--junitxml={junit}"], half, args.work / "tensorrt.log", env=env)
    args.budget_s = half
    bench = _bench_cli(args, "deepis-lite", "tensorrt", "fp32,fp16")
    return {"status": "ok" if rc == 0 and bench["status"] == "ok" else "failed", "tensorrt": tensorrt.__version__,
            "pytest_status": "ok" if rc == 0 else f"failed (exit {rc})", **_junit(junit)}


def stage_openvino_bf16(args: argparse.Namespace) -> dict[str, Any]:
    """On a host CPU with AVX512_BF16 or AMX: the OpenVINO BF16 parity report and BF16 bench rows."""
    if importlib.util.find_spec("openvino") is None:
        return {"status": "skipped: OpenVINO is not installed (carry .whl-openvino in a separate call: "
                          "docs/runtime.md, 'On a lent GPU machine')"}
    from deepis_rt.backends.openvino.runner import bf16_unavailable_reason

    why = bf16_unavailable_reason()
    if why is not None:
        return {"status": f"skipped: {why}"}
    parity_json = args.work / "openvino-bf16-parity.json"
    rc = _run([sys.executable, "-m", "deepis_rt.bench.precision_parity", "--videos", "1", "--json", str(parity_json),
               "--markdown", str(args.work / "openvino-bf16-parity.md")], args.budget_s * 0.5,
              args.work / "openvino-bf16.log")
    data: dict[str, Any] = {"parity_status": "ok" if rc == 0 else f"failed (exit {rc})"}
    if parity_json.is_file():
        data["parity"] = json.loads(parity_json.read_text()).get("summary")
        add_row(args, {"kind": "parity", **(data["parity"] or {})})
    from deepis_rt.bench.models import resolve_model
    from deepis_rt.bench.suite import run_benchmark

    report = run_benchmark([resolve_model()], ["onnxruntime-cpu", "openvino-cpu"], ["fp32", "bf16"], batches=[1],
                           frames=4, quick=True, on_row=lambda row: add_row(args, {"kind": "bench", **row}))
    (mr,) = report["models"]
    data.update(status="ok" if rc == 0 else "failed", peaks=report["peaks"], targets=mr["targets"])
    return data


def stage_summary(args: argparse.Namespace) -> dict[str, Any]:
    summary = update_summary(args.work, args.out)
    return {"status": "ok", "stages": {k: v.get("status") for k, v in summary["stages"].items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("--out", type=Path, required=True, help="the folder that comes back (few files)")
    parser.add_argument("--work", type=Path, required=True, help="every stage output (packed into the tarball)")
    parser.add_argument("--budget-s", type=float, default=60.0)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        data = globals()["stage_" + args.stage.replace("-", "_")](args)
    except Exception as exc:  # the stage failed; the next ones still run
        data = {"status": f"failed: {type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
    data = {"stage": args.stage, **data, "elapsed_s": round(time.perf_counter() - start, 2), "dry_run": args.dry_run}
    _write_json(args.work / f"{args.stage}.json", data)
    update_summary(args.work, args.out)
    pack(args.work, args.out)
    print(f"{args.stage}: {data['status']} ({data['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
