"""``deepis-rt train``: train a checkpoint on synthetic or annotated tomograms."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from deepis_rt.core.meta import VOXEL_SIZE_UM


@click.command()
@click.option("--synthetic", is_flag=True, help="Train on synthetic conjugates generated on the fly.")
@click.option("--randomize/--no-randomize", default=True, show_default=True,
              help="--synthetic: randomise imaging condition, shapes and acquisition voxel size per frame "
                   "(--no-randomize: the legacy generator the bundled checkpoint was trained on).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of tomograms with labels/<same name> (the layout 'deepis-rt synth' writes).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Checkpoint to write (.pt).")
@click.option("--preset", type=click.Choice(["deepis", "deepis-lite", "deepis-2020"]), default="deepis-lite", show_default=True)
@click.option("--steps", type=int, default=1000, show_default=True, help="Optimiser steps.")
@click.option("--batch", type=int, default=2, show_default=True, help="Crops per step.")
@click.option("--crop", nargs=3, type=int, default=(32, 64, 64), show_default=True, metavar="Z Y X",
              help="Training crop in voxels (multiples of 16).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of initialisation and data.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Initial learning rate (Adam).")
@click.option("--epoch-steps", type=int, default=None,
              help="Steps per epoch (lr halves every 50 epochs) [default: 10 for --synthetic, one pass over --data].")
@click.option("--voxel-size", nargs=3, type=float, default=None, metavar="Z Y X",
              help="Voxel size (um) of the training data and the model [default: 0.5 0.25 0.25, or the --init "
                   "checkpoint's].")
@click.option("--init", "init", default=None, metavar="CKPT",
              help="Fine-tune: start from this checkpoint ('bundled', a published-DeepIS .pth.tar or any deepis-rt "
                   "checkpoint), keeping its architecture (--preset is ignored), input scaling and tile, and its voxel "
                   "size unless --voxel-size gives the data's; its validation is shown before and after.")
@click.option("--noise-augment", "noise_fraction", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Fraction of training crops given correlated noise on the model's grid (0.0003-0.003 RI), so that "
                   "empty medium in noisy tomograms is not read as cell (0: the recipe of the first bundled runs).")
@click.option("--val-frames", type=int, default=4, show_default=True, help="Validation: that many synthetic frames; with --data, any value but 0 holds out the last 20 % "
                   "of the volumes (0: no validation).")
@click.option("--val-every", type=int, default=0, show_default=True, help="Validate every N steps too (0: at the end).")
@click.option("--save-every", type=int, default=50, show_default=True, help="Write <out>.state.pt every N steps.")
@click.option("--max-minutes", type=float, default=None, help="Stop after this much wall time (state and checkpoint saved).")
@click.option("--threads", type=int, default=None, help="torch CPU threads.")
@click.option("--resume", is_flag=True, help="Continue from <out>.state.pt after an interruption.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def train(synthetic: bool, randomize: bool, data_dir: Path | None, out: Path, preset: str, steps: int, batch: int,
          crop: tuple[int, int, int], seed: int, lr: float, epoch_steps: int | None,
          voxel_size: tuple[float, float, float] | None, init: str | None, noise_fraction: float,
          val_frames: int, val_every: int, save_every: int, max_minutes: float | None, threads: int | None,
          resume: bool, no_progress: bool) -> None:
    """Train a DeepIS checkpoint (edge-weighted L1 on the signed distance map, Adam).

    \b
    Examples:
      deepis-rt train --synthetic --out ckpt.pt --steps 1000
      deepis-rt train --data annotated/ --out mine.pt --steps 5000 --resume
      deepis-rt train --data lab_frames/ --init bundled --out tuned.pt --steps 300 --lr 1e-4
    """
    from deepis_rt.train import TrainConfig
    from deepis_rt.train import train as run

    if synthetic == (data_dir is not None):
        raise click.UsageError("give exactly one of --synthetic or --data DIR")
    cfg = TrainConfig(
        synthetic=synthetic, randomize=randomize, data_dir=None if data_dir is None else str(data_dir), preset=preset, steps=steps,
        batch=batch, crop_zyx=tuple(crop), seed=seed, lr=lr,
        epoch_steps=epoch_steps if epoch_steps is not None else (10 if synthetic else None),
        voxel_size_um=tuple(voxel_size) if voxel_size else (None if init else VOXEL_SIZE_UM), init=init,
        noise_fraction=noise_fraction, val_frames=val_frames, val_every=val_every, save_every=save_every,
        max_minutes=max_minutes, threads=threads,
    )
    command = "deepis-rt " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = run(out, cfg, resume=resume, progress=False if no_progress else None, command=command)
    m = result["metrics"]
    click.echo(f"wrote {out} ({result['steps']} steps, {result['wall_time_s'] / 60:.1f} min, "
               f"final loss {result['final_loss']:.4f})")
    before = result.get("metrics_before") or {}
    if before:
        click.echo(f"validation before (--init {init}): "
                   + ", ".join(f"{k} {v:.3f}" for k, v in before.items() if isinstance(v, float)))
    if m:
        click.echo(("validation after: " if before else "validation: ")
                   + ", ".join(f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, float)))
    click.echo(f"training curves: {result['figure']}")
