"""``run_benchmark``: every variant x batch of every model, side by side, in one run.

Order of work for each model: synthetic input tiles; for each variant (the PyTorch eager FP32
baseline first): probe -> activate (export / engine build, timed as ``setup_s``) -> accuracy
against the baseline's output -> for each batch size: warm-up, timed calls, memory, GPU split ->
whole pipeline at the variant's best batch (``pipeline=True``) -> deactivate. A variant that cannot
run here is *skipped* and one that raises is *failed*, each with the reason in its row: the run
goes on.
"""

from __future__ import annotations

import logging
import math
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt.bench.device_time import MIN_ITERATIONS, device_time
from deepis_rt.bench.measure import accuracy, gpu_breakdown, synthetic_tiles, time_runner
from deepis_rt.bench.report import finish_model
from deepis_rt.bench.variants import Variant, make_runner, plan_variants, unavailable_reason

__all__ = ["run_benchmark", "measure_peaks", "gpu_peak", "resident_device_time"]

log = logging.getLogger(__name__)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _command_line() -> str | None:
    """The ``deepis-rt ...`` command that made this report (None when called from Python)."""
    prog = Path(sys.argv[0]).name if sys.argv else ""
    if prog.startswith("deepis") or prog == "__main__.py":
        return "deepis-rt " + shlex.join(sys.argv[1:])
    return None


def measure_peaks(variants: Sequence[Variant], quick: bool = False, threads: int | None = None) -> list[dict[str, Any]]:
    """Matrix-product peaks for the (device, precision) pairs the variants use.

    The CPU product runs on ``threads`` threads, as the CPU backends do. On a GPU, FP32, FP16 and
    BF16 are all measured (FP32 with TF32 off, as the runners' fp32 rows compute), each beside
    the card's data-sheet figure (``spec``) when the card is known.
    """
    wanted = []
    for v in variants:
        pair = ("cuda" if v.is_gpu else "cpu", v.precision if v.is_gpu or v.precision == "bf16" else "fp32")
        if pair not in wanted and (pair[0] == "cpu" or unavailable_reason("torch-cuda") is None):
            wanted.append(pair)
    if any(device == "cuda" for device, _ in wanted):
        wanted += [("cuda", p) for p in ("fp32", "fp16", "bf16") if ("cuda", p) not in wanted]
    peaks = []
    for device, precision in wanted:
        if device == "cpu" and precision == "bf16":
            peaks.append(_cpu_bf16_peak(quick, threads))
        elif device == "cuda":
            peaks.append(gpu_peak(precision, quick))
        else:
            peaks.append(_cpu_fp32_peak(quick, threads))
        log.info("bench | %s %s matrix-product peak: %s TFLOP/s", device, precision, peaks[-1]["tflops"])
    return peaks


def gpu_peak(precision: str, quick: bool = False) -> dict[str, Any]:
    """The current GPU's measured matrix-product peak in ``precision`` (fp32 = TF32 off), beside its spec."""
    import torch

    from deepis_rt.bench.peak import gpu_spec_tflops, matmul_peak

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    name = torch.cuda.get_device_name()
    spec = gpu_spec_tflops(name, precision)
    try:
        res = matmul_peak("cuda", dtype, size=4096 if quick else None, min_seconds=0.2 if quick else 0.5,
                          allow_tf32=False)
    except Exception as exc:  # a probe must not end the run
        return {"device": "cuda", "precision": precision, "tflops": None, "status": "failed", "reason": _reason(exc),
                "gpu": name, "spec": spec}
    return {"device": "cuda", "precision": precision, "tflops": res.tflops, "size": res.size,
            "seconds_per_product": res.seconds, "math": res.math, "gpu": name, "spec": spec,
            "fraction_of_spec": res.tflops / spec["tflops"] if spec else None, "status": "ok"}


