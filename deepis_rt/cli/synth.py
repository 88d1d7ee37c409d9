"""``deepis-rt synth``: write a synthetic conjugate time-lapse with ground truth."""

from __future__ import annotations

from pathlib import Path

import click

from deepis_rt.core.meta import TILE_ZYX, VOXEL_SIZE_UM


@click.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--frames", type=int, default=30, show_default=True, help="Number of time points.")
@click.option("--seed", type=int, default=0, show_default=True, help="Video seed (same seed, same video).")
@click.option("--format", "fmt", type=click.Choice(["tiff", "npy", "tcf"]), default="tiff", show_default=True,
              help="File format of the tomograms.")
@click.option("--shape", nargs=3, type=int, default=TILE_ZYX, show_default=True, metavar="Z Y X",
              help="Frame size in voxels.")
@click.option("--voxel-size", nargs=3, type=float, default=VOXEL_SIZE_UM, show_default=True, metavar="Z Y X",
              help="Voxel size in um.")
@click.option("--imaging", type=click.Choice(["tomocube", "raw", "random", "legacy"]), default="tomocube",
              show_default=True,
              help="Imaging model: tomocube (holotomography: NA 1.2/1.0, 532 nm, missing cone, non-negativity "
                   "refill; what the bundled checkpoint is for), raw (the same without refill), random (every "
                   "imaging parameter drawn), legacy (the first generator's Gaussian OTF). See docs/training.md.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def synth(out: Path, frames: int, seed: int, fmt: str, shape: tuple[int, int, int],
          voxel_size: tuple[float, float, float], imaging: str, no_progress: bool) -> None:
    """Write a synthetic CAR-T / target time-lapse to OUT.

    \b
    OUT/frame_000000.tif ...        RI tomograms (voxel size in the metadata)
    OUT/labels/, OUT/distance/      truth: labels (0 bg, 1 CAR-T, 2 target, 3 IS), signed distance (um)
    OUT/truth.csv, OUT/synth.json   per-frame truth (IS area, contact, ...) and video parameters
    """
    from deepis_rt.synth import write_timelapse

    write_timelapse(out, frames, seed, shape=shape, voxel_size_um=voxel_size, fmt=fmt,
                    progress=False if no_progress else None, imaging=imaging)
    click.echo(f"wrote {frames} frames to {out}")
