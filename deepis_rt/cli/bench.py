"""``deepis-rt bench``: every backend side by side (throughput, latency, memory, accuracy) and the whole pipeline."""

from __future__ import annotations

from pathlib import Path

import click

from deepis_rt.cli.run_options import device_option
from deepis_rt.errors import CheckpointError


def _int_list(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        out = [int(v) for v in value.replace(" ", "").split(",") if v]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        raise click.BadParameter(f"{value!r}: expected positive integers separated by commas, e.g. 1,4")
    return out


def _str_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    if value is None:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


@click.command()
@click.option("--model", "model_paths", multiple=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Checkpoint to benchmark (repeatable) [default: the bundled demo checkpoint].")
@click.option("--preset", "presets", multiple=True, type=click.Choice(["deepis", "deepis-lite", "deepis-2020"]),
              help="Benchmark a preset with random weights instead (repeatable; throughput does not depend "
                   "on the weights).")
@click.option("--backends", default="all", show_default=True, callback=_str_list,
              help="Comma-separated: torch-cpu, onnxruntime-cpu, openvino-cpu, torch-cuda, torch-cuda-graphs, onnxruntime-cuda, "
                   "onnxruntime-tensorrt, tensorrt, or the groups all, cpu, gpu. Unavailable ones are reported "
                   "as skipped with the reason. PyTorch eager FP32 (the baseline) is always run.")
@click.option("--precision", "precisions", default=None, callback=_str_list,
              help="fp32, fp16 (GPUs) and/or bf16 (openvino-cpu, on CPUs with AVX512_BF16 or AMX) "
                   "[default: fp32 on the CPU plus bf16 for openvino-cpu, fp32 and fp16 on a GPU].")
@click.option("--batch", "batches", default="1,2", show_default=True, callback=_int_list,
              help="Batch sizes (tiles per call), comma-separated.")
@click.option("--frames", type=click.IntRange(min=1), default=8, show_default=True,
              help="Tiles timed per row (rounded up to whole batches); also the frames of --pipeline.")
@click.option("--warmup", type=click.IntRange(min=0), default=1, show_default=True, help="Untimed calls per row.")
@click.option("--pipeline", is_flag=True,
              help="Also run the whole pipeline (files on disk -> stream -> results) per backend at its best batch.")
@click.option("--tta", is_flag=True,
              help="With --pipeline: run each pipeline again with test-time augmentation (--tta of stream), a row "
                   "of its own.")
@click.option("--pipeline-frames", type=click.IntRange(min=1), default=None,
              help="Frames of the --pipeline run [default: --frames].")
@click.option("--tile", type=(int, int, int), default=None, metavar="Z Y X",
              help="Benchmark this tile instead of the model's (multiples of 16).")
@click.option("--quick", is_flag=True,
              help="A fast smoke run: tile 32 64 64 unless --tile, 2 frames, a small peak probe.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads of the CPU backends [default: physical cores].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of a preset's random weights.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Cache of exported ONNX files [default: $DEEPIS_RT_CACHE or ~/.cache/deepis-rt].")
@click.option("--engines", "engines_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("engines"),
              show_default=True, help="TensorRT engine and timing-cache folder.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the full report (with raw latency samples) as JSON.")
@click.option("--markdown", "md_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the report as Markdown.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a PNG: throughput per backend and latency distributions.")
@click.option("--title", default="deepis-rt bench", show_default=True, help="Title of the Markdown report.")
@device_option
def bench(model_paths: tuple[Path, ...], presets: tuple[str, ...], backends: list[str], precisions: list[str] | None,
          batches: list[int], frames: int, warmup: int, pipeline: bool, tta: bool, pipeline_frames: int | None, tile: tuple[int, int, int] | None,
          quick: bool, threads: int | None, seed: int, cache_dir: Path | None, engines_dir: Path,
          json_path: Path | None, md_path: Path | None, plot_path: Path | None, title: str,
          device: int | None = None) -> None:
    """Benchmark the backends available here side by side, against PyTorch eager FP32.

    For each backend x precision x batch: throughput, latency p50/p95/p99, peak host and device
    memory, speed-up vs the baseline, and accuracy vs the FP32 reference (max / p99 error of the
    distance map, Dice of the CAR-T and target masks); with --pipeline, the whole pipeline's
    throughput and its ratio to compute-only. The context (machine, libraries, FLOPs per tile,
    achieved TFLOP/s as a fraction of a matrix-product peak measured in the same run) is in every
    report. The throughput per batch size (except of --quick runs) is recorded in
    $DEEPIS_RT_CACHE/batch_curves.json: `deepis-rt stream` sizes its batches by it.

    \b
    Examples:
      deepis-rt bench --quick
      deepis-rt bench --preset deepis-lite --preset deepis --batch 1 --frames 4 --pipeline \\
          --json cpu.json --markdown cpu.md --plot cpu.png
    """
    import logging

    from deepis_rt.bench.models import resolve_model
    from deepis_rt.bench.report import format_table, to_markdown, write_json
    from deepis_rt.bench.suite import run_benchmark
    from deepis_rt.bench.variants import expand_backends

    log = logging.getLogger("deepis_rt.bench")
    if quick:
        tile = tile or (32, 64, 64)
        frames = min(frames, 2)
    if device is not None:  # the GPU rows, the GPU peak and the memory figures on GPU N
        import torch

        torch.cuda.set_device(device)
    names = expand_backends(backends)
    models = [resolve_model(preset=p, tile_zyx=tile, seed=seed, cache_dir=cache_dir) for p in presets]
    models += [resolve_model(model_path=p, tile_zyx=tile, cache_dir=cache_dir) for p in model_paths]
    if not models:
        try:
            models = [resolve_model(tile_zyx=tile, cache_dir=cache_dir)]
        except CheckpointError as exc:
            log.warning("bench | %s; benchmarking --preset deepis-lite (random weights) instead", exc)
            models = [resolve_model(preset="deepis-lite", tile_zyx=tile, seed=seed, cache_dir=cache_dir)]
    report = run_benchmark(models, names, precisions, batches=batches, frames=frames, warmup=warmup,
                           pipeline=pipeline, pipeline_frames=pipeline_frames, tta=tta, threads=threads, engines_dir=engines_dir, quick=quick,
                           progress=lambda msg: log.info("bench | %s", msg))
    click.echo(format_table(report))
    if not quick:  # what streams size their batches by (deepis_rt/stream/batching.py); a quick run's tile is no model's
        from deepis_rt.stream.batching import record_curves

        curves = record_curves(report)
        if curves is not None:
            click.echo(f"batch curves recorded for streams in {curves}")
    if json_path is not None:
        write_json(report, json_path)
        click.echo(f"wrote {json_path}")
    if md_path is not None:
        md_path.parent.mkdir(parents=True, exist_ok=True)
        md_path.write_text(to_markdown(report, title=title))
        click.echo(f"wrote {md_path}")
    if plot_path is not None:
        from deepis_rt.bench.plot import plot_report

        plot_report(report, plot_path)
        click.echo(f"wrote {plot_path}")
