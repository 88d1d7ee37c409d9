"""``deepis-rt stream``: segment tomograms as the microscope writes them."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click


def _frame_json(result: Any) -> str:
    return json.dumps(
        {
            "frame": result.frame,
            "source": result.source,
            "time_s": result.time_s,
            "status": result.status,
            "error": result.error,
            "latency_ms": round(result.latency_ms, 1) if result.latency_ms is not None else None,
            "cells": len(result.cells),
            "synapses": [
                {"synapse_id": s.synapse_id, "is_area_um2": round(float(s.is_area_um2), 2)}
                for s in result.synapses
            ],
        }
    )


def run_stream(stream: Any, jsonl: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Drive a started Stream with live progress (or JSON lines); Ctrl-C stops it gracefully."""
    from tqdm import tqdm

    interrupted = {"n": 0}

    def _on_sigint(signum, frame):  # noqa: ANN001
        interrupted["n"] += 1
        if interrupted["n"] > 1:
            raise KeyboardInterrupt
        click.echo("\nstopping: finishing the frames in flight (Ctrl-C again to abort)", err=True)
        stream.stop()

    previous = signal.signal(signal.SIGINT, _on_sigint)
    show_bar = not jsonl and not quiet and sys.stderr.isatty()
    bar = tqdm(unit="frame", disable=not show_bar, dynamic_ncols=True, file=sys.stderr)
    t0 = time.time()
    n = 0
    try:
        for result in stream:
            n += 1
            if jsonl:
                click.echo(_frame_json(result))
            elif not show_bar and not quiet:
                status = "ok" if result.status == "ok" else f"FAILED ({result.error})"
                click.echo(
                    f"frame {result.frame:5d}  {result.source}  {status}  "
                    f"latency {result.latency_ms:.0f} ms  synapses {len(result.synapses)}",
                    err=True,
                )
            bar.update(1)
            bar.set_postfix(
                fps=f"{n / max(time.time() - t0, 1e-9):.2f}",
                latency_ms=f"{result.latency_ms:.0f}",
                synapses=len(result.synapses),
                refresh=False,
            )
    finally:
        bar.close()
        signal.signal(signal.SIGINT, previous)
        stream.close()
    return stream.summary()


def print_summary(summary: dict[str, Any], out: Path | None) -> None:
    run = summary["run"]
    lat = run["latency_ms"]
    click.echo(
        f"frames: {run['frames_ok']} ok, {run['frames_failed']} failed this run "
        f"({summary['frames_ok']} ok / {summary['frames_failed']} failed in total)"
    )
    click.echo(f"backend: {summary.get('backend')}   throughput: {run['throughput_fps']:.2f} frames/s")
    if lat["n"]:
        click.echo(f"latency file-complete -> results written: p50 {lat['p50']:.0f} ms, "
                   f"p95 {lat['p95']:.0f} ms, p99 {lat['p99']:.0f} ms")
    syns = summary.get("synapses") or []
    click.echo(f"synapses: {len(syns)}")
    for s in syns:
        amax, tau, r2 = s.get("A_max_um2"), s.get("tau_half_s"), s.get("r_squared")
        kin = (f"A_max {amax:.1f} um^2, tau_half {tau:.1f} s"
               + (f" (R^2 {r2:.2f})" if r2 is not None else "")
               if amax is not None and tau is not None else "no kinetic fit (too few points)")
        onset = s.get("onset_s")
        onset_txt = f"{onset:.1f} s" if onset is not None else "-"
        click.echo(f"  synapse {s.get('synapse_id')} (CAR-T track {s.get('tcell_track')}, target track "
                   f"{s.get('target_track')}): onset {onset_txt}, {s.get('n_frames')} frames, {kin}")
    if out is not None:
        click.echo(f"results: {out}/ (frames.csv, cells.csv, synapses.csv, summary.json, masks/, plots/)")


@click.command()
@click.option("--source", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Camera folder to watch.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
              show_default=True, help="Results folder (an earlier run there is continued).")
@click.option("--model", type=click.Path(path_type=Path), default=None,
              help="Checkpoint, ONNX file or export folder (default: the bundled demo checkpoint).")
@click.option("--backend", type=click.Choice(["auto", "tensorrt", "onnxruntime", "openvino", "torch", "triton"]),
              default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
              help="Ask for a precision: fp16 on GPUs, bf16 on CPUs with AVX512_BF16 or AMX (OpenVINO; changes the "
                   "numbers slightly, see docs/export.md) [default: the backend's exact default].")
@click.option("--url", default=None, metavar="HOST:PORT",
              help="Triton server for --backend triton [default: $DEEPIS_TRITON_URL].")
@click.option("--model-name", default="deepis", show_default=True, help="Model name on the Triton server.")
@click.option("--voxel-size", nargs=3, type=float, default=None, metavar="Z Y X",
              help="Voxel size in um for files that carry none.")
@click.option("--frame-interval", type=float, default=None, metavar="S",
              help="Seconds between frames for files without time stamps (default: file times).")
@click.option("--medium-ri", type=float, default=None, help="Medium RI (default: from the file or 1.337).")
@click.option("--once", is_flag=True, help="Process what is in the folder now, then exit.")
@click.option("--idle-timeout", type=float, default=None, metavar="S", help="Exit after S seconds without new frames.")
@click.option("--max-frames", type=int, default=None, metavar="N", help="Exit after N frames.")
@click.option("--settle", type=float, default=1.0, show_default=True, metavar="S",
              help="A file is complete once unchanged for S seconds.")
@click.option("--max-batch", type=int, default=4, show_default=True, help="Frames inferred together when queued.")
@click.option("--no-masks", is_flag=True, help="Do not write masks/ label volumes.")
@click.option("--jsonl", is_flag=True, help="Quiet mode for other programs: one JSON line per frame on stdout.")
def stream(source, out, model, backend, voxel_size, frame_interval, medium_ri, once, idle_timeout,
           max_frames, settle, max_batch, no_masks, jsonl, url=None, model_name="deepis", precision=None) -> None:
    """Watch SOURCE for tomograms; segment, measure and track synapses as frames arrive."""
    import deepis_rt
    from deepis_rt.stream import Stream

    remote = {"url": url, "model_name": model_name} if backend == "triton" else {}  # issue 9: Triton server
    if precision is not None:
        remote["precision"] = precision
    segmenter = deepis_rt.load(model, backend=backend, **remote)
    s = Stream(
        source, out, segmenter,
        voxel_size_um=tuple(voxel_size) if voxel_size else None,
        frame_interval_s=frame_interval, medium_ri=medium_ri, once=once, idle_timeout_s=idle_timeout,
        max_frames=max_frames, settle_s=settle, max_batch=max_batch, write_masks=not no_masks,
    )
    if not jsonl:
        click.echo(f"watching {source} with {segmenter.backend}; results in {out}/ (Ctrl-C to stop)", err=True)
    summary = run_stream(s.start(), jsonl=jsonl)
    if not jsonl:
        print_summary(summary, out)