def _cpu_fp32_peak(quick: bool, threads: int | None) -> dict[str, Any]:
    import torch

    from deepis_rt.bench.peak import matmul_peak

    old_threads = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(int(threads))
        res = matmul_peak("cpu", torch.float32, size=1024 if quick else None, min_seconds=0.2 if quick else 0.5)
        return {"device": "cpu", "precision": "fp32", "tflops": res.tflops, "size": res.size,
                "seconds_per_product": res.seconds, "math": "fp32", "threads": torch.get_num_threads(),
                "status": "ok"}
    except Exception as exc:  # a probe must not end the run
        return {"device": "cpu", "precision": "fp32", "tflops": None, "status": "failed", "reason": _reason(exc)}
    finally:
        torch.set_num_threads(old_threads)


def _cpu_bf16_peak(quick: bool, threads: int | None) -> dict[str, Any]:
    """The CPU's BF16 matrix-product peak, or why it has none (an emulated BF16 product is no peak)."""
    import torch

    from deepis_rt.bench.peak import cpu_bf16_unsupported_reason, matmul_peak

    why = cpu_bf16_unsupported_reason()
    if why is not None:
        log.info("bench | cpu bf16 matrix-product peak: unsupported (%s)", why)
        return {"device": "cpu", "precision": "bf16", "tflops": None, "status": "unsupported", "reason": why}
    old_threads = torch.get_num_threads()
    try:
        if threads:
            torch.set_num_threads(int(threads))
        res = matmul_peak("cpu", torch.bfloat16, size=1024 if quick else None, min_seconds=0.2 if quick else 0.5)
        return {"device": "cpu", "precision": "bf16", "tflops": res.tflops, "size": res.size,
                "seconds_per_product": res.seconds, "math": "bf16", "threads": torch.get_num_threads(),
                "status": "ok"}
    except Exception as exc:  # a probe must not end the run
        return {"device": "cpu", "precision": "bf16", "tflops": None, "status": "failed", "reason": _reason(exc)}
    finally:
        torch.set_num_threads(old_threads)


def _row(variant: Variant, batch: int, status: str, reason: str = "", **values: Any) -> dict[str, Any]:
    return {"backend": variant.backend, "precision": variant.precision, "device": variant.device,
            "batch": int(batch), "status": status, "reason": reason, **values}


def _bench_variant(variant: Variant, model: Any, batches: Sequence[int], frames: int, warmup: int,
                   tiles: np.ndarray, volumes: list[np.ndarray], reference: np.ndarray | None, threads: int | None, engines_dir: Path,
                   pipeline_dir: Path | None, progress: Callable[[str], None],
                   tta: bool = False, device_iterations: int = MIN_ITERATIONS,
                   on_row: Callable[[dict[str, Any]], None] | None = None) -> tuple[list, list[dict], Any]:
    """Rows of one variant, its pipeline results (plain, then with test-time augmentation when
    ``tta``), and its batch-1 output (the reference, for the baseline)."""
    why = unavailable_reason(variant.backend, variant.precision)
    if why is not None:
        return [_row(variant, b, "skipped", why) for b in batches], [], None
    progress(f"{model.name}: {variant.label}: setting up")
    try:
        runner = make_runner(variant, model, max(batches), threads=threads, engines_dir=engines_dir)
        t0 = time.perf_counter()
        runner.activate()
        setup_s = round(time.perf_counter() - t0, 2)
    except Exception as exc:
        log.warning("bench | %s: %s", variant.label, exc)
        return [_row(variant, b, "failed", f"setup: {_reason(exc)}") for b in batches], [], None
    rows: list[dict[str, Any]] = []
    output = None
    pipeline_results: list[dict] = []
    try:
        acc = None
        try:
            output = runner.infer(tiles[:1])
            if reference is not None:
                acc = accuracy(output, reference, model.voxel_size_um)
        except Exception as exc:
            reason = f"first inference: {_reason(exc)}"
            return [_row(variant, b, "failed", reason, setup_s=setup_s) for b in batches], [], None
        for b in batches:
            progress(f"{model.name}: {variant.label}: batch {b}")
            batch = np.ascontiguousarray(np.concatenate([tiles] * math.ceil(b / len(tiles)))[:b])
            try:
                timing = time_runner(runner, batch, n_calls=math.ceil(frames / b), warmup=warmup)
                split = gpu_breakdown(runner, batch)
                device = resident_device_time(runner, batch, device_iterations) if variant.is_gpu else None
            except Exception as exc:
                log.warning("bench | %s batch %d: %s", variant.label, b, exc)
                rows.append(_row(variant, b, "failed", _reason(exc), setup_s=setup_s))
                continue
            rows.append(_row(variant, b, "ok", setup_s=setup_s, accuracy=acc, breakdown_ms=split, device_time=device,
                             **timing))
            if on_row is not None:
                on_row(rows[-1])
        ok = [r for r in rows if r["status"] == "ok"]
        if pipeline_dir is not None and ok:
            best = max(ok, key=lambda r: r["throughput_fps"])
            for with_tta in (False, True) if tta else (False,):
                progress(f"{model.name}: {variant.label}: pipeline, batch {best['batch']}"
                         + (", test-time augmentation" if with_tta else ""))
                out_dir = Path(tempfile.mkdtemp(prefix="stream-", dir=pipeline_dir))
                head = {"backend": variant.backend, "precision": variant.precision, "device": variant.device,
                        "batch": best["batch"], "tta": with_tta}
                try:
                    res = run_pipeline_safe(runner, model, pipeline_dir / "frames", out_dir, best["batch"],
                                            prime=(volumes[0], output[0, 0]), tta=with_tta)
                    pipeline_results.append({**head, **res})
                except Exception as exc:
                    log.warning("bench | %s pipeline: %s", variant.label, exc)
                    pipeline_results.append({**head, "status": "failed", "reason": _reason(exc)})
    finally:
        runner.deactivate()
    return rows, pipeline_results, output


