"""``deepis-rt demo``: synthetic video -> live stream with the bundled checkpoint -> results + plots."""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import click

from deepis_rt.cli.backend_option import backend_option
from deepis_rt.cli.options import model_option, tta_option
from deepis_rt.cli.run_options import command_record, device_option, gpu_device

_MARKER = ".deepis-demo"


def _prepare_out(out: Path) -> None:
    if out.exists():
        if not (out / _MARKER).exists() and any(out.iterdir()):
            raise click.UsageError(
                f"{out} exists and was not made by 'deepis-rt demo'; choose another --out"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / _MARKER).write_text("results of 'deepis-rt demo'; safe to delete\n")


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("deepis-demo"),
              show_default=True, help="Where results and plots are left.")
@click.option("--frames", type=click.IntRange(min=1), default=20, show_default=True, help="Frames of the synthetic video.")
@click.option("--seed", type=int, default=2026, show_default=True, help="Seed of the synthetic video.")
@click.option("--imaging", type=click.Choice(["tomocube", "raw", "random", "legacy"]), default="tomocube",
              show_default=True, help="Imaging model of the synthetic microscope (as for `deepis-rt synth`).")
@click.option("--pace", type=float, default=3.0, show_default=True, metavar="S",
              help="Seconds between two frames written into the camera folder (holotomography time-lapses take one "
                   "tomogram every 3-8 s).")
@backend_option(remote=False)
@model_option(must_exist=True)
@device_option
@tta_option
def demo(out: Path, frames: int, seed: int, imaging: str, pace: float, backend: str, model: Path | None,
         device: int | None = None, tta: bool = False) -> None:
    """Stream a synthetic CAR-T / target-cell video through the bundled checkpoint.

    A writer thread plays the microscope: it writes one tomogram after another into a
    temporary camera folder. deepis-rt watches that folder, segments each frame as it is
    complete, tracks the synapse, and leaves tables, masks and plots in OUT.
    """
    import deepis_rt
    from deepis_rt.cli.stream import BacklogReporter, print_summary, run_stream
    from deepis_rt.io import write_tomogram
    from deepis_rt.stream import Stream
    from deepis_rt.synth import iter_timelapse
    from deepis_rt.synth.scene import make_video
    from deepis_rt.synth.timelapse import DEFAULT_SHAPE, DEFAULT_VOXEL_SIZE_UM

    t_start = time.time()
    _prepare_out(out)
    segmenter = deepis_rt.load(model, backend=backend, device=gpu_device(device), tta=tta)
    video = make_video(seed, DEFAULT_SHAPE, DEFAULT_VOXEL_SIZE_UM, frames, imaging=imaging)
    interval_s = video.frame_interval_s
    camera = Path(tempfile.mkdtemp(prefix="deepis-camera-"))
    # the demo knows its truth: summary.json reports it next to the fitted kinetics
    (camera / "synth.json").write_text(json.dumps({
        "generator": "deepis_rt.synth", "seed": seed, "imaging": imaging, "n_frames": frames, "a_max_um2": video.a_max_um2,
        "tau_half_s": video.tau_half_s, "onset_s": video.onset_s, "frame_interval_s": interval_s,
    }))
    click.echo(
        f"demo: a synthetic {frames}-frame video ({imaging} imaging; one tomogram every {interval_s:g} s of acquisition time, "
        f"played at one per {pace:g} s) -> {camera}", err=True
    )
    click.echo(f"demo: model {segmenter.model_info.get('name', 'bundled')} on {segmenter.backend}", err=True)
    writer_error: list[BaseException] = []

    def _microscope() -> None:
        try:
            for i, frame in enumerate(iter_timelapse(frames, seed=seed, imaging=imaging)):
                t0 = time.time()
                write_tomogram(camera / f"frame_{i:04d}.tif", frame.ri, frame.voxel_size_um)
                time.sleep(max(0.0, pace - (time.time() - t0)))
        except BaseException as exc:  # surfaced after the stream ends
            writer_error.append(exc)
            stream.stop()  # no more frames will come

    writer = threading.Thread(target=_microscope, name="demo-microscope", daemon=True)
    # the stream ends after the video's last frame, however slowly a loaded machine writes them (an
    # idle timeout would end it early and lose frames); a failing writer stops it
    stream = Stream(camera, out, segmenter, frame_interval_s=interval_s, settle_s=0.3, max_frames=frames,
                    report=True, command=command_record(click.get_current_context()),
                    on_backlog=BacklogReporter())
    stream.start()
    writer.start()
    try:
        summary = run_stream(stream)
    finally:
        writer.join(timeout=5)
        shutil.rmtree(camera, ignore_errors=True)
    if writer_error:
        raise click.ClickException(f"the synthetic microscope failed: {writer_error[0]}")
    click.echo("")
    print_summary(summary, out)
    click.echo(f"demo finished in {time.time() - t_start:.0f} s; report: {out / 'report.html'}")
