"""``deepis-rt batch``: re-analyse an archive of time-lapses, on a Ray cluster or on this machine."""

from __future__ import annotations

from pathlib import Path

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


@click.command()
@click.argument("archive", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Results: OUT/<item>/ per time-lapse, OUT/synapses_all.csv, OUT/batch_report.json.")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Run on Ray: 'local' (start Ray here), 'auto' (the cluster `ray start` started on this "
                   "machine), HOST:PORT (the head node's address) or ray://HOST:10001. A cluster with token "
                   "authentication gets the token from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token. "
                   "Without --ray: one item after the other in this process.")
@model_option(note="every worker must see it at this path")
@backend_option()
@precision_option
@triton_options
@click.option("--retries", type=click.IntRange(0, 100), default=1, show_default=True,
              help="Further attempts of an item that failed.")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Ray actors in all, one Segmenter each [default: one per GPU where the cluster has GPUs, "
                   "else one per --cpus-per-worker CPUs of every node].")
@click.option("--cpus-per-worker", type=click.FloatRange(min=0, min_open=True), default=None,
              help="CPUs (and threads) per Ray actor [default: 1 on CPU-only clusters; the node's CPUs "
                   "shared among its actors where they are fewer (one per GPU, --max-workers-per-node)].")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=None,
              help="[default: 1 where the cluster has GPUs, 0 with --backend triton or without GPUs].")
@click.option("--max-workers-per-node", type=click.IntRange(1), default=None,
              help="At most this many Ray actors on one node.")
@input_options
@click.option("--max-batch", type=int, default=4, show_default=True, help="Frames inferred together.")
@tta_option
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@retry_option
@output_options
@device_option
@config_option
def batch(archive, out, ray_address, model, backend, precision, url, model_name, retries, workers, cpus_per_worker,
          gpus_per_worker, max_workers_per_node, voxel_size, frame_interval, medium_ri, max_batch, no_masks,
          no_progress, ri_scale=None, ri_offset=None, retry_for=DEFAULT_RETRY_FOR_S, zarr="ri+labels",
          device=None, no_report=False, follow_symlinks=False, tta=False) -> None:
    """Segment, measure and track every time-lapse in ARCHIVE.

    \b
    A time-lapse is a folder of frame files (at any depth) or a multi-time-point file in
    ARCHIVE itself. Results per time-lapse are exactly those of `deepis-rt stream`.
    Finished items are skipped when the command runs again; failed ones are tried again.
    Exit status 1 when an item failed or holds frames to retry (its backend stayed unavailable
    longer than --retry-for; the next run processes them), see OUT/batch_report.json.
    """
    from deepis_rt.cluster.ray_batch import run_batch

    load_options = {"url": url, "model_name": model_name} if backend == "triton" else {}
    if precision is not None:
        load_options["precision"] = precision
    if device is not None:
        if ray_address:
            raise click.BadParameter("Ray places its workers on GPUs itself; --device is for a run on this machine",
                                     param_hint="'--device'")
        load_options["device"] = gpu_device(device)
    if tta:
        load_options["tta"] = True
    stream_settings = {
        "voxel_size_um": tuple(voxel_size) if voxel_size else None,
        "frame_interval_s": frame_interval,
        "medium_ri": medium_ri,
        "ri_scale": ri_scale,
        "ri_offset": ri_offset,
        "max_batch": max_batch,
        "write_masks": not no_masks,
        "retry_for_s": retry_for,
        "zarr": zarr,
        "report": not no_report,
        "follow_symlinks": follow_symlinks,
    }
    report = run_batch(
        archive, out, model, backend, ray_address=ray_address, retries=retries, num_workers=workers,
        cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker, max_workers_per_node=max_workers_per_node,
        load_options=load_options,
        stream_settings=stream_settings, progress=False if no_progress else None,
        command=command_record(click.get_current_context()),
    )
    c = report.counts
    click.echo(f"items: {c['ok']} ok, {c['partial']} with failed frames, {c['failed']} failed, "
               + (f"{c['retry']} with frames to retry (run again), " if c.get("retry") else "")
               + f"{c['skipped']} already done ({report.settings.get('workers', 'nothing to run')})")
    for item in report.items:
        if item["status"] != "ok" and not item.get("skipped"):
            click.echo(f"  {item['item']}: {item['status']} after {item['attempts']} attempt(s): {item['error']}")
        lost = [run["node"] for run in item.get("earlier_runs", []) if run.get("node_lost")]
        if lost and not item.get("skipped"):
            click.echo(f"  {item['item']}: run again on {item.get('node')} after losing node(s) {', '.join(lost)}")
    click.echo(f"results: {out}/<item>/, {out}/synapses_all.csv, {out}/batch_report.json")
    if report.failed or c.get("retry"):
        raise SystemExit(1)
