"""Measure every PyTorch variant (:mod:`deepis_rt.backends.pytorch.variants`) of one model on one device.

For each variant, in list order: set up (copy of the network, cast, ``torch.compile`` — timed),
infer the same synthetic tiles as FP32 eager and compare labels (:func:`~deepis_rt.export.
precision_parity.label_parity`: the fraction of voxels whose background / CAR-T / target / IS label
is the same, worst tile), then per batch size the device time (:func:`~deepis_rt.bench.
device_time.device_time`: CUDA events around ``forward_device`` on a resident input, >= 50 calls;
on a CPU, ``perf_counter``) and the end-to-end time of ``Runner.infer`` on a host array (copies
included). Every result is handed to ``on_result`` the moment it is measured, so a run that is
stopped keeps what it measured. The results are stored as the records that
:func:`~deepis_rt.backends.pytorch.variants.select_variant` chooses from.

    python -m deepis_rt.bench.torch_variants --preset deepis --tile 64,128,128 --device cuda \\
        --batches 1,4 --jsonl rows.jsonl --json torch_variants.json
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepis_rt.backends.pytorch.variants import (
    MIN_LABEL_AGREEMENT,
    TorchVariant,
    record_key,
    record_variant_results,
    variants_for,
)
from deepis_rt.bench.device_time import MIN_ITERATIONS, device_time
from deepis_rt.bench.stats import latency_stats

__all__ = ["measure_variant", "measure_torch_variants", "main"]

log = logging.getLogger(__name__)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _parity(reference: np.ndarray, output: np.ndarray, voxel_size_um: Sequence[float]) -> dict[str, Any]:
    from deepis_rt.bench.precision_parity import label_parity, summarize_parity

    rows = [{"voxels": int(ref[0].size), **label_parity(ref[0], out[0], voxel_size_um)}
            for ref, out in zip(reference, output, strict=True)]
    return summarize_parity(rows)


def _end_to_end(runner: Any, batch: np.ndarray, calls: int) -> dict[str, Any]:
    samples = []
    for _ in range(max(1, calls)):
        t0 = time.perf_counter()
        runner.infer(batch)  # a host array back: the device has finished
        samples.append((time.perf_counter() - t0) * 1e3)
    stats = latency_stats(samples).to_dict()
    return {"calls": len(samples), "latency_ms": stats,
            "tiles_per_s": batch.shape[0] * 1e3 / stats["p50_ms"] if stats["p50_ms"] > 0 else None}


def measure_variant(variant: TorchVariant, module: Any, tiles: np.ndarray, reference: np.ndarray | None,
                    voxel_size_um: Sequence[float], device: str, batches: Sequence[int] = (1,),
                    iterations: int = MIN_ITERATIONS, e2e_calls: int = 10,
                    compile_cache_dir: str | Path | None = None) -> tuple[dict[str, Any], np.ndarray | None]:
    """One variant's result (see the module docstring) and its output on ``tiles`` (None if it failed)."""
    import torch

    from deepis_rt.backends.pytorch.runner import TorchRunner, inductor_cache_dir

    options = variant.options_for(device)
    result: dict[str, Any] = {"variant": variant.name, "description": variant.description, "device": device,
                              "options": options, "exact": variant.exact, "status": "ok", "reason": ""}
    if variant.compiled and compile_cache_dir is not None:
        options = {**options, "compile_cache_dir": compile_cache_dir}
    runner = TorchRunner(copy.deepcopy(module), device=device, **options)
    output = None
    try:
        t0 = time.perf_counter()
        runner.activate()
        output = runner.infer(tiles)  # compiles / captures / autotunes for this shape
        result["setup_s"] = round(time.perf_counter() - t0, 3)
        if variant.compiled:
            result["compile_s"] = {"x".join(map(str, k)): v for k, v in runner.compile_s.items()}
            result["compile_cache_dir"] = str(inductor_cache_dir())
        if reference is not None:
            result["parity"] = _parity(reference, output, voxel_size_um)
            result["label_agreement"] = result["parity"]["label_agreement_min"]
            result["exact_enough"] = result["label_agreement"] >= MIN_LABEL_AGREEMENT
        result["math"] = runner.describe()["math"]
        per_batch: dict[str, Any] = {}
        for b in batches:
            batch = np.ascontiguousarray(np.concatenate([tiles] * -(-b // len(tiles)))[:b])
            x = torch.from_numpy(batch).to(runner.device)
            timed = device_time(runner.forward_device, x, iterations=iterations, warmup=3)
            timed.pop("samples_ms")
            per_batch[str(b)] = {"device_time": timed, "end_to_end": _end_to_end(runner, batch, e2e_calls)}
        if variant.compiled:  # compiles of the timed batch sizes happened in their warm-up
            result["compile_s"] = {"x".join(map(str, k)): v for k, v in runner.compile_s.items()}
        result["batches"] = per_batch
        result["tiles_per_s"] = {b: r["device_time"]["tiles_per_s"] for b, r in per_batch.items()}
        result["e2e_tiles_per_s"] = {b: r["end_to_end"]["tiles_per_s"] for b, r in per_batch.items()}
        if runner.is_cuda:
            result["device_peak_mib"] = round(torch.cuda.max_memory_allocated(runner.device) / 2**20, 1)
    except Exception as exc:  # one variant failing must not end the sweep
        log.warning("torch variants | %s: %s", variant.name, exc)
        result.update(status="failed", reason=_reason(exc))
        output = None
    finally:
        runner.deactivate()
        if variant.compiled:  # Dynamo's caches (and Inductor's graph pools) hold the network: let it go
            torch._dynamo.reset()
    return result, output


def measure_torch_variants(module: Any, tiles: np.ndarray, voxel_size_um: Sequence[float], device: str,
                           names: Sequence[str] | None = None, batches: Sequence[int] = (1,),
                           iterations: int = MIN_ITERATIONS, e2e_calls: int = 10, compiled: bool = True,
                           compile_cache_dir: str | Path | None = None,
                           on_result: Callable[[dict[str, Any]], None] | None = None,
                           deadline: float | None = None) -> list[dict[str, Any]]:
    """Every variant of ``device`` (or ``names``) on ``tiles``; FP32 eager first, as the reference.

    ``deadline`` (a ``time.monotonic()`` value): variants not started by then are reported as
    ``skipped: out of time`` (a stage with a budget still says what it did not measure).
    """
    chosen = variants_for(device, names, compiled=compiled)
    if not chosen or chosen[0].name != "fp32":
        chosen = [v for v in variants_for(device, ["fp32"])] + [v for v in chosen if v.name != "fp32"]
    results: list[dict[str, Any]] = []
    reference = None
    for v in chosen:
        if deadline is not None and time.monotonic() > deadline:
            result = {"variant": v.name, "device": device, "status": "skipped", "reason": "out of time"}
        else:
            log.info("torch variants | %s on %s", v.name, device)
            result, output = measure_variant(v, module, tiles, reference, voxel_size_um, device, batches,
                                             iterations, e2e_calls, compile_cache_dir)
            if v.name == "fp32" and output is not None:
                reference = output
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def main(argv: Sequence[str] | None = None) -> int:  # noqa: D103
    parser = argparse.ArgumentParser(prog="python -m deepis_rt.bench.torch_variants",
                                     description="Measure the PyTorch variants of a model; store the records "
                                                 "auto-selection reads.")
    parser.add_argument("--preset", default="deepis")
    parser.add_argument("--model", default=None, help="a checkpoint instead of a preset with random weights")
    parser.add_argument("--tile", default=None, help="Z,Y,X (default: the model's tile)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--variants", default=None, help="comma-separated names (default: all for the device)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile variants")
    parser.add_argument("--batches", default="1")
    parser.add_argument("--tiles", type=int, default=2, help="synthetic tiles compared with FP32")
    parser.add_argument("--iterations", type=int, default=MIN_ITERATIONS)
    parser.add_argument("--budget-s", type=float, default=None, help="start no variant after this many seconds")
    parser.add_argument("--compile-cache", default=None, help="Inductor's cache folder")
    parser.add_argument("--jsonl", default=None, help="append each result as one JSON line as it is measured")
    parser.add_argument("--json", dest="json_path", default=None)
    parser.add_argument("--no-record", action="store_true", help="do not store the records for auto-selection")
    parser.add_argument("--tiny", action="store_true", help="tiny widths (tests and dry runs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    from deepis_rt.bench.measure import synthetic_tiles
    from deepis_rt.bench.models import resolve_model

    tile = tuple(int(v) for v in args.tile.split(",")) if args.tile else None
    overrides = {"widths": (4, 8, 8, 8, 8), "skip_width": 4} if args.tiny else {}
    model = resolve_model(args.model, None if args.model else args.preset, tile_zyx=tile, **overrides)
    tiles, _ = synthetic_tiles(model, n=args.tiles)
    batches = sorted({int(b) for b in args.batches.split(",")})
    started = time.monotonic()
    sink = Path(args.jsonl) if args.jsonl else None

    def write(result: Mapping[str, Any]) -> None:
        if sink is not None:
            with sink.open("a") as fh:
                fh.write(json.dumps(result, default=str) + "\n")

    results = measure_torch_variants(
        model.module(), tiles, model.voxel_size_um, args.device,
        names=args.variants.split(",") if args.variants else None, batches=batches, iterations=args.iterations,
        compiled=not args.no_compile, compile_cache_dir=args.compile_cache, on_result=write,
        deadline=started + args.budget_s if args.budget_s else None)
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else None
    info = model.describe()
    key = record_key(info, args.device, info["tile_zyx"], gpu)
    date = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    stored = None if args.no_record else record_variant_results(key, results, gpu, date)
    report = {"report": "torch variants", "date_utc": date, "model": info, "device": args.device, "gpu": gpu,
              "batches": batches, "record_key": key, "records": str(stored) if stored else None, "results": results}
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=2, default=str) + "\n")
    for r in results:
        speed = ", ".join(f"b{b} {v:.1f}" for b, v in (r.get("tiles_per_s") or {}).items() if v)
        print(f"{r['variant']:<26} {r['status']:<8} agreement {r.get('label_agreement', '-')!s:<10} "
              f"tiles/s (device) {speed or '-'} {r.get('reason', '')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