def resident_device_time(runner: Any, batch: np.ndarray, iterations: int = MIN_ITERATIONS) -> dict[str, Any]:
    """CUDA-event time of ``runner.forward_device`` on ``batch`` already copied to the GPU (see
    :mod:`deepis_rt.bench.device_time`); the per-call samples are kept in the row."""
    import torch

    device = getattr(runner, "device_str", None) or f"cuda:{getattr(runner, 'device_id', 0)}"
    x = torch.from_numpy(np.ascontiguousarray(batch, np.float32)).to(device)
    return device_time(runner.forward_device, x, iterations=iterations, warmup=3)


def run_pipeline_safe(runner: Any, model: Any, frames_dir: Path, out_dir: Path, batch: int,
                      prime: tuple[np.ndarray, np.ndarray] | None = None, tta: bool = False) -> dict[str, Any]:
    from deepis_rt.bench.pipeline import run_pipeline

    res = run_pipeline(runner, model, frames_dir, out_dir, batch, prime=prime, tta=tta)
    status = "ok" if res["frames_ok"] and not res["frames_failed"] else ("failed" if not res["frames_ok"] else "partial")
    reason = "" if status == "ok" else f"{res['frames_failed']} of {res['frames']} frames failed"
    return {"status": status, "reason": reason, **res}


