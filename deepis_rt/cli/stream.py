"""``deepis-rt stream``: segment tomograms as the microscope writes them."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from deepis_rt.cli.backend_option import backend_option
from deepis_rt.cli.options import (
    input_options,
    model_option,
    output_options,
    precision_option,
    retry_option,
    triton_options,
    tta_option,
)
from deepis_rt.cli.run_options import command_record, config_option, device_option, gpu_device
from deepis_rt.stream.retry import DEFAULT_RETRY_FOR_S


def _say_why_nothing(source: Path) -> None:
    """A --once run that found no frame at all: what was looked for, and where else frames may be."""
    from deepis_rt.io.readers import SUFFIXES

    folders = sum(1 for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    click.echo(f"no tomogram found in {source}: stream reads {', '.join(SUFFIXES)} files at the folder's top level"
               + (f"; it holds {folders} folder(s): for an archive of time-lapses, use "
                  f"`deepis-rt batch {source} --out DIR`" if folders else ""), err=True)


def load_when_available(load: Any, retry_for_s: float) -> Any:
    """``load()``, retried like a frame while its server is unavailable (e.g. restarting) at start-up."""
    from deepis_rt.stream.retry import BackendHealth, RetryPolicy

    def say(event: Any) -> None:
        if event.kind == "unavailable":
            click.echo(f"backend unavailable: {event.error}\n  waiting up to {retry_for_s:g} s for it", err=True)

    return BackendHealth(RetryPolicy(retry_for_s=retry_for_s), on_event=say).call(load, n_frames=0)


def _frame_json(result: Any, model: str = "main") -> str:
    return json.dumps(
        {
            "model": model,
            "frame": result.frame,
            "source": result.source,
            "time_s": result.time_s,
            "status": result.status,
            "error": result.error,
            "latency_ms": round(result.latency_ms, 1) if result.latency_ms is not None else None,
            "deferred": bool(getattr(result, "deferred", False)),
            "cells": len(result.cells),
            "synapses": [
                {"synapse_id": s.synapse_id, "is_area_um2": round(float(s.is_area_um2), 2)}
                for s in result.synapses
            ],
        }
    )


class BackendReporter:
    """Says once that the backend is unavailable and frames wait, and once that it is back.

    Passed as ``Stream(on_backend=...)``: a JSON line ``{"event": "backend_unavailable", ...}`` /
    ``{"event": "backend_available", ...}`` on stdout with ``--jsonl``, else a line on stderr
    (above the progress bar, whose description says so while the outage lasts).
    """

    def __init__(self, jsonl: bool = False, quiet: bool = False) -> None:
        self.jsonl = jsonl
        self.quiet = quiet
        self.bar: Any = None

    def __call__(self, event: Any) -> None:
        if self.jsonl:
            payload = {"event": f"backend_{event.kind}", "time": round(event.time, 3)}
            if event.kind == "unavailable":
                payload.update(error=event.error, waiting_frames=event.waiting_frames, retry_for_s=event.retry_for_s)
            else:
                payload.update(outage_s=round(event.outage_s, 1))
            click.echo(json.dumps(payload))
            return
        if event.kind == "unavailable":
            text = (f"backend unavailable: {event.error}\n  {event.waiting_frames} frame(s) waiting; retrying for up "
                    f"to {event.retry_for_s:g} s (then recorded 'retry' for the next run)")
            desc = "backend unavailable, frames waiting"
        else:
            text = f"backend available again after {event.outage_s:.1f} s; continuing"
            desc = ""
        if self.quiet:
            return
        if self.bar is not None and not self.bar.disable:
            self.bar.write(text, file=sys.stderr)
            self.bar.set_description(desc, refresh=True)
        else:
            click.echo(text, err=True)


class BacklogReporter:
    """Says once that the stream falls behind the microscope, and once that it has caught up.

    Passed as ``Stream(on_backlog=...)``: ``{"event": "backlog_behind", ...}`` /
    ``{"event": "backlog_caught_up", ...}`` on stdout with ``--jsonl``, else a line on stderr (above
    the progress bar, which shows the frames waiting meanwhile).
    """

    def __init__(self, jsonl: bool = False, quiet: bool = False) -> None:
        self.jsonl = jsonl
        self.quiet = quiet
        self.bar: Any = None

    def __call__(self, event: Any) -> None:
        def r(v: float | None, nd: int = 2) -> float | None:
            return None if v is None else round(v, nd)

        if self.jsonl:
            payload = {"event": f"backlog_{event.kind}", "time": round(event.time, 3),
                       "arrival_fps": r(event.arrival_fps, 3), "processing_fps": r(event.processing_fps, 3),
                       "waiting_frames": event.waiting_frames, "latency_s": r(event.latency_s),
                       "latency_trend_s_per_s": r(event.latency_trend_s_per_s, 3)}
            if event.kind == "caught_up":
                payload.update(behind_s=r(event.behind_s, 1), max_waiting_frames=event.max_waiting_frames)
            click.echo(json.dumps(payload))
            return
        if self.quiet:
            return
        def fps(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f}"

        if event.kind == "behind":
            trend = event.latency_trend_s_per_s
            text = (f"falling behind: frames arrive at {fps(event.arrival_fps)}/s, processed at "
                    f"{fps(event.processing_fps)}/s; {event.waiting_frames} waiting"
                    + ("" if event.latency_s is None else f", latency {event.latency_s:.1f} s")
                    + ("" if trend is None else f" ({trend:+.2f} s per s)"))
        else:
            text = (f"caught up after {event.behind_s:.1f} s behind (at most {event.max_waiting_frames} "
                    "frames waited)")
        if self.bar is not None and not self.bar.disable:
            self.bar.write(text, file=sys.stderr)
        else:
            click.echo(text, err=True)


def run_stream(stream: Any, jsonl: bool = False, quiet: bool = False,
               reporter: BackendReporter | None = None) -> dict[str, Any]:
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
    if reporter is not None:
        reporter.bar = bar
    for cb in getattr(stream, "_backlog_callbacks", []):
        if isinstance(cb, BacklogReporter):
            cb.bar = bar
    t0 = time.time()
    n = 0
    try:
        for result in stream:
            n += 1
            if jsonl:
                click.echo(_frame_json(result))
            elif not show_bar and not quiet:
                status = {"ok": "ok", "retry": f"RETRY next run ({result.error})"}.get(
                    result.status, f"FAILED ({result.error})")
                click.echo(
                    f"frame {result.frame:5d}  {result.source}  {status}  "
                    f"latency {result.latency_ms:.0f} ms  synapses {len(result.synapses)}",
                    err=True,
                )
            bar.update(1)
            waiting = stream.backlog.waiting
            bar.set_postfix(
                fps=f"{n / max(time.time() - t0, 1e-9):.2f}",
                latency_ms=f"{result.latency_ms:.0f}",
                synapses=len(result.synapses),
                waiting=f"{waiting}{' (behind)' if stream.backlog.behind else ''}",
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
    if summary.get("frames_pending"):
        click.echo(f"frames deferred and not yet processed: {summary['frames_pending']}; run the same command "
                   "again to process them")
    backlog = run.get("backlog") or {}
    if backlog.get("episodes"):
        trend = backlog.get("latency_trend_s_per_s")
        click.echo(f"behind the microscope for {backlog['behind_s']:.1f} s in {backlog['episodes']} episode(s); "
                   f"at most {backlog['max_waiting_frames']} frames waited"
                   + ("" if trend is None else f"; latency trend {trend:+.2f} s per s"))
    if summary.get("frames_retry"):
        click.echo(f"frames to retry: {summary['frames_retry']} (backend unavailable for longer than --retry-for); "
                   "run the same command again to process them")
    click.echo(f"backend: {summary.get('backend')}   throughput: {run['throughput_fps']:.2f} frames/s")
    if lat["n"]:
        click.echo(f"latency file-complete -> results written: p50 {lat['p50']:.0f} ms, "
                   f"p95 {lat['p95']:.0f} ms, p99 {lat['p99']:.0f} ms")
    from deepis_rt.analysis.kinetics import parameter_text

    syns = summary.get("synapses") or []
    click.echo(f"synapses: {len(syns)}")
    for s in syns:
        amax, tau, r2 = s.get("A_max_um2"), s.get("tau_half_s"), s.get("r_squared")
        kin = (f"A_max {parameter_text(amax, s.get('A_max_err_um2'), 'um^2')}, "
               f"tau_half {parameter_text(tau, s.get('tau_half_err_s'), 's')}"
               + (f" (R^2 {r2:.2f})" if r2 is not None else "")
               if amax is not None and tau is not None
               else f"no kinetic fit ({(s.get('area_fit') or {}).get('message') or 'too few points'})")
        onset = s.get("onset_s")
        onset_txt = f"{onset:.1f} s" if onset is not None else "-"
        if s.get("onset_observed") is False:
            onset_txt += " (in contact from the first frame: formed earlier)"
        if (s.get("episodes") or 1) > 1 and s.get("fit_onset_s") is not None:
            kin += f"; fit of the longest of {s['episodes']} contacts, from {s['fit_onset_s']:.1f} s"
        click.echo(f"  synapse {s.get('synapse_id')} (CAR-T track {s.get('tcell_track')}, target track "
                   f"{s.get('target_track')}): onset {onset_txt}, {s.get('n_frames')} frames, {kin}")
    truth = summary.get("truth")
    if truth:
        def _txt(entry: dict, unit: str) -> str:
            got = parameter_text(entry.get("fitted"), entry.get("fit_err"))
            rel = entry.get("rel_error")
            true = entry.get("true")
            true_txt = "-" if true is None else f"{true:.1f}"
            shown = rel is not None and not got.startswith("not constrained")
            return f"true {true_txt} {unit}, fitted {got}" + (f" ({100 * rel:+.0f} %)" if shown else "")

        click.echo(f"synthetic truth: A_max {_txt(truth['A_max_um2'], 'um^2')}; "
                   f"tau_half {_txt(truth['tau_half_s'], 's')}")
    if out is not None:
        click.echo(f"results: {out}/ (report.html, timelapse.ome.zarr, labels_tzyx.ome.tif, frames.csv, cells.csv, "
                   "synapses.csv, summary.json, masks/, plots/)")


@click.command()
@click.option("--source", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Camera folder to watch.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results"),
              show_default=True, help="Results folder (an earlier run there is continued).")
@model_option()
@backend_option()
@precision_option
@triton_options
@input_options
@tta_option
@click.option("--once", is_flag=True, help="Process what is in the folder now, then exit.")
@click.option("--idle-timeout", type=float, default=None, metavar="S", help="Exit after S seconds without new frames.")
@click.option("--max-frames", type=int, default=None, metavar="N", help="Exit after N frames.")
@click.option("--settle", type=float, default=1.0, show_default=True, metavar="S",
              help="A file is complete once unchanged for S seconds.")
@click.option("--max-batch", type=int, default=None,
              help="Most frames inferred together while frames wait [default: the best batch size "
                   "`deepis-rt bench` measured for this model and backend here; else 1 on a CPU, 4 on a GPU].")
@click.option("--live", "policy", type=click.Choice(["every", "newest"]), default="every", show_default=True,
              help="Which frame next: every frame in order, or the newest first (frames passed over are "
                   "processed when there is spare capacity, never dropped).")
@click.option("--live-model", type=click.Path(exists=True, path_type=Path), default=None, metavar="FAST.pt",
              help="A fast model that segments the newest frame at once (results in OUT/live/) while --model "
                   "processes every frame for the record.")
@click.option("--jsonl", is_flag=True, help="Quiet mode for other programs: one JSON line per frame on stdout.")
@retry_option
@click.option("--allow-other-source", is_flag=True,
              help="Continue an --out folder made from another source folder (the same frames, moved); "
                   "frames of the same names count as done.")
@output_options
@device_option
@config_option
def stream(source, out, model, backend, voxel_size, frame_interval, medium_ri, once, idle_timeout,
           max_frames, settle, max_batch, no_masks, jsonl, url=None, model_name="deepis", ri_scale=None,
           ri_offset=None, retry_for=DEFAULT_RETRY_FOR_S, precision=None, allow_other_source=False,
           zarr="ri+labels", device=None, no_report=False, follow_symlinks=False, policy="every",
           live_model=None, tta=False) -> None:
    """Watch SOURCE for tomograms; segment, measure and track synapses as frames arrive."""
    import deepis_rt
    from deepis_rt.stream import Stream, StreamSettings

    # checked here, so that an option out of range is said before the model loads
    settings = StreamSettings(
        retry_for_s=retry_for, voxel_size_um=tuple(voxel_size) if voxel_size else None,
        frame_interval_s=frame_interval, medium_ri=medium_ri, once=once, idle_timeout_s=idle_timeout,
        max_frames=max_frames, settle_s=settle, max_batch=max_batch, write_masks=not no_masks,
        ri_scale=ri_scale, ri_offset=ri_offset, check_source=not allow_other_source, zarr=zarr,
        report=not no_report, follow_symlinks=follow_symlinks, policy=policy,
    )
    remote = {"url": url, "model_name": model_name} if backend == "triton" else {}  # a Triton server
    if precision is not None:
        remote["precision"] = precision
    if tta:
        remote["tta"] = True
    segmenter = load_when_available(
        lambda: deepis_rt.load(model, backend=backend, device=gpu_device(device), **remote), retry_for)
    # the live model runs here (a Triton server serves the main model only)
    live = None if live_model is None else deepis_rt.load(
        live_model, backend="auto" if backend == "triton" else backend, device=gpu_device(device),
        **({"precision": precision} if precision else {}))
    on_live = (lambda result: click.echo(_frame_json(result, "live"))) if jsonl else None
    reporter = BackendReporter(jsonl=jsonl)
    s = Stream(source, out, segmenter, on_backend=reporter, on_backlog=BacklogReporter(jsonl=jsonl),
               live_segmenter=live, on_live_frame=on_live, command=command_record(click.get_current_context()),
               settings=settings)
    if not jsonl:
        click.echo(f"watching {source} with {segmenter.backend}; results in {out}/ (Ctrl-C to stop)", err=True)
    summary = run_stream(s.start(), jsonl=jsonl, reporter=reporter)
    if not jsonl:
        print_summary(summary, out)
    run = summary["run"]
    if once and not (summary["frames_ok"] or summary["frames_failed"] or summary["frames_retry"]):
        _say_why_nothing(Path(source))
    if run["frames_retry"] or summary.get("frames_pending") or (run["frames_failed"] and not run["frames_ok"]):
        sys.exit(1)  # for scripts: frames wait for the next run, or every frame of this run failed