def run_benchmark(
    models: Sequence[Any],
    backends: Sequence[str],
    precisions: Sequence[str] | None = None,
    batches: Sequence[int] = (1,),
    frames: int = 8,
    warmup: int = 1,
    pipeline: bool = False,
    pipeline_frames: int | None = None,
    tta: bool = False,
    threads: int | None = None,
    engines_dir: str | Path = "engines",
    quick: bool = False,
    progress: Callable[[str], None] | None = None,
    device_iterations: int = MIN_ITERATIONS,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Benchmark ``models`` on ``backends``; returns the report (see :mod:`deepis_rt.bench.report`).

    Parameters
    ----------
    models : sequence of BenchModel
        From :func:`deepis_rt.bench.models.resolve_model`.
    backends : sequence of str
        Backend names (:func:`deepis_rt.bench.variants.backends`); the PyTorch eager FP32 baseline
        is always added.
    precisions : sequence of str, optional
        ``fp32`` / ``fp16``; default: fp32 on the CPU, both on a GPU.
    batches : sequence of int
        Batch sizes (tiles per call).
    frames : int
        Tiles timed per row (rounded up to whole batches), after ``warmup`` calls.
    pipeline : bool
        Also run the whole pipeline (files -> stream -> results) for every variant that ran, at its
        best batch, over ``pipeline_frames`` frames (default ``frames``).
    tta : bool
        With ``pipeline``: run each pipeline a second time with test-time augmentation (its cost).
    threads : int, optional
        CPU threads of the CPU backends (default: physical cores).
    device_iterations : int
        GPU rows: CUDA-event-timed ``forward_device`` calls on a resident input (at least 50).
    on_row : callable, optional
        Called with every measured row the moment it is measured (to write it out before the run ends).
    """
    import torch

    from deepis_rt import __version__
    from deepis_rt.backends.onnxrt.runner import physical_cores
    from deepis_rt.bench.machine import describe_machine

    say = progress or (lambda msg: log.info("bench | %s", msg))
    batches = sorted({int(b) for b in batches})
    if not batches or batches[0] < 1 or frames < 1:
        from deepis_rt.errors import ConfigError

        raise ConfigError("bench: batch sizes and --frames must be >= 1")
    threads = int(threads or physical_cores())
    variants = plan_variants(backends, precisions)
    started = time.time()
    report: dict[str, Any] = {
        "benchmark": "deepis-rt bench",
        "format_version": 1,
        "deepis_rt": __version__,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "command": _command_line(),
        "machine": describe_machine(),
        "load_average_before": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "settings": {"backends": [v.label for v in variants], "batches": batches, "frames": frames,
                     "warmup_calls": warmup, "pipeline": pipeline, "tta": tta and pipeline,
                     "pipeline_frames": (pipeline_frames or frames) if pipeline else None, "cpu_threads": threads, "quick": quick,
                     "device_iterations": max(int(device_iterations), MIN_ITERATIONS)},
        "peaks": [],
        "models": [],
    }
    say("measuring the matrix-product peak")
    report["peaks"] = measure_peaks(variants, quick=quick, threads=threads)
    torch_threads = torch.get_num_threads()
    try:
        for model in models:
            report["models"].append(_bench_model(model, variants, batches, frames, warmup, pipeline,
                                                 pipeline_frames or frames, threads, Path(engines_dir), say,
                                                 report["peaks"], tta=tta, device_iterations=device_iterations,
                                                 on_row=on_row))
    finally:
        torch.set_num_threads(torch_threads)
    report["load_average_after"] = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    report["elapsed_s"] = round(time.time() - started, 1)
    return report


def _bench_model(model: Any, variants: Sequence[Variant], batches: Sequence[int], frames: int, warmup: int,
                 pipeline: bool, pipeline_frames: int, threads: int, engines_dir: Path,
                 say: Callable[[str], None], peaks: list[dict[str, Any]], tta: bool = False,
                 device_iterations: int = MIN_ITERATIONS,
                 on_row: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    say(f"{model.name}: synthetic input tiles {tuple(model.tile_zyx)}")
    tiles, volumes = synthetic_tiles(model, n=min(4, max(batches)))
    rows: list[dict[str, Any]] = []
    pipes: list[dict[str, Any]] = []
    reference = None
    with tempfile.TemporaryDirectory(prefix="deepis-bench-") as tmp:
        pipeline_dir = None
        if pipeline:
            from deepis_rt.bench.pipeline import write_frames

            pipeline_dir = Path(tmp)
            write_frames(pipeline_dir / "frames", volumes, model.voxel_size_um, pipeline_frames)
        for variant in variants:
            v_rows, pipe, output = _bench_variant(variant, model, batches, frames, warmup, tiles, volumes, reference,
                                                  threads, engines_dir, pipeline_dir, say, tta,
                                                  device_iterations, on_row)
            if variant.is_baseline and reference is None and output is not None:
                reference = output
                for r in v_rows:
                    if r["status"] == "ok":
                        r["accuracy"] = accuracy(output, reference, model.voxel_size_um)
            rows.extend(v_rows)
            pipes.extend(pipe)
    return finish_model(model.describe(), rows, pipes, peaks)
